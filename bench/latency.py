"""Glass-to-glass latency, RTMP publisher -> service -> LiveKit room -> subscriber.

Each source frame carries its capture wall-clock time (ms, modulo 2^32) drawn into
the picture as black/white blocks (bench/_stamp.py); the subscriber reads the stamp
back from the decoded picture it receives, so the figure is what a viewer sees:
encode, RTMP, demux, decode, scale, the worker's own libx264 encode of each layer and
its RTP send, the SFU, the subscriber's jitter buffer and decode. Everything runs on
this machine, so the publisher's and the subscriber's wall clocks are the same clock.

  * the real service (child process, like tests/test_media_e2e.py) and a real
    livekit-server (tests/livekit.py) on 127.0.0.1; an RTMP ingress created with the
    official livekit-api client, with the chosen video preset (default: the default);
  * the publisher: a child process (a PyAV network output holds the GIL while it
    connects) that draws 1280x720 frames at 30 fps paced by the wall clock, encodes
    libx264 veryfast/zerolatency, no B-frames, GOP 60, 2.5 Mbit/s, yuv420p, plus a
    440 Hz AAC tone, and muxes FLV to rtmp://.../live/<stream key>. The audio is
    encoded ~100 ms ahead of the video: FFmpeg's interleaver holds a video packet
    until an audio packet at least as late is queued, and the AAC encoder's own delay
    would otherwise add ~45 ms of publisher-side latency to every video frame;
  * the subscriber: the livekit SDK (asyncio in a thread of this process) asks for
    the HIGH simulcast layer and reads the stamp from the I420 luma of every frame.

The first --warmup seconds after the first received frame are skipped (simulcast
ramp-up, first keyframe). Before any of that, the stamp is checked through a local
libx264 round trip at 1280x720 and at 320x180 (the lowest simulcast layer).

Run: .venv/bin/python bench/latency.py [--seconds 30] [--preset H264_720P_30FPS_3_LAYERS]
No assertions: it prints figures (targets on loopback: median <= 300 ms, p95 <= 500 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench import _stamp
from tests.service import session_workers

if TYPE_CHECKING:
    from tests.livekit import LiveKitServer
    from tests.service import ServiceProcess

W, H, FPS = 1280, 720, 30
VIDEO_BITRATE = 2_500_000
AUDIO_RATE, AUDIO_FRAME = 48_000, 1024
AUDIO_LEAD = 0.1  # default seconds of audio encoded ahead of the video (see the docstring)
MAX_PLAUSIBLE_MS = 10_000  # a stamp read as further away than this is a misread
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def latency_ms(stamp: int, received_ms: int) -> int:
    """received - stamp, both modulo 2^32 ms (the stamp only has 32 bits)."""
    diff = (received_ms - stamp) & 0xFFFFFFFF
    return diff - (1 << 32) if diff >= 1 << 31 else diff


# -- the source picture ---------------------------------------------------------------------

_GRADIENT = ((np.arange(W)[None, :] // 4 + np.arange(H)[:, None] // 4) % 200 + 30
             ).astype(np.uint8)


def picture(index: int, stamp: int) -> np.ndarray:
    """A yuv420p frame (as one (H*3/2) x W array): moving content, then the stamp.

    The moving gradient and box make the encoder do real work and the stream look like
    video rather than a still, so no stage can get away with skipping frames.
    """
    yuv = np.empty((H * 3 // 2, W), np.uint8)
    y = yuv[:H]
    y[:] = np.roll(_GRADIENT, 6 * index, axis=1)
    bx = (index * 12) % (W - 160)
    y[480:640, bx:bx + 160] = 235
    _stamp.draw(y, stamp)
    yuv[H:] = 128
    return yuv


# -- local round trip -------------------------------------------------------------------------


def round_trip(frames: int = 30) -> str:
    """Encode stamped frames with libx264, decode them, read the stamps back.

    Once at 1280x720 (2.5 Mbit/s) and once scaled to 320x180 (bilinear, like the
    worker) at 150 kbit/s, harder than the default preset's LOW layer (320x180 at
    237 kbit/s). Also reports how many
    packets the decoder needed before the first picture (decoder delay).
    """
    import av
    from av.video.reformatter import VideoReformatter

    out = []
    for width, height, bitrate in ((W, H, VIDEO_BITRATE), (320, 180, 150_000)):
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
        enc.time_base, enc.framerate = Fraction(1, FPS), Fraction(FPS)
        enc.bit_rate, enc.gop_size, enc.max_b_frames = bitrate, 60, 0
        enc.options = {"preset": "veryfast", "tune": "zerolatency"}
        dec = av.CodecContext.create("h264", "r")
        dec.thread_type = "SLICE"
        scaler = VideoReformatter()
        stamps, good, delay = [], 0, None
        for i in range(frames):
            stamp = (now_ms() + i * 33) & 0xFFFFFFFF
            stamps.append(stamp)
            frame = av.VideoFrame.from_ndarray(picture(i, stamp), format="yuv420p")
            if (width, height) != (W, H):
                frame = scaler.reformat(frame, width=width, height=height, format="yuv420p",
                                        interpolation="BILINEAR")
            frame.pts = i
            for packet in enc.encode(frame):
                for decoded in dec.decode(packet):
                    if delay is None:
                        delay = i
                    luma = decoded.to_ndarray()[:height]
                    good += _stamp.read(luma) in stamps
        out.append(f"{width}x{height}@{bitrate // 1000}k {good}/{frames} read back, "
                   f"first picture after {delay if delay is not None else '?'} frames in")
    return "; ".join(out)


# -- the publisher (a child process) ----------------------------------------------------------


def publish(url: str, seconds: float, audio_lead: float = AUDIO_LEAD, fmt: str = "flv",
            options: dict[str, str] | None = None) -> dict[str, Any]:
    """Publish stamped frames to `url` (FLV, or `fmt` with its muxer `options`) for
    `seconds`, paced by the wall clock."""
    import av

    container = av.open(url, "w", format=fmt, options=options or {"flush_packets": "1"})
    video = container.add_stream("libx264", rate=FPS,
                                 options={"preset": "veryfast", "tune": "zerolatency"})
    video.width, video.height, video.pix_fmt = W, H, "yuv420p"
    video.bit_rate = VIDEO_BITRATE
    video.codec_context.gop_size, video.codec_context.max_b_frames = 60, 0
    audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
    audio.bit_rate = 128_000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(AUDIO_RATE) / AUDIO_RATE)
            ).astype(np.float32)
    samples = 0
    sent = late = 0
    work: list[float] = []
    start = time.monotonic()
    index = 0
    while (now := time.monotonic()) < start + seconds:
        due = start + index / FPS
        if due > now:
            time.sleep(due - now)
        elif now - due > 1 / FPS:  # behind by more than a frame: skip to the present
            skipped = int((now - start) * FPS) - index
            late += skipped
            index += skipped
        began = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(picture(index, now_ms() & 0xFFFFFFFF),
                                           format="yuv420p")
        frame.pts, frame.time_base = index, Fraction(1, FPS)
        while samples < (index / FPS + audio_lead) * AUDIO_RATE:
            at = samples % AUDIO_RATE
            chunk = np.roll(tone, -at)[:AUDIO_FRAME][None, :]
            sound = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = AUDIO_RATE, samples
            sound.time_base = Fraction(1, AUDIO_RATE)
            for packet in audio.encode(sound):
                container.mux(packet)
            samples += AUDIO_FRAME
        for packet in video.encode(frame):
            container.mux(packet)
        work.append((time.perf_counter() - began) * 1000)
        sent += 1
        index += 1
    for stream in (video, audio):
        for packet in stream.encode(None):
            container.mux(packet)
    container.close()
    return {"sent": sent, "late_skipped": late,
            "draw_encode_mux_ms_median": round(float(np.median(work)), 1) if work else 0,
            "draw_encode_mux_ms_p95": round(float(np.percentile(work, 95)), 1) if work else 0}


# -- the subscriber -------------------------------------------------------------------------


@dataclass
class Received:
    at_ms: int
    stamp: int | None
    width: int
    height: int


@dataclass
class Subscriber:
    """Joins the room in its own asyncio thread and records every video frame."""

    url: str
    room: str
    warmup: float
    frames: list[Received] = field(default_factory=list)
    stats: list[dict[str, float]] = field(default_factory=list)  # [at warm-up end, at end]
    connected: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        """Run in a daemon thread; return it once the room is joined (or raise)."""
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        self.connected.wait(30)
        if self.error:
            raise self.error
        return thread

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.connected.set()

    async def _main(self) -> None:
        from livekit import rtc

        from tests.livekit import subscriber_token

        room = rtc.Room()
        tracks: list[Any] = []
        tasks: list[asyncio.Task[None]] = []

        @room.on("track_subscribed")
        def subscribed(track: Any, pub: Any, participant: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                if pub.simulcasted:  # a passthrough track has one layer only
                    pub.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
                tracks.append(track)
                tasks.append(asyncio.ensure_future(self._video(track)))

        await room.connect(self.url, subscriber_token(self.room, "latency-viewer"))
        self.connected.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
            if (tracks and not self.stats and self.frames
                    and now_ms() >= self.frames[0].at_ms + self.warmup * 1000):
                self.stats.append(await inbound_stats(tracks[0]))
        if tracks:
            self.stats.append(await inbound_stats(tracks[0]))
        await room.disconnect()
        for task in tasks:
            task.cancel()

    async def _video(self, track: Any) -> None:
        from livekit import rtc

        async for event in rtc.VideoStream(track, format=rtc.VideoBufferType.I420):
            at = now_ms()  # before reading the picture: reading is our cost, not theirs
            frame = event.frame
            luma = np.frombuffer(frame.data, np.uint8, count=frame.width * frame.height)
            stamp = _stamp.read(luma.reshape(frame.height, frame.width))
            self.frames.append(Received(at, stamp, frame.width, frame.height))


async def inbound_stats(track: Any) -> dict[str, float]:
    """The cumulative inbound-rtp counters libwebrtc keeps for a received track."""
    for stat in await track.get_stats():
        if stat.WhichOneof("stats") == "inbound_rtp":
            s = stat.inbound_rtp.inbound
            return {"jitter_buffer_delay": s.jitter_buffer_delay,
                    "jitter_buffer_target_delay": s.jitter_buffer_target_delay,
                    "jitter_buffer_minimum_delay": s.jitter_buffer_minimum_delay,
                    "jitter_buffer_emitted_count": s.jitter_buffer_emitted_count,
                    "total_decode_time": s.total_decode_time,
                    "total_processing_delay": s.total_processing_delay,
                    "total_assembly_time": s.total_assembly_time,
                    "frames_decoded": s.frames_decoded,
                    "frames_dropped": s.frames_dropped, "freeze_count": s.freeze_count,
                    "nack_count": s.nack_count, "pli_count": s.pli_count}
    return {}


# -- CPU accounting ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


# -- the run ----------------------------------------------------------------------------------


def start_harness(workdir: Path, **config: Any) -> tuple[LiveKitServer, ServiceProcess]:
    """A livekit-server and the service (RTMP on a free port) running under `workdir`.

    Both are started; the caller stops them. If the service does not start, both are
    stopped before the error propagates. `config`: more service settings.
    """
    from tests.livekit import API_KEY, API_SECRET, LiveKitServer
    from tests.service import ServiceProcess

    (workdir / "livekit").mkdir()
    (workdir / "service").mkdir()
    livekit = LiveKitServer(workdir / "livekit")
    livekit.start()
    service = ServiceProcess(workdir / "service", api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url, rtmp_port=0, **config)
    try:
        service.start()
    except BaseException:
        service.stop()
        livekit.stop()
        raise
    return livekit, service


def create_ingress(service: Any, room: str, preset: int | None, input_type: int | None = None,
                   **fields: Any) -> Any:
    """An ingress (RTMP unless `input_type` says otherwise) into `room`, through livekit-api."""
    from livekit.protocol import ingress as pb
    from livekit.protocol import models

    video = pb.IngressVideoOptions(name="camera", source=models.TrackSource.CAMERA)
    if preset is not None:
        video.preset = preset  # type: ignore[assignment]

    async def call(client: Any) -> Any:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT if input_type is None else input_type,
            name="latency", room_name=room, participant_identity="latency-source",
            video=video, audio=pb.IngressAudioOptions(name="microphone",
                                                      source=models.TrackSource.MICROPHONE),
            **fields))

    return service.api(call)


def describe(values: list[int]) -> str:
    a = np.array(values)
    return (f"median {np.median(a):.0f} ms, p95 {np.percentile(a, 95):.0f} ms, "
            f"min {a.min()} ms, max {a.max()} ms, mean {a.mean():.0f} ms")


def per_frame_ms(stats: list[dict[str, float]], total: str, count: str) -> str:
    """Average of a cumulative libwebrtc counter over the measured window, in ms/frame."""
    if len(stats) < 2 or not stats[0] or not stats[1]:
        return "?"
    frames = stats[1][count] - stats[0][count]
    return f"{(stats[1][total] - stats[0][total]) / frames * 1000:.1f}" if frames else "?"


def print_subscriber_stats(stats: list[dict[str, float]]) -> None:
    """The subscriber's libwebrtc jitter buffer, decode and loss figures over the window."""
    emitted = "jitter_buffer_emitted_count"
    print(f"subscriber libwebrtc, per frame over the window: jitter buffer "
          f"{per_frame_ms(stats, 'jitter_buffer_delay', emitted)} ms "
          f"(target {per_frame_ms(stats, 'jitter_buffer_target_delay', emitted)}"
          f" ms), decode {per_frame_ms(stats, 'total_decode_time', 'frames_decoded')} ms, "
          f"first packet -> decoded "
          f"{per_frame_ms(stats, 'total_processing_delay', 'frames_decoded')} ms")
    if len(stats) == 2 and stats[0] and stats[1]:
        print("subscriber counters over the window: " + ", ".join(
            f"{k} {stats[1][k] - stats[0][k]:g}" for k in (
                "frames_decoded", "frames_dropped", "freeze_count", "nack_count",
                "pli_count")))


def window_latencies(frames: list[Received], warmup: float, seconds: float) -> list[int]:
    """The latencies (ms) read in the measured window; prints its counts and sizes."""
    begin = frames[0].at_ms + warmup * 1000
    window = [f for f in frames if begin <= f.at_ms < begin + seconds * 1000]
    read = [(f, latency_ms(f.stamp, f.at_ms)) for f in window if f.stamp is not None]
    good = [(f, ms) for f, ms in read if 0 <= ms <= MAX_PLAUSIBLE_MS]
    rejected = len(window) - len(good)
    unique = len({f.stamp for f, _ in good})
    sizes = Counter(f"{f.width}x{f.height}" for f in window)
    print(f"received {len(frames)} frames; measured {seconds:g} s after a "
          f"{warmup:g} s warm-up: {len(window)} frames ({len(window) / seconds:.1f}"
          f" fps), {len(good)} stamps read ({unique} distinct), {rejected} rejected")
    print("sizes in the window: " + ", ".join(f"{k} x{v}" for k, v in sizes.most_common()))
    return [ms for _, ms in good]


def run(args: argparse.Namespace) -> None:
    from livekit.protocol import ingress as pb

    from relay.worker.layers import DEFAULT_VIDEO_PRESET

    preset = (pb.IngressVideoEncodingPreset.Value(args.preset) if args.preset
              else DEFAULT_VIDEO_PRESET)
    preset_name = pb.IngressVideoEncodingPreset.Name(preset)
    print(f"stamp round trip (local libx264): {round_trip()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        livekit, service = start_harness(Path(tmp))
        publisher: subprocess.Popen[str] | None = None
        try:
            room = "bench-latency"
            info = create_ingress(service, room, preset if args.preset else None)
            viewer = Subscriber(livekit.url, room, args.warmup)
            thread = viewer.start()
            url = f"rtmp://{service.rtmp_addr}/live/{info.stream_key}"
            publish_for = args.seconds + args.warmup + 3  # + connect, publish, first frame
            publisher = subprocess.Popen(
                [sys.executable, __file__, "--publish", url, "--seconds", str(publish_for),
                 "--audio-lead", str(args.audio_lead)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert service.proc is not None and livekit.proc is not None
            pids = {"service": service.proc.pid, "livekit-server": livekit.proc.pid,
                    "publisher": publisher.pid}
            # CPU over the measured window: from the end of the warm-up to its end
            while not viewer.frames and publisher.poll() is None:
                time.sleep(0.05)
            time.sleep(args.warmup)
            workers = session_workers(service.proc.pid)
            pids.update({f"worker{'' if i == 0 else i}": w for i, w in enumerate(workers)})
            cpu0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
            time.sleep(args.seconds)
            cpu1, t1 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
            out, err = publisher.communicate(timeout=publish_for + 30)
            time.sleep(0.5)
            viewer.stop.set()
            thread.join(15)
        finally:
            if publisher is not None and publisher.poll() is None:
                publisher.kill()
            service.stop()
            livekit.stop()
        sent = json.loads(out.strip().splitlines()[-1]) if publisher.returncode == 0 else {}
        if publisher.returncode != 0:
            print(f"publisher exited {publisher.returncode}: {err.strip()[-2000:]}")
        dropped_log = [line for line in service.log().splitlines() if "dropp" in line]

    if viewer.error:
        print(f"subscriber failed: {viewer.error!r}")
    if not viewer.frames:
        print("no video frame reached the subscriber")
        return
    print(f"preset {preset_name}; publisher libx264 veryfast zerolatency {W}x{H} {FPS} fps "
          f"{VIDEO_BITRATE // 1000}k GOP 60 no B-frames + AAC 48 kHz mono, "
          f"{args.audio_lead * 1000:g} ms ahead")
    good = window_latencies(viewer.frames, args.warmup, args.seconds)
    if good:
        print(f"GLASS-TO-GLASS: {describe(good)}")
        median, p95 = float(np.median(good)), float(np.percentile(good, 95))
        print(f"targets: median <= 300 ms {'met' if median <= 300 else 'MISSED'}, "
              f"p95 <= 500 ms {'met' if p95 <= 500 else 'MISSED'}")
    print_subscriber_stats(viewer.stats)
    print(f"publisher: {sent}")
    span = t1 - t0
    print("CPU over the window (% of one core): " + ", ".join(
        f"{k} {(cpu1[k] - cpu0[k]) / span * 100:.0f}" for k in pids))
    if dropped_log:
        print("service log mentions drops: " + " | ".join(dropped_log[-3:]))


def run_options(description: str) -> argparse.ArgumentParser:
    """The options every glass-to-glass run takes: --seconds, --warmup, --preset."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="measured seconds after the warm-up (default 30)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds after the first received frame that are not measured")
    parser.add_argument("--preset", default="",
                        help="IngressVideoEncodingPreset name (default: the service's default)")
    return parser


def print_command() -> None:
    """Echo the command line first, so a pasted output says how it was made."""
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else (
        sys.executable)
    print("$ " + shlex.join([exe, *sys.argv]), flush=True)


def main() -> None:
    parser = run_options(__doc__.split("\n", 1)[0])
    parser.add_argument("--audio-lead", type=float, default=AUDIO_LEAD,
                        help="seconds of audio the publisher encodes ahead of the video "
                             f"(default {AUDIO_LEAD}; 0 shows what FFmpeg's interleaving costs)")
    parser.add_argument("--publish", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:  # the publisher child
        print(json.dumps(publish(args.publish, args.seconds, args.audio_lead)), flush=True)
        return
    print_command()
    run(args)


if __name__ == "__main__":
    main()
