"""URL pulls into a real LiveKit room: files over HTTP, HLS, SRT, and their failures.

Fixtures are made by Debian's ffmpeg in each container and served by a test HTTP
server on 127.0.0.1 (tests/media_http.py); ingresses are created with the official
Python client; a LiveKit SDK subscriber in its own process checks the tracks, the
video size and that the audio has signal; the state must end COMPLETE (or ERROR
with the right message).
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb

from tests.livekit import API_KEY, API_SECRET, LiveKitServer, Seen, free_port, watch
from tests.media_http import MediaServer, serve_media
from tests.service import ServiceProcess
from tests.test_media_e2e import state, wait_for, wait_for_video
from tests.test_rtmp_ingest import make_cert

pytestmark = pytest.mark.slow

STALL_SECONDS = 3  # INGRESS_URL_STALL_TIMEOUT for the service under test
SIZE = (640, 360)
AUDIO_KIND, VIDEO_KIND = 1, 2


def ffmpeg(*args: str, video: bool = True, audio: bool = True, seconds: float = 5,
           realtime: bool = False) -> list[str]:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if realtime:
        cmd.append("-re")
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate=25"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    return [*cmd, "-t", str(seconds), *args]


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
FIXTURES: dict[str, list[str]] = {
    "clip.mp4": ffmpeg(*H264, "-c:a", "aac"),
    "clip.mov": ffmpeg(*H264, "-c:a", "aac"),
    "clip.mkv": ffmpeg(*H264, "-c:a", "libopus"),
    "clip.webm": ffmpeg("-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8",
                        "-b:v", "800k", "-c:a", "libopus"),
    "tone.ogg": ffmpeg("-c:a", "libvorbis", video=False),
    "tone.mp3": ffmpeg("-c:a", "libmp3lame", video=False),
    "tone.m4a": ffmpeg("-c:a", "aac", video=False),
    "long.mp4": ffmpeg(*H264, "-c:a", "aac", seconds=40),
    "clip.ts": ffmpeg(*H264, "-c:a", "aac", "-f", "mpegts"),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    root = tmp_path_factory.mktemp("media")
    procs = [subprocess.Popen([*args, str(root / name)]) for name, args in FIXTURES.items()]
    hls = root / "vod"
    hls.mkdir()
    procs.append(subprocess.Popen([*ffmpeg(*H264, "-c:a", "aac", seconds=6), "-f", "hls",
                                   "-hls_time", "2", "-hls_playlist_type", "vod",
                                   str(hls / "index.m3u8")]))
    for proc in procs:
        assert proc.wait(120) == 0
    with serve_media(root) as server:
        yield server


@pytest.fixture(scope="module")
def url_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("url"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url,
                          url_allow_private_addresses=True,  # the media is on 127.0.0.1
                          env={"INGRESS_URL_STALL_TIMEOUT": str(STALL_SECONDS)})
    proc.start()
    yield proc
    proc.stop()


def create_url(service: ServiceProcess, url: str, room: str, identity: str = "puller"
               ) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.URL_INPUT, url=url, room_name=room,
            participant_identity=identity, name=f"pull {room}"))

    return service.api(call)


def delete(service: ServiceProcess, ingress_id: str) -> None:
    async def call(client: Any) -> None:
        await client.delete_ingress(pb.DeleteIngressRequest(ingress_id=ingress_id))

    service.api(call)


def pull_and_watch(service: ServiceProcess, livekit: LiveKitServer, url: str, room: str,
                   seconds: float = 40.0) -> tuple[pb.IngressInfo, Seen]:
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, room, seconds, until_left="puller")))
    viewer.start()
    time.sleep(1.5)  # the viewer's process is in the room before the pull starts
    info = create_url(service, url, room)
    viewer.join()
    return info, seen[0]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mov", "clip.mkv", "clip.webm",
                                  "vod/index.m3u8"])
def test_video_files_play_to_complete(url_service: ServiceProcess, livekit: LiveKitServer,
                                      media: MediaServer, name: str) -> None:
    room = "url-" + name.replace("/", "-").replace(".", "-")
    info, seen = pull_and_watch(url_service, livekit, f"{media.base}/{name}", room)
    final = wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
    assert not final.error
    assert final.resource_id.startswith("UR_")
    assert max(seen.video_sizes, key=seen.video_sizes.get) == SIZE, seen.video_sizes
    assert len(seen.video_times) >= 25, len(seen.video_times)  # of 125-150 sent
    assert median(seen.audio_rms) > 1000, "the tone did not arrive"
    assert {t["kind"] for t in seen.tracks} == {AUDIO_KIND, VIDEO_KIND}
    assert "puller" in seen.left, "the participant did not leave at the end"
    # paced: 5-6 s of media takes about as long to publish, not a burst
    span = seen.video_times[-1] - seen.video_times[0]
    assert span > 3.0, span


@pytest.mark.parametrize("name", ["tone.ogg", "tone.mp3", "tone.m4a"])
def test_audio_files_publish_only_audio(url_service: ServiceProcess, livekit: LiveKitServer,
                                        media: MediaServer, name: str) -> None:
    room = "url-" + name.replace(".", "-")
    info, seen = pull_and_watch(url_service, livekit, f"{media.base}/{name}", room)
    final = wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
    assert not final.error
    assert [t["kind"] for t in seen.tracks] == [AUDIO_KIND]
    assert median(seen.audio_rms) > 1000, "the tone did not arrive"
    assert final.ended_at - final.started_at > 4e9, "not paced: 5 s of audio published faster"


def test_live_hls_follows_ffmpeg_as_it_writes(url_service: ServiceProcess,
                                              livekit: LiveKitServer, media: MediaServer
                                              ) -> None:
    live = media.root / "live"
    live.mkdir()
    writer = subprocess.Popen([*ffmpeg(*H264, "-c:a", "aac", seconds=16, realtime=True),
                               "-f", "hls", "-hls_time", "1", "-hls_list_size", "4",
                               "-hls_flags", "delete_segments", str(live / "index.m3u8")])
    try:
        deadline = time.monotonic() + 15
        while not (live / "index.m3u8").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        info, seen = pull_and_watch(url_service, livekit, f"{media.base}/live/index.m3u8",
                                    "url-live-hls")
        assert writer.wait(30) == 0
    finally:
        writer.kill()
    final = wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
    assert not final.error
    assert max(seen.video_sizes, key=seen.video_sizes.get) == SIZE
    assert len(seen.video_times) >= 100, len(seen.video_times)  # of ~400 written
    assert median(seen.audio_rms) > 1000


def test_srt_listener_into_the_room(url_service: ServiceProcess, livekit: LiveKitServer
                                    ) -> None:
    port = free_port()
    sender = subprocess.Popen([*ffmpeg(*H264, "-tune", "zerolatency", "-c:a", "aac",
                                       seconds=12, realtime=True),
                               "-f", "mpegts", f"srt://127.0.0.1:{port}?mode=listener"])
    try:
        time.sleep(1.0)  # the listener is up
        info, seen = pull_and_watch(url_service, livekit,
                                    f"srt://127.0.0.1:{port}?latency=200000", "url-srt")
        sender.wait(30)
    finally:
        sender.kill()
    final = wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
    assert not final.error
    assert max(seen.video_sizes, key=seen.video_sizes.get) == SIZE
    assert len(seen.video_times) >= 75, len(seen.video_times)
    assert median(seen.audio_rms) > 1000


def test_https_with_a_trusted_certificate(livekit: LiveKitServer, media: MediaServer,
                                          tmp_path: Path) -> None:
    """https:// pulls when the certificate is trusted: here the test's own CA, given to
    the service through OpenSSL's SSL_CERT_FILE (the same server is refused with the
    system's CAs in test_failures_end_in_error_while_another_pull_goes_on)."""
    cert, key = make_cert(tmp_path)
    service = ServiceProcess(tmp_path / "svc", api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url, url_allow_private_addresses=True,
                             env={"SSL_CERT_FILE": cert})
    (tmp_path / "svc").mkdir()
    with serve_media(media.root, certificate=(cert, key)) as tls:
        service.start()
        try:
            info = create_url(service,
                              f"https://127.0.0.1:{tls.server_address[1]}/clip.mp4",
                              "url-https")
            # the state lists each track once it is published; audio may come first
            wait_for_video(service, info.ingress_id)
            final = wait_for(service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
        finally:
            service.stop()
    assert not final.error


def test_failures_end_in_error_while_another_pull_goes_on(
        url_service: ServiceProcess, livekit: LiveKitServer, media: MediaServer,
        tmp_path: Path) -> None:
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, "url-survivor", 30.0)))
    viewer.start()
    survivor = create_url(url_service, f"{media.base}/long.mp4", "url-survivor")
    wait_for(url_service, survivor.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    closed = free_port()
    base = media.base
    with serve_media(media.root, certificate=make_cert(tmp_path)) as tls:
        cases = {
            f"{base}/status/404": f"HTTP 404 Not Found from {base}/status/404",
            f"{base}/status/500": f"HTTP 500 Internal Server Error from {base}/status/500",
            f"http://127.0.0.1:{closed}/clip.mp4":
                f"cannot reach 127.0.0.1:{closed}: connection refused",
            f"https://127.0.0.1:{tls.server_address[1]}/clip.mp4":
                "TLS failure with 127.0.0.1: self-signed certificate",
            f"{base}/page.html": "unsupported mime type (text/html) for the source media",
            f"{base}/stall/clip.ts":
                f"no data from {base}/stall/clip.ts for {STALL_SECONDS} s",
            f"srt://127.0.0.1:{closed}?connect_timeout=1500":
                f"SRT connection to 127.0.0.1:{closed} failed",
        }
        try:
            created = {url: create_url(url_service, url, f"url-fail-{i}", identity=f"f{i}")
                       for i, url in enumerate(cases)}
            for url, expected in cases.items():
                final = wait_for(url_service, created[url].ingress_id,
                                 pb.IngressState.ENDPOINT_ERROR, timeout=30)
                assert final.error.startswith(expected), (url, final.error)
            assert state(url_service, survivor.ingress_id).status == \
                pb.IngressState.ENDPOINT_PUBLISHING
        finally:
            delete(url_service, survivor.ingress_id)
    viewer.join()
    (got,) = seen
    times = got.video_times
    assert times and max(b - a for a, b in itertools.pairwise(times)) < 2.0, \
        "the other pull's video stopped while the failures happened"
    assert url_service.alive


def test_delete_stops_the_pull(url_service: ServiceProcess, livekit: LiveKitServer,
                               media: MediaServer) -> None:
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, "url-delete", 25.0, until_left="puller")))
    viewer.start()
    info = create_url(url_service, f"{media.base}/long.mp4", "url-delete")
    wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    time.sleep(2)
    deleted_at = time.monotonic()
    delete(url_service, info.ingress_id)
    viewer.join()
    (got,) = seen
    assert "puller" in got.left, "the participant did not leave after DeleteIngress"
    # monotonic clocks are system-wide: how long the participant stayed after delete
    left_after = got.left["puller"] - deleted_at
    assert left_after < 3.0, left_after
    assert got.video_times[-1] - deleted_at < 1.5


def test_update_is_refused(url_service: ServiceProcess, media: MediaServer) -> None:
    info = create_url(url_service, f"{media.base}/clip.mp4", "url-update")

    async def call(client: Any) -> Any:
        from livekit.api import TwirpError

        try:
            await client.update_ingress(pb.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                                 name="renamed"))
        except TwirpError as exc:
            return exc
        return None

    error = url_service.api(call)
    assert error is not None and error.message == \
        "ingress is not reusable and cannot be modified"
    wait_for(url_service, info.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)


def test_a_restart_resumes_an_interrupted_pull(livekit: LiveKitServer, media: MediaServer,
                                               tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url, url_allow_private_addresses=True)
    service.start()
    try:
        info = create_url(service, f"{media.base}/long.mp4", "url-restart")
        before = wait_for(service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
        service.restart()
        after = wait_for(service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
        assert after.resource_id != before.resource_id
        assert after.started_at > before.started_at
        assert "resuming the pull of " + info.ingress_id in service.log()
        # a pull that ended stays ended
        done = create_url(service, f"{media.base}/tone.mp3", "url-restart-done",
                          identity="done")
        wait_for(service, done.ingress_id, pb.IngressState.ENDPOINT_COMPLETE)
        delete(service, info.ingress_id)
        service.restart()
        time.sleep(2)
        assert state(service, done.ingress_id).status == pb.IngressState.ENDPOINT_COMPLETE
    finally:
        service.stop()


def test_a_node_refuses_private_targets_by_default(livekit: LiveKitServer, media: MediaServer,
                                                  tmp_path: Path) -> None:
    """Without url_allow_private_addresses (and without --dev), URL ingresses to this
    machine, the cloud metadata address or the private network end in ERROR with a
    text that tells nothing of the target: an open port and a closed one read alike,
    and the server on 127.0.0.1 is never asked."""
    service = ServiceProcess(tmp_path, api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url)
    port, closed = media.server_address[1], free_port()
    allow = "a private or local address (set url_allow_private_addresses to allow)"
    cases = {
        f"http://127.0.0.1:{port}/refused.mp4": f"URL refused: 127.0.0.1 is {allow}",
        f"http://127.0.0.1:{closed}/refused.mp4": f"URL refused: 127.0.0.1 is {allow}",
        f"http://localhost:{port}/refused.mp4": f"URL refused: localhost resolves to {allow}",
        "http://169.254.169.254/latest/meta-data/":
            f"URL refused: 169.254.169.254 is {allow}",
        f"https://[::ffff:10.0.0.1]:{port}/refused.mp4": f"URL refused: ::ffff:10.0.0.1 is {allow}",
        f"srt://127.0.0.1:{port}": f"URL refused: 127.0.0.1 is {allow}",
    }
    service.start()
    try:
        created = {url: create_url(service, url, f"url-refused-{i}", identity=f"r{i}")
                   for i, url in enumerate(cases)}
        for url, expected in cases.items():
            final = wait_for(service, created[url].ingress_id, pb.IngressState.ENDPOINT_ERROR,
                             timeout=30)
            assert final.error == expected, (url, final.error)
    finally:
        service.stop()
    assert not [r for r in media.requests if "refused" in r]
