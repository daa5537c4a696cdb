"""CPU per second of media of the media pipeline, beside ffmpeg doing the same work.

A 1920x1080 30 fps H.264 + AAC source (10 s, made once with ffmpeg) is fed, paced
in real time, to a session worker (relay/worker/main.py) that publishes into a real
livekit-server: decode (PyAV), scale to the preset's top layer, and libwebrtc's
simulcast encoding of the layers a subscriber receives (OpenH264 inside the SDK),
plus AAC -> PCM. The worker's CPU time (all its threads) is read from /proc.

Beside it, Debian's ffmpeg does the same decode + scale + encode of the same
layers (libx264 ultrafast/zerolatency at the SDK's layer sizes and frame rates,
AAC decode + Opus encode), as fast as it can; its CPU time per second of media is
the reference. Run: .venv/bin/python bench/transcode.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as pb

import rtmp
from bench.rtmp import cpu_seconds, encode
from relay.service.ingest.tokens import participant_token
from relay.service.ingest.worker_client import open_session_worker
from relay.wire import Start
from relay.worker.layers import fit_layers, video_encoding
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, Seen, watch

PRESETS = {
    "H264_720P_30FPS_3_LAYERS (default)": pb.IngressVideoEncodingPreset.H264_720P_30FPS_3_LAYERS,
    "H264_1080P_30FPS_3_LAYERS": pb.IngressVideoEncodingPreset.H264_1080P_30FPS_3_LAYERS,
}
# What the SDK's simulcast sends below the top layer (docs/DESIGN.md): 360p at 20 fps,
# 180p at 15 fps for a 16:9 source.
SDK_LOWER_LAYERS = ((640, 360, 20, "600k"), (320, 180, 15, "150k"))


def media_events(flv: Path) -> list[rtmp.Event]:
    reader = rtmp.FLVReader()
    reader.feed(flv.read_bytes())
    events: list[rtmp.Event] = []
    while (tag := reader.next_tag()) is not None:
        events += rtmp.parse_tag(tag)
    return [e for e in events if isinstance(e, rtmp.VideoConfig | rtmp.VideoFrame
                                            | rtmp.AudioConfig | rtmp.AudioFrame)]


async def run_worker(livekit: LiveKitServer, events: list[rtmp.Event], preset: int,
                     seconds: float) -> tuple[float, float, Seen]:
    """(worker CPU seconds, media seconds, what a viewer got) for `seconds` of media.

    A subscriber watches throughout: with nobody subscribed, libwebrtc may leave
    upper simulcast layers off and the figure would flatter us.
    """
    info = pb.IngressInfo(ingress_id="IN_bench", room_name=f"bench-{preset}",
                          participant_identity="bench", input_type=pb.IngressInput.RTMP_INPUT,
                          video=pb.IngressVideoOptions(preset=preset))
    start = Start(livekit.url, participant_token(API_KEY, API_SECRET, info, "RT_bench"),
                  info.SerializeToString())
    span = max(e.dts for e in events) + 33
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, info.room_name, seconds + 1.0)))
    viewer.start()
    async with open_session_worker(start) as worker:
        began = trio.current_time()
        cpu0 = None
        offset = 0
        while True:
            for event in events:
                at = (offset + event.dts) / 1000
                if at >= seconds:
                    break
                await trio.sleep_until(began + at)
                if cpu0 is None and at >= 2.0:  # after start-up (room join, first frames)
                    cpu0, media0 = cpu_seconds(worker.process.pid), at
                await worker.send(shift(event, offset))
            else:
                offset += span
                continue
            break
        cpu = cpu_seconds(worker.process.pid) - (cpu0 or 0.0)
    await trio.to_thread.run_sync(viewer.join)
    return cpu, seconds - media0, seen[0]


def shift(event: rtmp.Event, offset: int) -> rtmp.Event:
    """The event `offset` ms later (for looping a source with rising timestamps)."""
    import dataclasses

    if isinstance(event, rtmp.VideoFrame | rtmp.VideoConfig):
        return dataclasses.replace(event, dts=event.dts + offset, pts=event.pts + offset)
    return dataclasses.replace(event, dts=event.dts + offset)


def run_ffmpeg(flv: Path, top: tuple[int, int], bitrate: int) -> tuple[float, float, list[str]]:
    """(CPU seconds, media seconds, command) of ffmpeg doing the same layers."""
    layers = [(top[0], top[1], 30, str(bitrate)), *SDK_LOWER_LAYERS]
    graph = f"[0:v]split={len(layers)}" + "".join(f"[s{i}]" for i in range(len(layers))) + ";"
    graph += ";".join(f"[s{i}]fps={fps},scale={w}:{h}[o{i}]"
                      for i, (w, h, fps, _) in enumerate(layers))
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1",
           "-i", str(flv), "-filter_complex", graph]
    for i, (_, _, _, rate) in enumerate(layers):
        cmd += ["-map", f"[o{i}]", "-c:v", "libx264", "-preset", "ultrafast", "-tune",
                "zerolatency", "-b:v", rate, "-f", "null", os.devnull]
    cmd += ["-map", "0:a", "-ar", "48000", "-c:a", "libopus", "-b:a", "96k", "-f", "null",
            os.devnull]
    before = os.times()
    subprocess.run(cmd, check=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system)
    return cpu, 10.0, cmd


@contextmanager
def source_and_server(workdir: Path) -> Iterator[tuple[Path, list[rtmp.Event], LiveKitServer]]:
    """The 10 s 1920x1080 30 fps source (FLV file, its media events) and a running
    livekit-server, for benchmarks that feed session workers (also bench/layers.py)."""
    flv = workdir / "source.flv"
    encode(flv, "4M", 10)
    events = media_events(flv)
    livekit = LiveKitServer(workdir)
    livekit.start()
    try:
        yield flv, events, livekit
    finally:
        livekit.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory() as tmp:
        with source_and_server(Path(tmp)) as (flv, events, livekit):
            for name, preset in PRESETS.items():
                top = fit_layers(video_encoding(pb.IngressVideoOptions(preset=preset)),
                                 1920, 1080)[-1]
                cpu, media, got = trio.run(run_worker, livekit, events, preset, args.seconds)
                ours = cpu / media
                f_cpu, f_media, cmd = run_ffmpeg(flv, (top.width, top.height), top.bitrate)
                theirs = f_cpu / f_media
                print(f"{name}: top layer {top.width}x{top.height}; the viewer got "
                      f"{dict(got.video_sizes)} at {got.fps():.1f} fps")
                print(f"  ours:   {ours:.2f} CPU s per media s ({cpu:.1f} s over {media:.1f} s"
                      f" of media; real time needs <= 2.0 on 2 cores, headroom "
                      f"{2.0 / ours:.1f}x)")
                print(f"  ffmpeg: {theirs:.2f} CPU s per media s; ratio ours/ffmpeg "
                      f"{ours / theirs:.2f}")
            print("ffmpeg command (last preset):", " ".join(cmd))
        time.sleep(0.1)


if __name__ == "__main__":
    main()
