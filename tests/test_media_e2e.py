"""RTMP from ffmpeg into a real LiveKit room, checked by a real subscriber.

ffmpeg (Debian) publishes 1280x720 30 fps test video and a 440 Hz sine over RTMP
to the service; the service's session worker publishes into livekit-server; a
livekit SDK subscriber in the room checks the participant, its tracks, and the
decoded media; the official API client checks IngressState along the way.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb
from livekit.protocol import models

from tests.livekit import API_KEY, API_SECRET, LiveKitServer, watch
from tests.service import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def media_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("media"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url, rtmp_port=0)
    proc.start()
    yield proc
    proc.stop()


def publisher(addr: str, key: str, seconds: float, size: str = "1280x720",
              video: bool = True, audio: bool = True) -> subprocess.Popen[bytes]:
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    args += ["-t", str(seconds)]
    if video:
        args += ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                 "-pix_fmt", "yuv420p", "-g", "60", "-bf", "0", "-b:v", "2500k"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "128k"]
    return subprocess.Popen([*args, "-f", "flv", f"rtmp://{addr}/live/{key}"],
                            stderr=subprocess.PIPE)


def create(service: ServiceProcess, room: str, identity: str) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, name="e2e", room_name=room,
            participant_identity=identity, participant_name=f"{identity} name",
            video=pb.IngressVideoOptions(name="camera", source=models.TrackSource.CAMERA),
            audio=pb.IngressAudioOptions(name="microphone",
                                         source=models.TrackSource.MICROPHONE)))

    return service.api(call)


def state(service: ServiceProcess, ingress_id: str) -> pb.IngressState:
    async def call(client: Any) -> pb.IngressState:
        items = (await client.list_ingress(pb.ListIngressRequest(ingress_id=ingress_id))).items
        return items[0].state

    return service.api(call)


def wait_for(service: ServiceProcess, ingress_id: str, status: int, timeout: float = 20
             ) -> pb.IngressState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = state(service, ingress_id)
        if current.status == status:
            return current
        time.sleep(0.25)
    raise AssertionError(f"state stayed {current}")


def wait_for_video(service: ServiceProcess, ingress_id: str, timeout: float = 20
                   ) -> models.TrackInfo:
    """The published video track, once the state lists one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tracks = [t for t in state(service, ingress_id).tracks
                  if t.type == models.TrackType.VIDEO]
        if tracks:
            return tracks[0]
        time.sleep(0.25)
    raise AssertionError("no video track was published")


def test_rtmp_720p_with_tone_reaches_the_room(media_service: ServiceProcess,
                                              livekit: LiveKitServer, tmp_path: Path) -> None:
    info = create(media_service, "e2e-720p", "obs-1")
    import threading

    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, "e2e-720p", 40.0, until_left="obs-1")))
    viewer.start()
    ffmpeg = publisher(media_service.rtmp_addr, info.stream_key, seconds=16)
    publishing = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    time.sleep(6)  # let the periodic input-state refresh run
    live = state(media_service, info.ingress_id)
    assert ffmpeg.wait(30) == 0, ffmpeg.stderr.read() if ffmpeg.stderr else ""
    viewer.join()
    ended = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)

    # IngressState through the official client
    assert publishing.resource_id.startswith("RT_") and publishing.started_at > 0
    assert publishing.room_id.startswith("RM_")
    assert {(t.type, t.name, t.source) for t in live.tracks} == {
        (models.TrackType.VIDEO, "camera", models.TrackSource.CAMERA),
        (models.TrackType.AUDIO, "microphone", models.TrackSource.MICROPHONE)}
    assert (live.video.mime_type, live.video.width, live.video.height) == (
        "video/h264", 1280, 720)
    assert 25 <= live.video.framerate <= 31 and live.video.average_bitrate > 500_000
    assert live.audio.mime_type == "audio/aac" and live.audio.sample_rate == 44100
    assert live.audio.channels == 1 and live.audio.average_bitrate > 0
    assert ended.ended_at > ended.started_at == publishing.started_at

    # what a subscriber got
    (got,) = seen
    who = got.participants["obs-1"]
    assert who["name"] == "obs-1 name" and who["kind"] == 1  # INGRESS
    assert who["attributes"]["ingress.ingressID"] == info.ingress_id
    assert who["attributes"]["ingress.resourceID"] == publishing.resource_id
    assert {(t["kind"], t["name"], t["source"]) for t in got.tracks} == {
        (2, "camera", 1), (1, "microphone", 2)}
    content = [s for s in got.video_sequence if s != (2, 2)]
    # simulcast starts a new subscriber on the low layer and ramps up within a second;
    # from then on the subscriber stays on 720p until the source ends
    assert (1280, 720) in content, got.video_sizes
    hd = content[content.index((1280, 720)):]
    gaps = sorted((b - a for a, b in zip(got.video_times, got.video_times[1:], strict=False)),
                  reverse=True)[:5]
    why = (got.video_sizes, [round(g, 2) for g in gaps],
           re.findall(r"session ended: .*", media_service.log()))
    assert hd.count((1280, 720)) >= 0.95 * len(hd) and len(hd) > 60, why
    assert got.video_times[-1] - got.video_times[0] > 12, why  # the whole 16 s arrived
    # 30 fps in, 30 fps out: our encoders send every picture from the first one (the
    # SDK's publisher, before issue 14, skipped frames for ~10 s while its bandwidth
    # estimate ramped up). The first 2 s are the viewer finding its layer.
    assert got.fps(skip=2.0) >= 25, (got.fps(skip=2.0), why)
    (frames_in, sent), = re.findall(r"video frames: (\d+) in, (\d+) sent",
                                    media_service.log())[-1:]
    assert int(frames_in) >= 290 and int(sent) >= 0.9 * int(frames_in), why
    assert got.audio_rate == 48000
    assert sorted(got.audio_rms)[len(got.audio_rms) // 2] > 1000, "the tone did not arrive"
    assert "obs-1" in got.left  # the participant left when the source stopped


def test_garbage_h264_ends_that_session_only(media_service: ServiceProcess,
                                             livekit: LiveKitServer) -> None:
    """Valid RTMP carrying broken H.264: that ingress ends in ERROR with a message,
    while a healthy ingress publishing at the same time keeps reaching its viewer."""
    import os
    import threading

    import rtmp
    from rtmp._chunks import MSG_VIDEO
    from tests.test_decode import events
    from tests.test_rtmp_ingest import RawClient

    healthy = create(media_service, "e2e-healthy", "healthy-1")
    broken = create(media_service, "e2e-broken", "broken-1")
    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, "e2e-healthy", 40.0, until_left="healthy-1")))
    viewer.start()
    ffmpeg = publisher(media_service.rtmp_addr, healthy.stream_key, seconds=12,
                       size="320x240")
    wait_for(media_service, healthy.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)

    avcc = next(e for e in events("ffmpeg51_h264_aac") if isinstance(e, rtmp.VideoConfig))
    client = RawClient(media_service.rtmp_addr)
    client.handshake()
    sid, status = client.publish(broken.stream_key)
    assert status["code"] == "NetStream.Publish.Start"
    client.send(6, MSG_VIDEO, sid, 0, b"\x17\x00\x00\x00\x00" + avcc.config)
    disconnected = False
    for i in range(400):
        frame_type = 0x17 if i == 0 else 0x27
        nal = os.urandom(120)
        try:
            client.send(6, MSG_VIDEO, sid, i * 33, bytes([frame_type, 1, 0, 0, 0])
                        + len(nal).to_bytes(4, "big") + nal)
        except (BrokenPipeError, ConnectionResetError):
            disconnected = True  # the session ended and closed the connection
            break
        time.sleep(0.01)
    failed = wait_for(media_service, broken.ingress_id, pb.IngressState.ENDPOINT_ERROR)
    failed_at = time.monotonic()
    assert "h264 decoding failed" in failed.error, failed.error
    assert disconnected or client.closed_within(5) is not None
    client.close()

    still = state(media_service, healthy.ingress_id)
    assert still.status == pb.IngressState.ENDPOINT_PUBLISHING
    assert ffmpeg.wait(30) == 0
    viewer.join()
    (got,) = seen
    after = [t for t in got.video_times if t > failed_at + 0.5]
    assert len(after) > 30, "the healthy ingress stopped reaching its viewer"
    assert media_service.alive


def delete(service: ServiceProcess, ingress_id: str) -> None:
    async def call(client: Any) -> None:
        await client.delete_ingress(pb.DeleteIngressRequest(ingress_id=ingress_id))

    service.api(call)


def watch_in_background(url: str, room: str, seconds: float, until_left: str | None = None
                        ) -> tuple[Any, list[Any]]:
    import threading

    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(
        watch(url, room, seconds, until_left=until_left)))
    thread.start()
    return thread, seen


@pytest.mark.parametrize(("video", "audio"), [(False, True), (True, False)],
                         ids=["audio-only", "video-only"])
def test_single_media_sources_publish_one_track(media_service: ServiceProcess,
                                                livekit: LiveKitServer, video: bool,
                                                audio: bool) -> None:
    room = f"e2e-{'video' if video else 'audio'}-only"
    info = create(media_service, room, "single")
    thread, seen = watch_in_background(livekit.url, room, 30.0, until_left="single")
    ffmpeg = publisher(media_service.rtmp_addr, info.stream_key, seconds=6, size="320x240",
                       video=video, audio=audio)
    live = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    assert ffmpeg.wait(30) == 0
    thread.join()
    (got,) = seen
    kinds = {t["kind"] for t in got.tracks}
    assert kinds == ({2} if video else {1})  # 2 video, 1 audio
    assert [t.type for t in live.tracks] == [
        models.TrackType.VIDEO if video else models.TrackType.AUDIO]
    if video:
        assert len(got.video_times) > 60
    else:
        assert sorted(got.audio_rms)[len(got.audio_rms) // 2] > 1000


def test_stop_republish_and_delete_while_live(media_service: ServiceProcess,
                                              livekit: LiveKitServer) -> None:
    """Source stops -> INACTIVE; the same key publishes again; DeleteIngress while
    live -> the participant is gone from the room within a second."""
    room = "e2e-lifecycle"
    info = create(media_service, room, "cycle")
    first = publisher(media_service.rtmp_addr, info.stream_key, seconds=3, size="320x240")
    one = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    assert first.wait(30) == 0
    inactive = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    assert inactive.ended_at > 0 and inactive.resource_id == one.resource_id

    thread, seen = watch_in_background(livekit.url, room, 30.0, until_left="cycle")
    second = publisher(media_service.rtmp_addr, info.stream_key, seconds=30, size="320x240")
    two = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    assert two.resource_id != one.resource_id and two.started_at > one.started_at
    time.sleep(3)
    deleted_at = time.monotonic()
    delete(media_service, info.ingress_id)
    assert second.wait(10) != 0  # the server ended the publisher's connection
    thread.join()
    (got,) = seen
    assert "cycle" in got.participants
    assert got.left["cycle"] - deleted_at < 1.0, got.left["cycle"] - deleted_at


def test_unreachable_room_ends_in_error(tmp_path: Path) -> None:
    """No LiveKit server at ws_url: the session ends in ERROR saying so."""
    from tests.livekit import free_port

    service = ServiceProcess(tmp_path, api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=f"ws://127.0.0.1:{free_port()}", rtmp_port=0)
    service.start()
    try:
        info = create(service, "nowhere", "lost")
        ffmpeg = publisher(service.rtmp_addr, info.stream_key, seconds=20, size="320x240")
        failed = wait_for(service, info.ingress_id, pb.IngressState.ENDPOINT_ERROR, timeout=40)
        assert failed.error.startswith("cannot join the room at ws://127.0.0.1:"), failed.error
        assert ffmpeg.wait(10) != 0  # its connection was closed
        assert service.alive
    finally:
        service.stop()


def test_a_crashing_decoder_takes_down_only_its_session(media_service: ServiceProcess,
                                                        livekit: LiveKitServer) -> None:
    """A session worker dying of SIGSEGV (what a C decoder crash looks like): its ingress
    ends in ERROR saying so; the service and another live session carry on."""
    import signal as signals

    victim = create(media_service, "e2e-crash", "victim")
    bystander = create(media_service, "e2e-bystander", "bystander")
    a = publisher(media_service.rtmp_addr, victim.stream_key, seconds=20, size="320x240")
    b = publisher(media_service.rtmp_addr, bystander.stream_key, seconds=8, size="320x240")
    wait_for(media_service, victim.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    wait_for(media_service, bystander.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    pid = int(re.findall(r"worker\[(\d+)\] relay.worker.room: joined room e2e-crash ",
                         media_service.log())[-1])
    thread, seen = watch_in_background(livekit.url, "e2e-bystander", 5.0)
    import os

    os.kill(pid, signals.SIGSEGV)
    failed = wait_for(media_service, victim.ingress_id, pb.IngressState.ENDPOINT_ERROR)
    assert failed.error == "session worker crashed (SIGSEGV)"
    assert a.wait(10) != 0  # its publisher was disconnected
    thread.join()
    assert state(media_service, bystander.ingress_id).status == (
        pb.IngressState.ENDPOINT_PUBLISHING)
    (got,) = seen
    assert len(got.video_times) > 60, "the other session stopped reaching its viewer"
    assert b.wait(30) == 0
    assert media_service.alive


def test_portrait_source_gets_portrait_layers(media_service: ServiceProcess,
                                              livekit: LiveKitServer) -> None:
    room = "e2e-portrait"
    info = create(media_service, room, "portrait")
    thread, seen = watch_in_background(livekit.url, room, 30.0, until_left="portrait")
    ffmpeg = publisher(media_service.rtmp_addr, info.stream_key, seconds=8, size="720x1280")
    video = wait_for_video(media_service, info.ingress_id)
    assert ffmpeg.wait(30) == 0
    thread.join()
    assert (video.width, video.height) == (406, 720)  # REFERENCE §5: 720x1280 -> 406x720
    sizes = seen[0].video_sizes
    # our encoder sends the layer as fitted (libwebrtc's simulcast, before issue 14,
    # aligned it to a multiple of 4: 404x720)
    assert max(sizes, key=sizes.get) == (406, 720), sizes


def test_custom_vp8_options(media_service: ServiceProcess, livekit: LiveKitServer) -> None:
    """Custom options: VP8 at 15 fps with one 640x360 layer; the viewer gets VP8 video
    at that size and rate."""
    room = "e2e-vp8"

    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name=room, participant_identity="vp8",
            video=pb.IngressVideoOptions(name="v", options=pb.IngressVideoEncodingOptions(
                video_codec=models.VideoCodec.VP8, frame_rate=15,
                layers=[models.VideoLayer(quality=models.VideoQuality.HIGH, width=640,
                                          height=360, bitrate=800_000)]))))

    info = media_service.api(call)
    thread, seen = watch_in_background(livekit.url, room, 30.0, until_left="vp8")
    ffmpeg = publisher(media_service.rtmp_addr, info.stream_key, seconds=7, size="1280x720")
    video = wait_for_video(media_service, info.ingress_id)
    assert ffmpeg.wait(30) == 0
    thread.join()
    assert video.mime_type == "video/VP8" and not video.simulcast
    assert (video.width, video.height) == (640, 360)
    (got,) = seen
    sizes = got.video_sizes
    assert max(sizes, key=sizes.get) == (640, 360), sizes
    assert 7.5 <= got.fps() <= 16.5, got.fps()  # the 15 fps limit holds (not 30)


def test_publisher_dropping_its_connection_is_a_clean_end(media_service: ServiceProcess
                                                          ) -> None:
    """An encoder killed mid-stream (its TCP connection just goes) ends the session as
    a normal end: INACTIVE, one INFO line, nothing at ERROR, no traceback (issue 12:
    it was "unexpected error" with an exception-group traceback)."""
    info = create(media_service, "e2e-dropped", "dropped")
    ffmpeg = publisher(media_service.rtmp_addr, info.stream_key, seconds=60)
    live = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    time.sleep(1)
    ffmpeg.kill()
    ffmpeg.wait(10)
    ended = wait_for(media_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    assert ended.error == "" and ended.resource_id == live.resource_id
    time.sleep(1)  # the worker's last words reach the log
    lines = [line for line in media_service.log().splitlines() if live.resource_id in line]
    assert [line for line in lines if " ended after " in line], lines
    assert not [line for line in lines if " ERROR " in line or " WARNING " in line], lines
    assert "Traceback" not in media_service.log()
