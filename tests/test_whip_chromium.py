"""WHIP from a real browser: headless Chromium publishes its fake camera and microphone.

The test serves a small publisher page from an HTTP server of its own on 127.0.0.1
(another port than the service, so another origin: the browser's CORS preflights to
the WHIP endpoint are real). The page reports each step back to that server as JSON
(`POST /report`), which is how the test follows it; it publishes until the test
releases it (`GET /release`), then DELETEs its WHIP resource. A LiveKit viewer, in
the room before the browser publishes, checks what arrived.

Chromium's background services are switched off and its host resolver resolves no
name, so nothing leaves 127.0.0.1; its NetLog shows where it connected and sent
bytes, and the test checks that too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from livekit.protocol import ingress as pb
from livekit.protocol import models

from tests.livekit import API_KEY, API_SECRET, LiveKitServer, watch, watch_layer_stats
from tests.service import ServiceProcess, run_asyncio
from tests.test_media_e2e import state, wait_for
from tests.test_whip_e2e import create_whip, endpoint, whip_service  # noqa: F401 (fixture)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                 "(scripts/setup --test installs the Debian package)")]

SEND_FRAMES = 150  # the page publishes at least this many video frames (7.5 s at 20 fps)
SEND_AUDIO_PACKETS = 250  # and at least 5 s of audio (20 ms packets)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>WHIP publisher</title>
<script>
const whip = new URLSearchParams(location.search).get("whip");
const restart = new URLSearchParams(location.search).has("restart");
const simulcast = new URLSearchParams(location.search).has("simulcast");
const sleep = ms => new Promise(done => setTimeout(done, ms));

function report(step, data = {}) {
  return fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify({step, ...data})});
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise(done => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") done(true);
    });
    setTimeout(() => done(false), ms);
  });
}

async function sending(pc) {
  const out = {video: null, audio: null, pair: null, layers: {}};
  const stats = await pc.getStats();
  stats.forEach(s => {
    if (s.type === "outbound-rtp") {
      const codec = stats.get(s.codecId);
      out[s.kind] = {packetsSent: s.packetsSent, framesSent: s.framesSent,
                     keyFrames: s.keyFramesEncoded, pli: s.pliCount, nack: s.nackCount,
                     width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
                     encoder: s.encoderImplementation,
                     limitation: s.qualityLimitationReason,
                     mimeType: codec && codec.mimeType, fmtp: codec && codec.sdpFmtpLine};
      if (s.rid) out.layers[s.rid] = out[s.kind];
    }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId);
      const remote = stats.get(pair.remoteCandidateId);
      out.pair = {local: `${local.address}:${local.port} ${local.candidateType}`,
                  remote: `${remote.address}:${remote.port} ${remote.candidateType}`,
                  protocol: local.protocol};
    }
  });
  return out;
}

// the ICE side of the transport: credentials, state and the selected pair's checks
async function ice(pc) {
  const stats = await pc.getStats();
  let out = null;
  stats.forEach(s => {
    if (s.type !== "transport") return;
    const pair = s.selectedCandidatePairId && stats.get(s.selectedCandidatePairId);
    out = {ufrag: s.iceLocalUsernameFragment, state: s.iceState,
           changes: s.selectedCandidatePairChanges,
           pair: pair && {id: pair.id, state: pair.state, nominated: pair.nominated,
                          requestsSent: pair.requestsSent,
                          responsesReceived: pair.responsesReceived,
                          requestsReceived: pair.requestsReceived,
                          responsesSent: pair.responsesSent}};
  });
  return out;
}

// RFC 9725 section 4.3.2, as a WHIP client does it: new credentials by PATCH, the
// server's new ones into the remote description, then ICE runs again
async function restartIce(pc, resource, answer) {
  const before = await ice(pc);
  pc.restartIce();
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const ufrag = /a=ice-ufrag:(\\S+)/.exec(offer.sdp)[1];
  const pwd = /a=ice-pwd:(\\S+)/.exec(offer.sdp)[1];
  const reply = await fetch(new URL(resource, whip), {
    method: "PATCH", body: `a=ice-ufrag:${ufrag}\\r\\na=ice-pwd:${pwd}\\r\\n`,
    headers: {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}});
  const body = await reply.text();
  const result = {status: reply.status, body, etag: reply.headers.get("ETag"), ufrag, before};
  if (reply.status === 200) {
    const theirs = /a=ice-ufrag:(\\S+)/.exec(body)[1], theirPwd = /a=ice-pwd:(\\S+)/.exec(body)[1];
    await pc.setRemoteDescription({type: "answer", sdp: answer
      .replace(/a=ice-ufrag:\\S+/g, `a=ice-ufrag:${theirs}`)
      .replace(/a=ice-pwd:\\S+/g, `a=ice-pwd:${theirPwd}`)});
    // until a pair of the new generation is checked both ways (our agent's own check
    // may be a consent check, every 4-6 s)
    for (let i = 0; i < 60; i++) {
      result.after = await ice(pc);
      const pair = result.after.pair;
      if (result.after.ufrag === ufrag && pair && pair.id !== before.pair.id
          && pair.responsesReceived > 0 && pair.responsesSent > 0) break;
      await sleep(250);
    }
  }
  await report("restart", result);
}

async function main() {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: simulcast ? {width: 1280, height: 720} : {width: 640, height: 480},
     audio: true});
  const [video] = stream.getVideoTracks();
  const [audio] = stream.getAudioTracks();
  await report("media", {video: video.getSettings(), audio: audio.getSettings()});

  const pc = new RTCPeerConnection();
  pc.addEventListener("connectionstatechange",
                      () => report("connection", {state: pc.connectionState}));
  // three encodings, as browsers and OBS send simulcast over WHIP
  const sendEncodings = simulcast ? [
    {rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000},
    {rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000},
    {rid: "f", maxBitrate: 1500000}] : undefined;
  const videoSender = pc.addTransceiver(video, {direction: "sendonly", streams: [stream],
                                               sendEncodings}).sender;
  pc.addTransceiver(audio, {direction: "sendonly", streams: [stream]});
  // the test checks the size that arrives: no scaling down on a busy machine
  const parameters = videoSender.getParameters();
  parameters.degradationPreference = "maintain-resolution";
  await videoSender.setParameters(parameters);

  await pc.setLocalDescription(await pc.createOffer());
  const complete = await gathered(pc, 3000);
  const offer = pc.localDescription.sdp;
  await report("offer", {sdp: offer, gathering_complete: complete});

  const reply = await fetch(whip, {method: "POST", body: offer,
                                   headers: {"Content-Type": "application/sdp"}});
  const answer = await reply.text();
  const resource = reply.headers.get("Location");
  await report("answer", {status: reply.status, location: resource, sdp: answer,
                          etag: reply.headers.get("ETag")});
  if (reply.status !== 201) return;
  await pc.setRemoteDescription({type: "answer", sdp: answer});

  let released = false;
  (async () => {
    while (!released) released = (await fetch("/release")).status === 200;
  })().catch(e => report("error", {message: String(e)}));
  if (restart) {
    (async () => {
      while (pc.connectionState !== "connected") await sleep(100);
      await sleep(3000);
      await restartIce(pc, resource, answer);
    })().catch(e => report("error", {message: String(e && e.stack || e)}));
  }
  while (!released) {
    await report("stats", await sending(pc));
    await sleep(250);
  }
  const deleted = await fetch(new URL(resource, whip), {method: "DELETE"});
  await report("deleted", {status: deleted.status, stats: await sending(pc)});
  pc.close();
}

main().catch(e => report("error", {message: String(e && e.stack || e)}));
</script>
"""


class PublisherPage:
    """The page's origin: serves PAGE, collects its reports, releases it on demand."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.released = threading.Event()
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/release":  # a long poll
                    self.reply(200 if page.released.wait(10) else 204)
                elif self.path.startswith("/?"):
                    self.reply(200, PAGE.encode(), "text/html; charset=utf-8")
                else:
                    self.reply(404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with page.changed:  # recorded before the page goes on
                    page.events.append({**json.loads(body), "at": time.monotonic()})
                    page.changed.notify_all()
                self.reply(204)

            def reply(self, status: int, body: bytes = b"", ctype: str = "text/plain"
                      ) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, whip_url: str, *, restart_ice: bool = False,
            simulcast: bool = False) -> str:
        """The page publishing to `whip_url` (and restarting ICE 3 s after connecting;
        or sending 1280x720 as three simulcast layers)."""
        return f"{self.origin}/?whip={quote(whip_url, safe='')}" + (
            "&restart" if restart_ice else "") + ("&simulcast" if simulcast else "")

    def __enter__(self) -> PublisherPage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, accept: Callable[[dict[str, Any]], bool], what: str, timeout: float,
             gone: Callable[[], str]) -> dict[str, Any]:
        """The first report that `accept`s. Fails at once on the page's error report,
        or when `gone()` says why the browser is no longer there."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for event in self.events:
                    if event["step"] == "error":
                        raise AssertionError(f"the page failed: {event['message']}")
                    if accept(event):
                        return event
                why = gone() or ("timeout" if time.monotonic() > deadline else "")
                if why:
                    raise AssertionError(f"no {what} from the page ({why}); its steps: "
                                         f"{[e['step'] for e in self.events]}, the last: "
                                         f"{self.events[-1:]}")
                self.changed.wait(0.5)

    def step(self, name: str, timeout: float, gone: Callable[[], str]) -> dict[str, Any]:
        return self.wait(lambda e: e["step"] == name, name, timeout, gone)


class Chromium:
    """Headless Chromium on one page, with fake media devices and no network but
    loopback: a process group of its own, ended by `close()`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "chromium.log"
        self.netlog_path = workdir / "netlog.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self, url: str) -> list[str]:
        assert CHROMIUM is not None
        return [
            CHROMIUM, "--headless=new", "--no-sandbox",
            f"--user-data-dir={self.workdir / 'profile'}",
            # the fake camera (640x480 when asked) and microphone (a beep), no prompt
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            # ICE: host candidates with their addresses (no mDNS names), loopback too
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,"
            "Translate,NetworkTimeServiceQuerying,AutofillServerCommunication",
            # nothing but 127.0.0.1: no background services, and no name resolves
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-domain-reliability", "--disable-breakpad",
            "--disable-client-side-phishing-detection", "--no-pings", "--no-first-run",
            "--no-default-browser-check", "--metrics-recording-only",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            # a busy machine must not throttle the page's timers
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--enable-logging=stderr", "--v=0", f"--log-net-log={self.netlog_path}",
            url,
        ]

    def start(self, url: str) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args(url), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def gone(self) -> str:
        """Why the browser is no longer running ("" while it runs)."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        log = self.log_path.read_text(errors="replace")
        return f"chromium exited with {self.proc.returncode}:\n{log[-3000:]}"

    def close(self) -> None:
        """End the browser, then whatever is left of its process group.

        The browser process first, on its own: it shuts its children down itself,
        and the network service writes out the NetLog on the way. A SIGTERM to the
        whole group at once could end that process before it had written anything
        (seen in CI: an empty netlog.json, "Network service crashed")."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.terminate()
            self.proc.wait(15)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc = None

    def network(self) -> list[tuple[str, dict[str, Any]]]:
        """(event type, parameters) of the NetLog's events (the file may be cut short)."""
        lines = self.netlog_path.read_text(errors="replace").splitlines()
        constants = json.loads(lines[0].rstrip(",") + "}")["constants"]
        names = {number: name for name, number in constants["logEventTypes"].items()}
        events = []
        for line in lines[2:]:
            try:
                event = json.loads(line.rstrip(","))
            except ValueError:
                continue
            events.append((names.get(event["type"], ""), event.get("params", {})))
        return events


@contextmanager
def chromium(workdir: Path, url: str) -> Iterator[Chromium]:
    browser = Chromium(workdir)
    try:
        browser.start(url)
        yield browser
    finally:
        browser.close()


def sent_beyond_loopback(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Connections made and datagrams sent to anything but loopback. (Resolving a name
    and a UDP connect() send nothing: Chromium connects a UDP socket to a public
    address to learn its IPv6 source address, without sending.)"""
    found = []
    for kind, params in events:
        if kind in ("TCP_CONNECT_ATTEMPT", "UDP_BYTES_SENT", "SOCKET_BYTES_SENT") and (
                address := params.get("address")):
            host = address.rsplit(":", 1)[0].strip("[]")
            if not ipaddress.ip_address(host).is_loopback:
                found.append(f"{kind} {address}")
    return found


def in_room(livekit: LiveKitServer, room: str) -> set[str]:
    """The identities in `room` now, from the LiveKit server's RoomService."""
    from livekit import api

    async def main() -> set[str]:
        async with api.LiveKitAPI(livekit.url.replace("ws://", "http://"), API_KEY,
                                  API_SECRET) as lkapi:
            try:
                reply = await lkapi.room.list_participants(
                    api.ListParticipantsRequest(room=room))
            except api.TwirpError:  # no such room yet
                return set()
            return {p.identity for p in reply.participants}

    return run_asyncio(main())


def until(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """The first true value of `condition()`, polled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def viewer_in(livekit: LiveKitServer, room: str, identity: str
              ) -> tuple[threading.Thread, list[Any]]:
    """A viewer in `room` (joined when this returns) until `identity` leaves; what it
    saw lands in the list when the thread ends."""
    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, room, 90.0, until_left=identity)))
    viewer.start()
    # a room with a viewer waiting for the browser to go live
    until(lambda: "viewer" in in_room(livekit, room), "the viewer to join", 30)
    return viewer, seen


def test_chromium_publishes_over_whip(whip_service: ServiceProcess,  # noqa: F811
                                      livekit: LiveKitServer, tmp_path: Path) -> None:
    room, identity = "whip-chromium", "chromium"
    info = create_whip(whip_service, room, identity)
    whip_url = endpoint(whip_service, info.stream_key)
    viewer, seen = viewer_in(livekit, room, identity)

    with PublisherPage() as page, chromium(tmp_path, page.url(whip_url)) as browser:
        answer = page.step("answer", 60, browser.gone)
        media = page.step("media", 0, browser.gone)
        offer = page.step("offer", 0, browser.gone)
        assert answer["status"] == 201, (answer, offer["sdp"])
        page.wait(lambda e: e["step"] == "connection" and e["state"] == "connected",
                  "connection", 20, browser.gone)
        live = wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
        sent = page.wait(lambda e: e["step"] == "stats" and e["video"] and e["audio"]
                         and (e["video"]["framesSent"] or 0) >= SEND_FRAMES
                         and (e["audio"]["packetsSent"] or 0) >= SEND_AUDIO_PACKETS,
                         f"{SEND_FRAMES} frames sent", 60, browser.gone)
        # the input's size and codec come with the service's stats refresh
        during = until(lambda: (s := state(whip_service, info.ingress_id)).video.width and s,
                       "the input video's size in the state")
        page.released.set()
        deleted = page.step("deleted", 20, browser.gone)
        viewer.join()
        ended = wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    network = browser.network()  # complete now that the browser is gone

    # Chromium's side: the preflights, the answer, the DELETE
    assert (media["video"]["width"], media["video"]["height"]) == (640, 480), media
    requests = [(p["method"], p["url"]) for kind, p in network
                if kind == "URL_REQUEST_START_JOB"
                and p.get("url", "").startswith(whip_service.url)]
    resource = f"{whip_service.url}{answer['location']}"
    assert requests == [("OPTIONS", whip_url), ("POST", whip_url),
                        ("OPTIONS", resource), ("DELETE", resource)], requests
    assert answer["location"] == f"/w/{info.stream_key}/{live.resource_id}", answer
    assert answer["etag"], answer  # readable: exposed by the CORS headers, like Location
    assert deleted["status"] == 200, deleted
    video_sent = sent["video"]
    assert (video_sent["width"], video_sent["height"]) == (640, 480), sent
    assert sent["pair"]["remote"].startswith("127.0.0.1:"), sent["pair"]
    assert sent_beyond_loopback(network) == []

    # the service's view
    assert live.resource_id.startswith("WH_") and live.room_id.startswith("RM_")
    assert during.video.mime_type == video_sent["mimeType"].lower(), (during.video, sent)
    assert (during.video.width, during.video.height) == (640, 480), during.video
    assert during.audio.mime_type == "audio/opus", during.audio
    video = [t for t in during.tracks if t.type == models.TrackType.VIDEO]
    assert video and video[0].mime_type.lower() == video_sent["mimeType"].lower(), video
    assert ended.ended_at > 0 and not ended.error, ended

    # the room's view
    (got,) = seen
    assert got.participants[identity]["kind"] == 1  # INGRESS
    assert got.left[identity] - deleted["at"] < 2.0, got.left[identity] - deleted["at"]
    beeps = [rms for rms in got.audio_rms if rms > 1000]
    assert len(beeps) >= 10, f"the fake microphone's beep did not arrive: {got.audio_rms}"
    # the viewer was there first, so its first frames need a keyframe Chromium only
    # sends when asked: our PLI must name the media SSRC, not the RTX one
    assert deleted["stats"]["video"]["pli"] >= 1, deleted["stats"]["video"]
    sizes = got.video_sizes
    width, height = max(sizes, key=sizes.get)
    assert width >= 640 and height >= 480, sizes
    assert sum(sizes.values()) >= SEND_FRAMES // 2, sizes
    assert got.fps() >= 8, got.fps()  # the fake camera runs at 20 fps


def test_chromium_restarts_ice_over_whip(whip_service: ServiceProcess,  # noqa: F811
                                         livekit: LiveKitServer, tmp_path: Path) -> None:
    """Chromium restarts ICE 3 s into a session (restartIce(), its new credentials by
    PATCH, ours into its remote description): it selects a pair of the new
    generation, checked with our new credentials, and the room keeps getting video."""
    room, identity = "whip-ice-restart", "chromium-restart"
    info = create_whip(whip_service, room, identity)
    whip_url = endpoint(whip_service, info.stream_key)
    viewer, seen = viewer_in(livekit, room, identity)

    with PublisherPage() as page, chromium(tmp_path, page.url(whip_url, restart_ice=True)
                                           ) as browser:
        answer = page.step("answer", 60, browser.gone)
        assert answer["status"] == 201, answer
        restart = page.step("restart", 60, browser.gone)
        restarted_at = restart["at"]
        sent = page.wait(lambda e: e["step"] == "stats" and e["at"] > restarted_at + 4,
                         "stats 4 s after the restart", 30, browser.gone)
        page.released.set()
        deleted = page.step("deleted", 20, browser.gone)
        viewer.join()
        wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)

    # the PATCH: our new credentials and a new ETag
    assert restart["status"] == 200, restart
    ours = re.fullmatch(r"a=ice-ufrag:(\S+)\r\na=ice-pwd:(\S+)\r\n", restart["body"])
    assert ours and f"a=ice-ufrag:{ours[1]}" not in answer["sdp"], (restart, answer["sdp"])
    assert restart["etag"] and restart["etag"] != answer["etag"], restart
    # Chromium's ICE ran again, with its new credentials, on a new pair that our agent
    # answered: STUN responses are signed with our new password, or Chromium drops them
    before, after = restart["before"], restart["after"]
    assert after["ufrag"] == restart["ufrag"] != before["ufrag"], restart
    assert after["state"] == "connected" and after["pair"]["id"] != before["pair"]["id"], (
        restart)
    # ("in-progress" while Chromium's next check on the pair is out: seen in CI)
    assert after["pair"]["state"] in ("succeeded", "in-progress"), restart
    assert after["pair"]["responsesReceived"] > 0, restart
    # and our agent checked the new pair too, signed with Chromium's new password
    assert after["pair"]["responsesSent"] > 0, restart
    assert deleted["status"] == 200, deleted
    assert f"ICE restart: local ufrag {ours[1]}" in whip_service.log()

    # media went on: Chromium kept sending, the room kept receiving
    (got,) = seen
    late = [t for t in got.video_times if t > restarted_at + 1]
    assert len(late) >= 40, (len(got.video_times), len(late), sent["video"])


def test_chromium_simulcast_layers_each_reach_a_subscriber(
        whip_service: ServiceProcess, livekit: LiveKitServer,  # noqa: F811
        tmp_path: Path) -> None:
    """Chromium sends three encodings (rids q, h, f: 320x180, 640x360, 1280x720) with
    transcoding off: the offer is taken, each layer is forwarded as that layer, and a
    subscriber selecting LOW, MEDIUM and HIGH gets each size. Its audio is the
    publisher's Opus, forwarded (the state says Opus; the viewer hears the beep)."""
    room, identity = "whip-chromium-simulcast", "chromium-simulcast"
    info = create_whip(whip_service, room, identity)
    whip_url = endpoint(whip_service, info.stream_key)
    with PublisherPage() as page, chromium(tmp_path, page.url(whip_url, simulcast=True)
                                           ) as browser:
        answer = page.step("answer", 60, browser.gone)
        offer = page.step("offer", 0, browser.gone)
        assert answer["status"] == 201, (answer, offer["sdp"])
        assert "a=simulcast:recv q;h;f" in answer["sdp"], answer["sdp"]
        wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
        # the browser enables its upper layers as its bandwidth estimate (our REMB) grows
        sent = page.wait(lambda e: e["step"] == "stats" and len(e["layers"]) == 3 and all(
            (layer["framesSent"] or 0) > 30 for layer in e["layers"].values()),
            "three layers sending", 60, browser.gone)
        layers = {rid: (layer["width"], layer["height"]) for rid, layer in
                  sent["layers"].items()}
        assert layers == {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}, sent
        seen = watch_layer_stats(livekit.url, room, {"HIGH": 2, "MEDIUM": 1, "LOW": 0},
                                 settle=2.0, hold=3.0)
        during = state(whip_service, info.ingress_id)
        page.released.set()
        page.step("deleted", 20, browser.gone)
    video = [t for t in during.tracks if t.type == models.TrackType.VIDEO]
    assert video and video[0].simulcast, during.tracks
    assert [(layer.width, layer.height) for layer in video[0].layers] == [
        (320, 180), (640, 360), (1280, 720)], video[0].layers
    assert during.audio.mime_type == "audio/opus", during.audio
    report = {name: (got.sizes.most_common(1), round(got.fps, 1)) for name, got in
              seen.items()}
    for name, size in {"LOW": (320, 180), "MEDIUM": (640, 360), "HIGH": (1280, 720)}.items():
        got = seen[name]
        assert got.sizes and got.sizes.most_common(1)[0][0] == size, (name, report)
        assert got.fps >= 8, (name, report)  # the fake camera's 20 fps, not frozen
