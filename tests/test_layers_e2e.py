"""Every layer that was asked for, as a subscriber selecting it receives it.

For every video preset and two custom option sets (H.264 with 2 layers, VP8 with
3), ffmpeg pushes a 1920x1080 30 fps source over RTMP (encoded once per run, then
copied in real time: the machine's 2 cores are for the worker, the SFU and the
subscriber) (larger than every top
layer, so no layer is limited by the source); a livekit SDK subscriber in its own
process selects each layer in turn and reports the decoded size and, from its
receiver's WebRTC stats, the frame rate and bitrate. Asked: the layers
`fit_layers` makes of the options (relay/worker/layers.py); delivered: within
4 px, >= 90% of the frame rate, +/- 20% of the bitrate. bench/layers.py prints the
same comparison as a table (docs/DESIGN.md).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb
from livekit.protocol import models

from relay.worker.layers import fit_layers, video_encoding
from tests.livekit import API_KEY, API_SECRET, LayerSeen, LiveKitServer, watch_layer_stats
from tests.service import ServiceProcess
from tests.test_media_e2e import wait_for_video

pytestmark = pytest.mark.slow

SOURCE = (1920, 1080)
NAMES = {models.VideoQuality.LOW: "LOW", models.VideoQuality.MEDIUM: "MEDIUM",
         models.VideoQuality.HIGH: "HIGH"}
P = pb.IngressVideoEncodingPreset
CUSTOM = {
    "custom-h264-2-layers": pb.IngressVideoOptions(options=pb.IngressVideoEncodingOptions(
        video_codec=models.VideoCodec.H264_BASELINE, frame_rate=30, layers=[
            models.VideoLayer(quality=models.VideoQuality.LOW, width=640, height=360,
                              bitrate=600_000),
            models.VideoLayer(quality=models.VideoQuality.HIGH, width=1280, height=720,
                              bitrate=2_000_000)])),
    "custom-vp8-3-layers": pb.IngressVideoOptions(options=pb.IngressVideoEncodingOptions(
        video_codec=models.VideoCodec.VP8, frame_rate=24, layers=[
            models.VideoLayer(quality=models.VideoQuality.LOW, width=480, height=270,
                              bitrate=300_000),
            models.VideoLayer(quality=models.VideoQuality.MEDIUM, width=960, height=540,
                              bitrate=800_000),
            models.VideoLayer(quality=models.VideoQuality.HIGH, width=1920, height=1080,
                              bitrate=2_500_000)])),
}
CASES = {P.Name(value): pb.IngressVideoOptions(preset=value) for value in P.values()} | CUSTOM


@pytest.fixture(scope="module")
def layers_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("layers"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url, rtmp_port=0)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def source_1080p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of 1080p30 with enough detail and motion that every layer's encoder
    reaches its rate (testsrc2 alone is too easy: its layers undershoot)."""
    path = tmp_path_factory.mktemp("source") / "noisy1080p.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
         "-f", "lavfi", "-i", f"testsrc2=size={SOURCE[0]}x{SOURCE[1]}:rate=30",
         "-vf", "noise=alls=12:allf=t", "-t", "10",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
         "-g", "30", "-b:v", "8000k", "-pix_fmt", "yuv420p", "-f", "flv", str(path)],
        check=True, timeout=300)
    return path


def push(source: Path, addr: str, key: str, seconds: float) -> subprocess.Popen[bytes]:
    """The source, looped and copied (not encoded again) in real time."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-stream_loop", "-1", "-i", str(source), "-t", str(seconds), "-c", "copy",
         "-f", "flv", f"rtmp://{addr}/live/{key}"], stderr=subprocess.PIPE)


def measure(service: ServiceProcess, livekit: LiveKitServer, source: Path, room: str,
            video: pb.IngressVideoOptions) -> tuple[models.TrackInfo, dict[str, LayerSeen]]:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name=room,
            participant_identity="layers", video=video))

    info = service.api(call)
    asked = fit_layers(video_encoding(video), *SOURCE)
    qualities = {NAMES[layer.quality]: layer.quality for layer in reversed(asked)}
    seen: list[dict[str, LayerSeen]] = []
    viewer = threading.Thread(target=lambda: seen.append(watch_layer_stats(
        livekit.url, room, qualities, settle=2.0, hold=3.0)))
    viewer.start()
    ffmpeg = push(source, service.rtmp_addr, info.stream_key, 8 + 5.5 * len(qualities))
    try:
        track = wait_for_video(service, info.ingress_id)
        viewer.join()
    finally:
        ffmpeg.kill()
        ffmpeg.wait()

    async def delete(client: Any) -> None:
        await client.delete_ingress(pb.DeleteIngressRequest(ingress_id=info.ingress_id))

    service.api(delete)
    return track, seen[0]


@pytest.mark.parametrize("case", list(CASES))
def test_each_asked_layer_is_delivered(layers_service: ServiceProcess,
                                       livekit: LiveKitServer, source_1080p: Path,
                                       case: str) -> None:
    video = CASES[case]
    encoding = video_encoding(video)
    asked = fit_layers(encoding, *SOURCE)
    track, seen = measure(layers_service, livekit, source_1080p, f"layers-{case.lower()}",
                          video)
    assert track.simulcast == (len(asked) > 1)
    assert [(layer.width, layer.height) for layer in track.layers] == [
        (layer.width, layer.height) for layer in asked]
    report = {name: (got.sizes.most_common(1), round(got.fps, 1), round(got.kbps))
              for name, got in seen.items()}
    for layer in asked:
        got = seen[NAMES[layer.quality]]
        assert got.sizes, (layer, report)
        (width, height), _ = got.sizes.most_common(1)[0]
        assert abs(width - layer.width) <= 4 and abs(height - layer.height) <= 4, (
            layer, report)
        assert got.fps >= 0.9 * encoding.frame_rate, (layer, report)
        assert abs(got.kbps * 1000 - layer.bitrate) <= 0.2 * layer.bitrate, (layer, report)
