"""The node under hostile load (issue 12): event-loop stalls, lost frames, SIGTERM.

Starts livekit-server and the service (real session workers), then two ffmpeg RTMP
publishers (640x360 30 fps H.264 + AAC, real time) that stream through every phase:

1. baseline: nothing else;
2. pre-auth aggregate: 4 peers at a time, each doing the handshake, a 16 MiB chunk
   size and one 8 MiB aggregate of ~560,000 empty tags before ``connect`` (the
   attack that held the node's loop 1.4-1.8 s), again and again;
3. 500 idle RTMP connections (handshake, then nothing) and 500 slowloris HTTP
   connections (a header byte every 5 s, reconnecting when cut) at once.

Per phase it prints the worst event-loop lag the node reports
(``ingress_relay_event_loop_lag_worst_seconds``, read every 0.5 s) and the longest
gap between two answers to ``GET /`` asked back to back from another connection.
After the publishers end: the frames each sent against what the node's front
counted and what its worker dropped or skipped. Last, with two new publishers live:
the time from SIGTERM to the process' exit, and whether both ingresses read
ENDPOINT_INACTIVE after a restart (a missed final write reads ERROR "the node
restarted"). Run: .venv/bin/python bench/hardening.py [--seconds 12]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as pb

import rtmp
from rtmp._handshake import client_c2, client_hello
from tests.livekit import API_KEY, API_SECRET, LiveKitServer
from tests.service import ServiceProcess
from tests.test_rtmp_ingest import create, state, wait_state
from tests.test_rtmp_preauth import AnswerGaps

FPS = 30
IDLE_RTMP = 500
SLOWLORIS_HTTP = 500


class Watch:
    """Two looks at the node from outside, each in its own thread: the lag gauge it
    reports, and the gaps between answers to back-to-back `GET /` (AnswerGaps)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.worst_lag = 0.0
        self._stop = threading.Event()
        self._gaps = AnswerGaps(base_url).__enter__()
        threading.Thread(target=self._lag, daemon=True).start()

    @property
    def longest_gap(self) -> float:
        return self._gaps.longest

    def reset(self) -> None:
        time.sleep(10.5)  # the gauge covers the last 10 s: let the previous phase leave it
        self.worst_lag = self._gaps.longest = 0.0

    def _lag(self) -> None:
        pattern = re.compile(r"^ingress_relay_event_loop_lag_worst_seconds (\S+)$", re.M)
        while not self._stop.is_set():
            with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as reply:
                match = pattern.search(reply.read().decode())
            if match:
                self.worst_lag = max(self.worst_lag, float(match.group(1)))
            time.sleep(0.5)

    def close(self) -> None:
        self._stop.set()
        self._gaps.__exit__(None, None, None)


def publisher(addr: str, key: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt",
         "yuv420p", "-g", "60", "-bf", "0", "-b:v", "800k", "-c:a", "aac", "-b:a", "96k",
         "-f", "flv", f"rtmp://{addr}/live/{key}"], stderr=subprocess.PIPE)


# -- the hostile peers ------------------------------------------------------------------


async def _rtmp_handshake(stream: trio.SocketStream) -> None:
    c0c1 = client_hello(os.urandom)
    await stream.send_all(c0c1)
    got = b""
    while len(got) < 1 + 2 * 1536:
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("closed in the handshake")
        got += data
    await stream.send_all(client_c2(got[:1 + 2 * 1536], os.urandom))


def aggregate_attack_bytes() -> bytes:
    writer = rtmp.ChunkWriter(128)
    out = writer.set_chunk_size(16 * 1024 * 1024 - 1)
    tags = (b"\x09" + bytes(10) + struct.pack(">I", 11)) * (8 * 1024 * 1024 // 15)
    return out + writer.write(6, 22, 0, 0, tags)


async def aggregate_peers(addr: tuple[str, int], seconds: float, parallel: int = 4) -> int:
    attack = aggregate_attack_bytes()
    sent = 0

    async def one_after_another() -> None:
        nonlocal sent
        while True:
            try:
                stream = await trio.open_tcp_stream(*addr)
                async with stream:
                    await _rtmp_handshake(stream)
                    await stream.send_all(attack)
                    sent += 1
                    while await stream.receive_some(65536):
                        pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                sent += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(parallel):
                nursery.start_soon(one_after_another)
    return sent


async def idle_and_slowloris(rtmp_addr: tuple[str, int], http_addr: tuple[str, int],
                             seconds: float) -> dict[str, int]:
    counts = {"rtmp_held": 0, "rtmp_refused": 0, "http_cut": 0}

    async def idle_rtmp() -> None:
        try:
            stream = await trio.open_tcp_stream(*rtmp_addr)
            async with stream:
                await _rtmp_handshake(stream)
                counts["rtmp_held"] += 1
                await stream.receive_some(1)  # until the node closes it (or we stop)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            counts["rtmp_refused"] += 1

    async def slowloris() -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(*http_addr)
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    while True:
                        await stream.send_all(b"a")
                        with trio.move_on_after(5):
                            if not await stream.receive_some(65536):
                                break
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            counts["http_cut"] += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(SLOWLORIS_HTTP):
                nursery.start_soon(slowloris)
            for _ in range(IDLE_RTMP):
                nursery.start_soon(idle_rtmp)
    return counts


# -- the run --------------------------------------------------------------------------


def frames_of(svc: ServiceProcess, ingress_id: str) -> tuple[int, str]:
    """Video frames the front counted for one ingress, and its session's id."""
    log = svc.log()
    rid = re.search(rf"rtmp session (RT_\w+) of {ingress_id}", log)
    if not rid:
        return 0, "no session"
    ended = re.search(rf"session {rid.group(1)} of .* ended after .*?video \S+ \S+ "
                      r"frames=(\d+)", log)
    return int(ended.group(1)) if ended else 0, rid.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--control", action="store_true",
                        help="the same timeline without the hostile peers (what the "
                             "publishers lose on their own)")
    args = parser.parse_args()
    phase = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        livekit = LiveKitServer(workdir)
        livekit.start()
        svc = ServiceProcess(workdir, api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url, rtmp_port=0)
        svc.start()
        try:
            run(svc, phase, control=args.control)
        finally:
            svc.stop()
            livekit.stop()


def run(svc: ServiceProcess, phase: float, *, control: bool = False) -> None:
    host, port = svc.rtmp_addr.rsplit(":", 1)
    rtmp_addr = (host, int(port))
    http_host, http_port = svc.url.removeprefix("http://").rsplit(":", 1)
    http_addr = (http_host, int(http_port))
    # the two publishers outlast the three phases (each preceded by the 10.5 s reset)
    seconds = int(3 * (phase + 10.5) + 15)
    infos = [create(svc, name=f"publisher-{i}", room_name="hardening",
                    participant_identity=f"publisher-{i}") for i in range(2)]
    pubs = [publisher(svc.rtmp_addr, info.stream_key, seconds) for info in infos]
    for info in infos:
        wait_state(svc, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING, 30)
    watch = Watch(svc.url)
    rows = []
    watch.reset()
    time.sleep(phase)
    rows.append(("baseline: 2 publishers", watch.worst_lag, watch.longest_gap, ""))
    async def aggregates() -> str:
        return f"{await aggregate_peers(rtmp_addr, phase)} attacks"

    async def connections() -> str:
        counts = await idle_and_slowloris(rtmp_addr, http_addr, phase)
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    for name, hostile in (("pre-auth 8 MiB aggregates", aggregates),
                          (f"{IDLE_RTMP} idle RTMP + {SLOWLORIS_HTTP} slowloris HTTP",
                           connections)):
        watch.reset()
        if control:
            time.sleep(phase)
            rows.append((f"control: nothing (instead of: {name})", watch.worst_lag,
                         watch.longest_gap, ""))
        else:
            note = trio.run(hostile)
            rows.append((name, watch.worst_lag, watch.longest_gap, note))
    watch.close()
    print(f"{'phase':60} {'worst loop lag':>15} {'longest gap':>12}  notes")
    for name, lag, gap, note in rows:
        print(f"{name:60} {lag * 1000:12.1f} ms {gap * 1000:9.1f} ms  {note}")

    for pub in pubs:
        pub.wait(seconds + 30)
    for info in infos:
        wait_state(svc, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE, 30)
    time.sleep(1)
    expected = seconds * FPS
    for info in infos:
        counted, _ = frames_of(svc, info.ingress_id)
        print(f"{info.name}: sent {expected} video frames, the node's front counted {counted}")
    for line in re.findall(r"worker\[\d+\] relay.worker: session ended: (.*)", svc.log()):
        print(f"a worker: {line}")

    # SIGTERM with two sessions live
    infos = [create(svc, name=f"stopped-{i}", room_name="hardening",
                    participant_identity=f"stopped-{i}") for i in range(2)]
    pubs = [publisher(svc.rtmp_addr, info.stream_key, 60) for info in infos]
    for info in infos:
        wait_state(svc, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING, 30)
    time.sleep(2)
    assert svc.proc is not None
    began = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    svc.proc.wait(30)
    took = time.monotonic() - began
    svc.proc = None
    for pub in pubs:
        pub.kill()
    svc.start()
    after = [pb.IngressState.Status.Name(state(svc, info.ingress_id).status) for info in infos]
    print(f"SIGTERM with 2 live sessions: exited after {took * 1000:.0f} ms; "
          f"states after a restart: {', '.join(after)}")


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
