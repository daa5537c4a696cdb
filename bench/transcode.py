"""CPU per second of media of the media pipeline, beside ffmpeg doing the same work.

A 1920x1080 30 fps H.264 + AAC source (10 s, made once with ffmpeg, looped for
--seconds) is fed, paced in real time, to a session worker (relay/worker/main.py)
that publishes into a real livekit-server with its own publisher (relay/worker/room):
it decodes the video once (PyAV, slice threads), scales it once per layer (bilinear,
each layer from the one above) and encodes each of the preset's layers (`fit_layers`
for 1920x1080: their sizes and bitrates, at the preset's frame rate) with its own
libx264 encoder (relay/worker/encode.py: veryfast, zerolatency, baseline, no
B-frames, a keyframe every 2 s, maxrate = bufsize = the layer bitrate, one thread per
encoder, a picture's layers one after the other in one thread while the next picture
decodes), and turns the AAC into 20 ms Opus frames at 96 kbit/s stereo.
Its CPU time (all its threads) is read from /proc from 2 s of media on (after the
room join and the first frames) to the end.

Beside it, Debian's ffmpeg does the same media work in one process: decode (slice
threads), split, bilinear scale to each of the same layers, libx264 with the same
settings (-threads 1 per encoder), and AAC decode -> libopus 96k stereo at 48 kHz.
It runs twice: into null outputs (the media work alone: the worker's figure also
pays for RTP, SRTP and the room link), and sending what it encodes the way the
worker does: each layer and the audio as its own SRTP stream (ffmpeg's RTP muxer,
AES_CM_128_HMAC_SHA1_80, packets of at most 1,340 bytes) over UDP to 127.0.0.1,
where this process reads them as an SFU would. It runs paced (-re) like the worker,
because a live pipeline that sleeps between frames pays for wake-ups and cold
caches that a flat-out run does not, and what is compared is CPU per second of
media; its CPU is read from /proc over the same media window (media time from its
-progress reports). Target: ours/ffmpeg <= 1.15.

Each preset runs --rounds rounds; a round runs ours at the same time as ffmpeg into
null outputs, then ours at the same time as ffmpeg sending SRTP, and the figure is the
median of the rounds' ratios. Side by side in time, both sides pay the machine's
speed of the same seconds: this KVM guest's speed drifts 10-20% within minutes,
which made ratios of runs one after the other (--apart) spread from 1.05 to 1.29
in one hour, where side by side they spread by +/- 0.03. The two processes share
the 2 cores then (about 1.1 of them busy, with the SFU and this process).

Run: .venv/bin/python bench/transcode.py [--seconds 20] [--rounds 3] [--apart]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import secrets
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
from livekit.protocol import ingress as pb
from livekit.protocol import models

import rtmp
from bench.rtmp import cpu_seconds, encode
from relay.service.ingest.tokens import participant_token
from relay.service.ingest.worker_client import open_session_worker
from relay.wire import Start
from relay.worker.encode import KEYFRAME_SECONDS, X264_PRESET
from relay.worker.layers import LayerSpec, audio_encoding, fit_layers, video_encoding
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, Seen, watch

PRESETS = {
    "H264_720P_30FPS_3_LAYERS (default)": pb.IngressVideoEncodingPreset.H264_720P_30FPS_3_LAYERS,
    "H264_1080P_30FPS_3_LAYERS": pb.IngressVideoEncodingPreset.H264_1080P_30FPS_3_LAYERS,
}
SOURCE = (1920, 1080)
SOURCE_FPS = 30.0  # bench/rtmp.py's encode()
WARMUP = 2.0  # media seconds not counted, on both sides (room join, encoders opening)
TARGET = 1.15  # ours / ffmpeg
SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"  # what the worker's DTLS-SRTP settles on with livekit
PACKET_SIZE = 1340  # bytes of a protected packet: the worker's are at most ~1,340


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

    The worker encodes every layer whether or not anyone subscribes; the viewer, who
    watches throughout, shows that the media really reached the room. It selects the
    LOW layer: decoding the top layer (1080p for one preset) would take a share of the
    2 cores from the worker during its run and not during ffmpeg's.
    """
    info = pb.IngressInfo(ingress_id="IN_bench", room_name=f"bench-{preset}",
                          participant_identity="bench", input_type=pb.IngressInput.RTMP_INPUT,
                          video=pb.IngressVideoOptions(preset=preset))
    start = Start(livekit.url, participant_token(API_KEY, API_SECRET, info, "RT_bench"),
                  info.SerializeToString())
    span = max(e.dts for e in events) + 33
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, info.room_name, seconds + 1.0, quality=models.VideoQuality.LOW)))
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
                if cpu0 is None and at >= WARMUP:
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
    if isinstance(event, rtmp.VideoFrame | rtmp.VideoConfig):
        return dataclasses.replace(event, dts=event.dts + offset, pts=event.pts + offset)
    return dataclasses.replace(event, dts=event.dts + offset)


def ffmpeg_command(flv: Path, layers: tuple[LayerSpec, ...], fps: float,
                   seconds: float, ports: list[int] | None = None) -> list[str]:
    """ffmpeg doing the worker's work: decode once, scale and encode each layer the way
    relay/worker/encode.py does, AAC -> Opus; paced, the source looped for `seconds`.
    With `ports` (one per layer, then the audio's) each stream is sent as SRTP to
    127.0.0.1 on its port; without, into null outputs."""
    audio = audio_encoding(None)  # the default: what the worker uses for these ingresses
    keyint = str(max(1, round(fps * KEYFRAME_SECONDS)))
    # the worker's frame-rate limiter runs once, before the layers
    limit = "" if fps == SOURCE_FPS else f"fps={fps:g},"
    graph = f"[0:v]{limit}split={len(layers)}" + "".join(
        f"[s{i}]" for i in range(len(layers))) + ";" + ";".join(
        f"[s{i}]scale={layer.width}:{layer.height}:flags=bilinear[o{i}]"
        for i, layer in enumerate(layers))
    key = base64.b64encode(secrets.token_bytes(30)).decode()

    def output(index: int) -> list[str]:
        if ports is None:
            return ["-f", "null", os.devnull]
        return ["-f", "rtp", "-srtp_out_suite", SRTP_SUITE, "-srtp_out_params", key,
                f"srtp://127.0.0.1:{ports[index]}?pkt_size={PACKET_SIZE}"]

    # -filter_complex_threads 1: the worker's scaling (swscale per layer) is one thread
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-nostats",
           "-progress", "pipe:1", "-stats_period", "0.5", "-filter_complex_threads", "1",
           "-re", "-stream_loop", "-1", "-t", f"{seconds:g}", "-thread_type", "slice",
           "-i", str(flv), "-filter_complex", graph]
    for i, layer in enumerate(layers):
        rate = str(layer.bitrate)
        cmd += ["-map", f"[o{i}]", "-c:v", "libx264", "-threads", "1",
                "-preset", X264_PRESET, "-tune", "zerolatency", "-profile:v", "baseline",
                "-bf", "0", "-g", keyint, "-keyint_min", keyint, "-sc_threshold", "0",
                "-b:v", rate, "-maxrate", rate, "-bufsize", rate, *output(i)]
    cmd += ["-map", "0:a", "-c:a", "libopus", "-b:a", str(audio.bitrate),
            "-ar", str(audio.sample_rate), "-ac", str(audio.channels), "-sample_fmt", "s16",
            "-application", "audio", "-frame_duration", str(audio.frame_ms),
            *output(len(layers))]
    return cmd


@contextmanager
def udp_sinks(count: int) -> Iterator[list[int]]:
    """`count` RTP ports on 127.0.0.1 (each with its RTCP port, the next one) whose
    datagrams a thread reads and drops, as an SFU's sockets would take them."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    while len(ports) < count:
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp.bind(("127.0.0.1", rtp.getsockname()[1] + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        sockets += [rtp, rtcp]
        ports.append(rtp.getsockname()[1])
    stop = threading.Event()

    def drain() -> None:
        with selectors.DefaultSelector() as selector:
            for sock in sockets:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select(0.2):
                    try:
                        while key.fileobj.recv(2048):  # type: ignore[union-attr]
                            pass
                    except BlockingIOError:
                        pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield ports
    finally:
        stop.set()
        reader.join()
        for sock in sockets:
            sock.close()


def progress_media_seconds(line: str) -> float | None:
    """The media time ffmpeg has output, if `line` of its -progress output gives it."""
    key, _, value = line.strip().partition("=")
    return int(value) / 1e6 if key == "out_time_us" and value.isdigit() else None


def run_ffmpeg(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, media seconds) of `cmd` from WARMUP s of media on to its last report.

    ffmpeg's -progress blocks (every 0.5 s) give the media time it has output; the
    process' CPU time is read from /proc as each block arrives.
    """
    samples: list[tuple[float, float]] = []  # (media s, CPU s)
    media: float | None = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if (seconds := progress_media_seconds(line)) is not None:
                media = seconds
            elif line.strip() == "progress=continue" and media is not None:
                samples.append((media, cpu_seconds(proc.pid)))
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    window = [s for s in samples if s[0] >= WARMUP]
    if len(window) < 2:
        raise RuntimeError(f"ffmpeg reported too little progress: {samples}")
    (media0, cpu0), (media1, cpu1) = window[0], window[-1]
    return cpu1 - cpu0, media1 - media0


def describe(layers: tuple[LayerSpec, ...], fps: float) -> str:
    return ", ".join(f"{layer.width}x{layer.height} {layer.bitrate / 1000:,.0f} kbit/s"
                     for layer in layers) + f" at {fps:g} fps"


def versions() -> str:
    """Both sides' FFmpeg (each links its own libx264: PyAV's wheel, Debian's package)."""
    ffmpeg = subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True,
                            text=True).stdout.split(" Copyright", 1)[0]
    libavcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    return f"ours: PyAV {av.__version__} (libavcodec {libavcodec}); reference: {ffmpeg}"


@contextmanager
def source_and_server(workdir: Path, make: Callable[[Path], object] | None = None
                      ) -> Iterator[tuple[Path, list[rtmp.Event], LiveKitServer]]:
    """The 10 s 1920x1080 30 fps source (FLV file, its media events) and a running
    livekit-server, for benchmarks that feed session workers (also bench/layers.py).
    `make(path)` writes another source instead of bench/rtmp.py's."""
    flv = workdir / "source.flv"
    if make is None:
        encode(flv, "4M", 10)
    else:
        make(flv)
    events = media_events(flv)
    livekit = LiveKitServer(workdir)
    livekit.start()
    try:
        yield flv, events, livekit
    finally:
        livekit.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="media seconds per run, on each side (default 20)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per preset, each running ours beside each of "
                             "ffmpeg's two runs (default 3; the ratios' median is the "
                             "figure)")
    parser.add_argument("--apart", action="store_true",
                        help="run ours before ffmpeg's two runs, not beside them")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    print(versions())
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        with source_and_server(Path(tmp)) as (flv, events, livekit):
            for name, preset in PRESETS.items():
                encoding = video_encoding(pb.IngressVideoOptions(preset=preset))
                layers = fit_layers(encoding, *SOURCE)
                print(f"{name}: layers {describe(layers, encoding.frame_rate)}")
                run = run_round_apart if args.apart else run_round_together
                rounds = [run(flv, events, livekit, preset, layers, encoding.frame_rate,
                              args.seconds) for _ in range(args.rounds)]
                table.append((name, rounds))
        time.sleep(0.1)
    print()
    print(f"{'preset':36} {'ours':>5} {'null':>5} {'SRTP':>5}  ratio ours/ffmpeg "
          "null, SRTP: per round -> median   (CPU s per media s: medians)")
    for name, rounds in table:
        ours, null, srtp = (statistics.median(r[i] for r in rounds) for i in range(3))
        null_ratios = [r[0] / r[1] for r in rounds]
        srtp_ratios = [r[3] / r[2] for r in rounds]
        print(f"{name:36} {ours:5.2f} {null:5.2f} {srtp:5.2f}  "
              f"null {' '.join(f'{x:.2f}' for x in null_ratios)} -> "
              f"{statistics.median(null_ratios):.2f}; SRTP "
              f"{' '.join(f'{x:.2f}' for x in srtp_ratios)} -> "
              f"{statistics.median(srtp_ratios):.2f} (target <= {TARGET:.2f})")


Round = tuple[float, float, float, float]  # CPU s per media s: ours, null, SRTP, ours


def ffmpeg_runs(flv: Path, layers: tuple[LayerSpec, ...], fps: float, seconds: float
                ) -> Iterator[tuple[str, list[str]]]:
    """ffmpeg's two runs of a round, each (label, command): into null outputs, then
    sending SRTP to UDP sinks that stay open while the caller runs the command."""
    for label, sending in (("null outputs", False), ("sending SRTP", True)):
        with udp_sinks(len(layers) + 1 if sending else 0) as ports:
            yield label, ffmpeg_command(flv, layers, fps, seconds, ports if sending else None)


def run_round_apart(flv: Path, events: list[rtmp.Event], livekit: LiveKitServer,
                    preset: int, layers: tuple[LayerSpec, ...], fps: float,
                    seconds: float) -> Round:
    """One round, the sides one after the other: (ours, ffmpeg into null outputs,
    ffmpeg sending SRTP, ours again), CPU s per media s. The machine's speed drifts
    (a KVM guest): rounds alternate the sides so the drift falls on both."""
    cpu, media, got = trio.run(run_worker, livekit, events, preset, seconds)
    ours = cpu / media
    print(f"  ours: {ours:.2f} CPU s per media s ({cpu:.1f} s over {media:.1f} s of media); "
          f"the viewer got {dict(got.video_sizes)} at {got.fps():.1f} fps")
    theirs = []
    for label, cmd in ffmpeg_runs(flv, layers, fps, seconds):
        f_cpu, f_media = run_ffmpeg(cmd)
        theirs.append(f_cpu / f_media)
        print(f"  ffmpeg, {label}: {f_cpu / f_media:.2f} ({f_cpu:.1f} s over {f_media:.1f} s"
              f" of media): ratio {ours / theirs[-1]:.2f}")
        print(f"    command: {shlex.join(cmd)}", flush=True)
    return ours, theirs[0], theirs[1], ours


def run_round_together(flv: Path, events: list[rtmp.Event], livekit: LiveKitServer,
                       preset: int, layers: tuple[LayerSpec, ...], fps: float,
                       seconds: float) -> Round:
    """One round, ours at the same time as each of ffmpeg's two runs: (ours beside
    null, null, SRTP, ours beside SRTP), CPU s per media s."""
    figures: list[float] = []
    for label, cmd in ffmpeg_runs(flv, layers, fps, seconds):
        (cpu, media, got), (f_cpu, f_media) = trio.run(
            both, livekit, events, preset, seconds, cmd)
        ours, theirs = cpu / media, f_cpu / f_media
        figures += [ours, theirs]
        print(f"  together with ffmpeg, {label}: ours {ours:.2f} ({cpu:.1f} s over "
              f"{media:.1f} s), ffmpeg {theirs:.2f} ({f_cpu:.1f} s over {f_media:.1f} s): "
              f"ratio {ours / theirs:.2f}; the viewer got {dict(got.video_sizes)}")
        print(f"    command: {shlex.join(cmd)}", flush=True)
    return figures[0], figures[1], figures[3], figures[2]


async def both(livekit: LiveKitServer, events: list[rtmp.Event], preset: int,
               seconds: float, cmd: list[str]
               ) -> tuple[tuple[float, float, Seen], tuple[float, float]]:
    """Our worker and ffmpeg's `cmd`, started together."""
    results: dict[str, tuple] = {}

    async def theirs() -> None:
        results["ffmpeg"] = await trio.to_thread.run_sync(run_ffmpeg, cmd)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs)
        results["ours"] = await run_worker(livekit, events, preset, seconds)
    return results["ours"], results["ffmpeg"]


if __name__ == "__main__":
    main()
