"""URL pull benchmarks (issue #6): time to first frame, and pacing drift.

Runs a real livekit-server and the service (bench/latency.py's harness) and serves
the media from a test HTTP server on 127.0.0.1 (tests/media_http.py, byte ranges).

The source is made once with PyAV: 1280x720 30 fps H.264 (libx264 veryfast, GOP 60,
no B-frames) + a 440 Hz AAC tone in MP4 (moov at the end, as encoders write it,
so the pull needs a second, ranged request), and the same streams cut into an HLS
VOD playlist of 2 s segments by ffmpeg. Every picture carries its own media time
(ms) drawn in with bench/_stamp.py.

`first-frame`: for each of MP4 and HLS, --runs times: a viewer joins a fresh room
(its own process, tests/livekit.py `watch`), then CreateIngress is called through
livekit-api; the figure is the time from the call to the first video frame the
viewer decodes (CLOCK_MONOTONIC is system-wide, so the two processes' clocks agree).

`drift`: one pull of the --seconds long MP4; the viewer (bench/latency.py's
Subscriber, HIGH layer) reads each picture's media time back; drift is
(wall time since the first stamped picture) - (media time since it): positive when
publishing runs behind the media, negative when ahead.

`live`: bench/latency.py's publisher (1280x720 30 fps, each picture stamped with
its capture wall-clock ms) writes a live HLS playlist (2 s segments, 6 listed) in
real time; the service pulls it from the live edge; the viewer reads the stamps:
glass-to-glass latency per 5 s window. At --stall-at seconds the HTTP server
holds every segment download for --stall seconds (a stalled CDN): the latency
must come back to its level before the stall (late frames behind the live edge
are skipped), not stay higher by the stall.

`delete`: --runs times, a pull of the MP4 publishing for 3 s, then DeleteIngress:
the time until the viewer sees the participant leave, and its last video frame.

Run: .venv/bin/python bench/url.py [first-frame|drift|live|delete|all] [--runs 5] [--seconds 60]
No assertions: it prints figures (targets on loopback: first frame <= 1.5 s, drift
< 100 ms after 60 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from bench import _stamp
from bench.latency import Subscriber, start_harness

W, H, FPS = 1280, 720, 30


def make_source(path: Path, seconds: float) -> None:
    """The stamped MP4 (each picture: its media time in ms)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={
            "preset": "veryfast", "g": str(2 * FPS), "bf": "0"})
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.bit_rate = 2_500_000
        audio = out.add_stream("aac", rate=48000, layout="mono")
        audio.bit_rate = 96_000
        samples_per_frame = 1024
        t_audio = 0
        base = np.full((H, W), 90, np.uint8)
        rng = np.random.default_rng(1)  # a noisy band: a camera-like bitrate
        chroma = np.full((H // 2, W // 2), 128, np.uint8)
        for index in range(int(seconds * FPS)):
            y = base.copy()
            x = (index * 8) % (W - 80)
            y[400:520, x:x + 80] = 200  # something moves: the encoder sends real frames
            y[H - 200:H - 8, 8:W - 8] = rng.integers(60, 200, (192, W - 16), np.uint8)
            _stamp.draw(y, index * 1000 // FPS)
            frame = av.VideoFrame.from_numpy_buffer(
                np.concatenate([y.reshape(-1), chroma.reshape(-1), chroma.reshape(-1)])
                .reshape(H * 3 // 2, W), format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(video.encode(frame))
            while t_audio < (index + 1) * 48000 // FPS:
                t = (np.arange(samples_per_frame) + t_audio) / 48000
                pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
                samples = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16",
                                                     layout="mono")
                samples.sample_rate, samples.pts = 48000, t_audio
                samples.time_base = Fraction(1, 48000)
                out.mux(audio.encode(samples))
                t_audio += samples_per_frame
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def make_hls(source: Path, directory: Path) -> None:
    directory.mkdir()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-i", str(source), "-c", "copy", "-f", "hls", "-hls_time", "2",
                    "-hls_playlist_type", "vod", str(directory / "index.m3u8")], check=True)


def create_url(service: Any, url: str, room: str) -> Any:
    from livekit.protocol import ingress as pb

    async def call(client: Any) -> Any:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.URL_INPUT, url=url, room_name=room,
            participant_identity="puller", name="bench"))

    return service.api(call)


def delete(service: Any, ingress_id: str) -> None:
    from livekit.protocol import ingress as pb

    async def call(client: Any) -> None:
        await client.delete_ingress(pb.DeleteIngressRequest(ingress_id=ingress_id))

    service.api(call)


def time_to_first_frame(livekit_url: str, room: str, create: Callable[[], Any],
                        delete: Callable[[Any], None]) -> float | None:
    """Seconds from `create()` (it makes the ingress that publishes into `room`) to the
    first video frame a subscriber already in the room gets; `delete(info)` after."""
    from tests.livekit import watch

    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(watch(livekit_url, room, 12.0)))
    viewer.start()
    time.sleep(3.0)  # the viewer's process has joined the room
    called = time.monotonic()
    info = create()
    viewer.join()
    delete(info)
    times = seen[0].video_times if seen else []
    return times[0] - called if times else None


def first_frame_once(livekit_url: str, service: Any, url: str, room: str) -> float | None:
    return time_to_first_frame(livekit_url, room, lambda: create_url(service, url, room),
                               lambda info: delete(service, info.ingress_id))


def run_first_frame(livekit_url: str, service: Any, base: str, runs: int) -> None:
    for label, path in (("MP4 over HTTP", "source.mp4"), ("HLS VOD (2 s segments)",
                                                          "hls/index.m3u8")):
        results = []
        for i in range(runs):
            took = first_frame_once(livekit_url, service, f"{base}/{path}",
                                    f"ff-{path.split('/')[0].replace('.', '-')}-{i}")
            results.append(took)
            if took is None:  # say why: the service's last words about this pull
                tail = [line for line in service.log().splitlines()
                        if "url" in line or "ERROR" in line or "worker" in line][-6:]
                print("\n".join("    | " + line[:200] for line in tail))
            print(f"  {label} run {i + 1}: "
                  f"{'no frame' if took is None else f'{took * 1000:.0f} ms'}", flush=True)
        got = [r for r in results if r is not None]
        if got:
            print(f"{label}: first frame median {statistics.median(got) * 1000:.0f} ms, "
                  f"min {min(got) * 1000:.0f}, max {max(got) * 1000:.0f} "
                  f"({len(got)}/{runs} runs)", flush=True)


def run_delete(livekit_url: str, service: Any, base: str, runs: int) -> None:
    """DeleteIngress while publishing -> the participant gone and the last frame seen."""
    from livekit.protocol import ingress as pb

    from tests.livekit import watch

    left, last = [], []
    for i in range(runs):
        room = f"url-delete-{i}"
        seen: list[Any] = []
        viewer = threading.Thread(target=lambda room=room, seen=seen: seen.append(
            watch(livekit_url, room, 20.0, until_left="puller")))
        viewer.start()
        time.sleep(3.0)
        info = create_url(service, f"{base}/source.mp4", room)

        async def state(client: Any, ingress_id: str = info.ingress_id) -> int:
            items = (await client.list_ingress(pb.ListIngressRequest(
                ingress_id=ingress_id))).items
            return items[0].state.status

        while service.api(state) != pb.IngressState.ENDPOINT_PUBLISHING:
            time.sleep(0.1)
        time.sleep(3.0)
        deleted = time.monotonic()
        delete(service, info.ingress_id)
        viewer.join()
        got = seen[0] if seen else None
        if got is None or "puller" not in got.left:
            print(f"  run {i + 1}: the viewer did not see the participant leave")
            continue
        left.append(got.left["puller"] - deleted)
        last.append((got.video_times[-1] - deleted) if got.video_times else float("nan"))
        print(f"  run {i + 1}: participant gone {left[-1] * 1000:.0f} ms after the "
              f"DeleteIngress call, last frame at {last[-1] * 1000:+.0f} ms", flush=True)
    if left:
        print(f"DeleteIngress -> participant gone: median {statistics.median(left) * 1000:.0f}"
              f" ms, max {max(left) * 1000:.0f} ms; last frame: median "
              f"{statistics.median(last) * 1000:+.0f} ms ({len(left)}/{runs} runs)")


def run_drift(livekit_url: str, service: Any, base: str, seconds: float) -> None:
    subscriber = Subscriber(livekit_url, "url-drift", warmup=0.0)
    thread = subscriber.start()
    info = create_url(service, f"{base}/source.mp4", "url-drift")
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        stamped = [f for f in subscriber.frames if f.stamp is not None]
        if stamped and stamped[-1].stamp >= (seconds - 1) * 1000:
            break
    time.sleep(1.0)
    subscriber.stop.set()
    thread.join(10)
    delete(service, info.ingress_id)
    # any layer: the stamp reads back at every simulcast size
    stamped = [f for f in subscriber.frames if f.stamp is not None]
    if len(stamped) < 2:
        print("drift: no stamped frames received")
        return
    first = stamped[0]
    offsets = [(f.at_ms - f.stamp, f.stamp - first.stamp) for f in stamped]
    # the reference: the median offset (wall - media) over the first second of media,
    # so one late first frame does not shift every figure
    reference = statistics.median(o for o, m in offsets if m < 1000)
    drift = [(o - reference, m) for o, m in offsets]
    sizes = sorted({(f.width, f.height) for f in stamped})
    print(f"drift: {len(stamped)} stamped frames (sizes {sizes}), media {first.stamp} -> "
          f"{stamped[-1].stamp} ms")
    for mark in range(10, int(seconds) + 1, 10):
        window = [d for d, m in drift if mark * 1000 - 1000 <= m < mark * 1000]
        if window:
            print(f"  at {mark:3d} s of media: drift median {statistics.median(window):+.0f}"
                  f" ms (min {min(window):+.0f}, max {max(window):+.0f})")
    print(f"  largest |drift| over the run: {max(abs(d) for d, _ in drift):.0f} ms")


def run_live(livekit_url: str, service: Any, media: Any, seconds: float, stall_at: float,
             stall: float) -> None:
    """Live HLS: wall-clock stamps -> 2 s segments -> pull -> viewer; one CDN stall."""
    import json

    from bench.latency import latency_ms

    live = media.root / "live"
    live.mkdir()
    writer = subprocess.Popen(
        [sys.executable, __file__, "--publish-hls", str(live / "index.m3u8"),
         "--seconds", str(seconds + 8)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.monotonic() + 20
        while not (live / "index.m3u8").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        subscriber = Subscriber(livekit_url, "url-live", warmup=0.0)
        thread = subscriber.start()
        info = create_url(service, f"{media.base}/live/index.m3u8", "url-live")
        while not subscriber.frames and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        time.sleep(stall_at)
        media.hold_segments_until = time.monotonic() + stall
        print(f"  stalling segment downloads for {stall:g} s at {stall_at:g} s", flush=True)
        time.sleep(max(0.0, seconds - stall_at))
        subscriber.stop.set()
        thread.join(10)
        delete(service, info.ingress_id)
        out, err = writer.communicate(timeout=30)
    finally:
        writer.kill()
    if writer.returncode:
        print(f"  HLS writer failed: {err[-1500:]}")
    elif out.strip():
        print(f"  HLS writer: {json.loads(out.strip().splitlines()[-1])}")
    frames = [f for f in subscriber.frames if f.stamp is not None]
    if not frames:
        print("live: no stamped frame received")
        return
    t0 = frames[0].at_ms
    print(f"live HLS (2 s segments, live edge): {len(frames)} stamped frames in "
          f"{(frames[-1].at_ms - t0) / 1000:.0f} s; glass-to-glass latency per 5 s "
          f"(the stall at {stall_at:g} s after the first frame):")
    for start in range(0, int(seconds), 5):
        window = [latency_ms(f.stamp, f.at_ms) for f in frames
                  if start * 1000 <= f.at_ms - t0 < (start + 5) * 1000]
        if window:
            print(f"  {start:3d}-{start + 5:<3d} s: median {statistics.median(window):6.0f} ms"
                  f"  max {max(window):6.0f} ms  ({len(window)} frames)")
    time.sleep(1.0)
    for line in service.log().splitlines():
        if "relay.worker.url_input: paced" in line or "session ended" in line:
            print("  worker: " + line.split(": ", 1)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["first-frame", "drift", "live", "delete", "all"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--stall-at", type=float, default=20.0,
                        help="live: when segment downloads stall (s after the first frame)")
    parser.add_argument("--stall", type=float, default=4.0, help="live: for how long (s)")
    parser.add_argument("--publish-hls", metavar="PLAYLIST", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish_hls:  # the live HLS writer child: bench/latency.py's stamped source
        import json

        from bench.latency import publish

        print(json.dumps(publish(args.publish_hls, args.seconds, fmt="hls", options={
            "hls_time": "2", "hls_list_size": "6", "hls_flags": "delete_segments"})),
            flush=True)
        return

    from tests.media_http import serve_media

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "media"
        root.mkdir()
        if args.what != "live":
            started = time.monotonic()
            make_source(root / "source.mp4", args.seconds + 5)
            make_hls(root / "source.mp4", root / "hls")
            print(f"source: {args.seconds + 5:.0f} s of {W}x{H} {FPS} fps H.264 + AAC "
                  f"({(root / 'source.mp4').stat().st_size / 1e6:.1f} MB), made in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        (Path(tmp) / "run").mkdir()
        livekit, service = start_harness(Path(tmp) / "run")
        try:
            with serve_media(root) as media:
                if args.what in ("first-frame", "all"):
                    run_first_frame(livekit.url, service, media.base, args.runs)
                if args.what in ("delete", "all"):
                    run_delete(livekit.url, service, media.base, args.runs)
                if args.what in ("drift", "all"):
                    run_drift(livekit.url, service, media.base, args.seconds)
                if args.what in ("live", "all"):
                    run_live(livekit.url, service, media, min(args.seconds, 40.0),
                             args.stall_at, args.stall)
        finally:
            service.stop()
            livekit.stop()


if __name__ == "__main__":
    main()
