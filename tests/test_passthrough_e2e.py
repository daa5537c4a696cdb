"""RTMP passthrough (the `rtmp_passthrough` switch): ffmpeg's H.264 goes to the room as sent."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from livekit.protocol import ingress as pb

from tests.livekit import API_KEY, API_SECRET, LiveKitServer, watch
from tests.service import ServiceProcess
from tests.test_media_e2e import wait_for, wait_for_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def passthrough_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("passthrough"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url, rtmp_port=0,
                          rtmp_passthrough=True)
    proc.start()
    yield proc
    proc.stop()


def create_passthrough(service: ServiceProcess, room: str, identity: str) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name=room,
            participant_identity=identity, enable_transcoding=False))

    return service.api(call)


def push(service: ServiceProcess, key: str, *, bframes: int, seconds: int = 6
         ) -> subprocess.Popen[bytes]:
    """1080p H.264 with a 1 s GOP at 1.5 Mbit/s: the room cannot ask an RTMP encoder for
    a keyframe, nor a passthrough track lower its rate (docs/DESIGN.md)."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
         "-profile:v", "main" if bframes else "baseline", "-bf", str(bframes),
         "-pix_fmt", "yuv420p", "-g", "30", "-b:v", "1500k", "-c:a", "aac", "-b:a", "96k",
         "-f", "flv", f"rtmp://{service.rtmp_addr}/live/{key}"],
        stderr=subprocess.PIPE)


def test_h264_without_bframes_passes_through_at_source_size(
        passthrough_service: ServiceProcess, livekit: LiveKitServer) -> None:
    info = create_passthrough(passthrough_service, "pass-1080", "pass")
    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, "pass-1080", 40.0, until_left="pass")))
    viewer.start()
    ffmpeg = push(passthrough_service, info.stream_key, bframes=0)
    video = wait_for_video(passthrough_service, info.ingress_id)
    assert ffmpeg.wait(30) == 0
    viewer.join()
    ended = wait_for(passthrough_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    assert not ended.error
    # the default preset would have scaled to 1280x720 in three layers
    assert (video.width, video.height, video.simulcast) == (1920, 1080, False)
    assert video.mime_type == "video/H264"
    (got,) = seen
    sizes = got.video_sizes
    assert max(sizes, key=sizes.get) == (1920, 1080), sizes
    # 30 sent; a starved viewer decodes fewer
    assert got.fps() >= 15, (got.fps(), sizes, len(got.video_times))
    assert sorted(got.audio_rms)[len(got.audio_rms) // 2] > 1000, "the tone did not arrive"
    assert [t for t in got.tracks if t["kind"] == 2]


def test_bframes_end_in_error_with_the_advice(passthrough_service: ServiceProcess) -> None:
    info = create_passthrough(passthrough_service, "pass-bframes", "bframes")
    ffmpeg = push(passthrough_service, info.stream_key, bframes=2, seconds=20)
    failed = wait_for(passthrough_service, info.ingress_id, pb.IngressState.ENDPOINT_ERROR)
    assert "B-frames" in failed.error and "enable_transcoding" in failed.error, failed.error
    assert ffmpeg.wait(30) != 0  # the service ended the publisher's connection
    assert passthrough_service.alive


def test_transcoding_options_still_apply_elsewhere(passthrough_service: ServiceProcess) -> None:
    """The switch only allows enable_transcoding=false on RTMP; video options still
    cannot go with it (there is nothing to apply them to)."""
    async def call(client: Any) -> Any:
        try:
            await client.create_ingress(pb.CreateIngressRequest(
                input_type=pb.IngressInput.RTMP_INPUT, room_name="r", participant_identity="v",
                enable_transcoding=False, video=pb.IngressVideoOptions(
                    preset=pb.IngressVideoEncodingPreset.H264_720P_30FPS_1_LAYER)))
        except Exception as exc:  # livekit.api.TwirpError
            return exc
        return None

    error = passthrough_service.api(call)
    assert error is not None and "video encoding options must be empty" in str(error)
