"""WHIP benchmarks (issue #5): glass-to-glass latency, and concurrent passthrough sessions.

Both run the real service (child process, `rtc_config.node_ip: 127.0.0.1`) and a real
livekit-server on 127.0.0.1 (bench/latency.py's harness), with WHIP ingresses created
through the official livekit-api client. The publishers are aiortc WHIP clients
(tests/whip_client.py's publish flow: POST the offer, DELETE at the end).

`latency`: the method of bench/latency.py. A publisher child process sends 1280x720
30 fps pictures with the capture wall-clock ms drawn in (bench/_stamp.py), encoded by
aiortc itself (H.264: libx264 through PyAV, preset medium + zerolatency, Baseline,
aiortc's REMB-driven bitrate; or VP8: libvpx), plus aiortc's Opus tone. The subscriber
(bench/latency.py's, HIGH layer) reads the stamps back. Two ingresses in turn: WHIP
passthrough (the default) and `enable_transcoding=True` (default preset, simulcast).

`sessions`: how many passthrough sessions stay real time. H.264 1280x720 30 fps
1.5 Mbit/s (libx264 baseline, no B-frames, GOP 60) is encoded once by Debian ffmpeg;
every publisher (all in this process, one asyncio loop) sends its access units as
`av.Packet`s, which aiortc packetises without encoding, looping the file with
increasing timestamps, plus aiortc's Opus tone (or no audio). Per step a fresh set of
sessions is started one after the other, run for a warm-up and a measured window, then
DELETEd: the window gives the workers' CPU and RSS, the session-end log lines ("N in,
M sent", M: frames the worker sent into the room) compared with what each publisher
sent say whether it kept up.

Run: .venv/bin/python bench/whip.py latency [--seconds 30] [--codec H264|VP8]
     .venv/bin/python bench/whip.py sessions [--steps 1,5,10,15,20,25,30] [--no-audio]
No assertions: it prints figures (targets: passthrough median <= 150 ms on loopback,
>= 20 passthrough sessions at 720p30 1.5 Mbit/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
from aiortc import MediaStreamTrack

from bench.latency import (
    FPS,
    H,
    Subscriber,
    W,
    cpu_seconds,
    create_ingress,
    describe,
    now_ms,
    picture,
    print_command,
    print_subscriber_stats,
    start_harness,
    window_latencies,
)
from bench.sessions import memory_bytes
from tests import whip_client
from tests.service import session_workers

if TYPE_CHECKING:
    from tests.service import ServiceProcess

RTP_CLOCK = 90_000
SOURCE_BITRATE = "1500k"
REAL_TIME = 0.95  # a session keeps up if this share of the frames sent reached the room
ENDED = re.compile(r"worker\[(\d+)\].*WHIP session ended: (.*) \(video frames: (\d+) in, "
                   r"(\d+) sent, (\d+) dropped\)")
WHIP_RTC = {"rtc_config": {"node_ip": "127.0.0.1"}}


def load() -> str:
    """The 1/5/15 min load average: other work on the machine (fuzzers, builds)."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def create_whip(service: ServiceProcess, room: str, transcoding: bool | None) -> Any:
    """A WHIP ingress into `room`; `transcoding` None leaves the WHIP default (off)."""
    from livekit.protocol import ingress as pb

    fields = {} if transcoding is None else {"enable_transcoding": transcoding}
    return create_ingress(service, room, None, pb.IngressInput.WHIP_INPUT, **fields)


# -- latency ----------------------------------------------------------------------------------


class StampedPictureTrack(MediaStreamTrack):
    """bench/latency.py's moving picture with the capture time stamped in, paced at FPS."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.index = self.sent = self.late = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        now = time.monotonic()
        due = self._start + self.index / FPS
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1 / FPS:  # behind by more than a frame: skip to the present
            skipped = int((now - self._start) * FPS) - self.index
            self.late += skipped
            self.index += skipped
        frame = av.VideoFrame.from_ndarray(picture(self.index, now_ms() & 0xFFFFFFFF),
                                           format="yuv420p")
        frame.pts, frame.time_base = self.index * RTP_CLOCK // FPS, Fraction(1, RTP_CLOCK)
        self.index += 1
        self.sent += 1
        return frame


def publish_stamped(url: str, seconds: float, codec: str) -> dict[str, Any]:
    """The publisher child: stamped pictures + tone over WHIP for `seconds`."""
    track = StampedPictureTrack()
    result = asyncio.run(whip_client.publish(url, seconds=seconds, video_codec=codec,
                                             video_track=track))
    return {"status": result.status, "connected": result.connected,
            "error": result.error, "delete": result.delete_status, "sent": track.sent,
            "late_skipped": track.late, "keyframe_requests": result.keyframe_requests}


def latency_once(service: ServiceProcess, livekit_url: str, livekit_pid: int,
                 transcoding: bool, args: argparse.Namespace) -> float | None:
    """One glass-to-glass run through one WHIP ingress; the median (ms) or None."""
    room = f"whip-latency-{'transcoding' if transcoding else 'passthrough'}"
    info = create_whip(service, room, True if transcoding else None)
    viewer = Subscriber(livekit_url, room, args.warmup)
    thread = viewer.start()
    url = f"{service.url}/w/{info.stream_key}"
    publish_for = args.seconds + args.warmup + 3
    publisher = subprocess.Popen(
        [sys.executable, __file__, "publish", url, "--seconds", str(publish_for),
         "--codec", args.codec], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert service.proc is not None
        while not viewer.frames and publisher.poll() is None:
            time.sleep(0.05)
        time.sleep(args.warmup)
        pids = {"service": service.proc.pid, "livekit-server": livekit_pid,
                "publisher": publisher.pid}
        pids.update({f"worker{'' if i == 0 else i}": w
                     for i, w in enumerate(session_workers(service.proc.pid))})
        cpu0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        out, err = publisher.communicate(timeout=publish_for + 30)
    finally:
        if publisher.poll() is None:
            publisher.kill()
        time.sleep(0.5)
        viewer.stop.set()
        thread.join(15)
    mode = "transcoding (enable_transcoding=True, default preset)" if transcoding else (
        "passthrough (WHIP default)")
    print(f"\n== {mode}; aiortc {args.codec} 1280x720 {FPS} fps + Opus; {load()}")
    if publisher.returncode != 0:
        print(f"publisher exited {publisher.returncode}: {err.strip()[-2000:]}")
    else:
        print(f"publisher: {out.strip().splitlines()[-1]}")
    if viewer.error:
        print(f"subscriber failed: {viewer.error!r}")
    if not viewer.frames:
        print("no video frame reached the subscriber")
        return None
    good = window_latencies(viewer.frames, args.warmup, args.seconds)
    if good:
        print(f"GLASS-TO-GLASS: {describe(good)}")
    print_subscriber_stats(viewer.stats)
    span = t1 - t0
    print("CPU over the window (% of one core): " + ", ".join(
        f"{k} {(cpu1[k] - cpu0[k]) / span * 100:.0f}" for k in pids))
    return float(np.median(good)) if good else None


def run_latency(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-whip-") as tmp:
        livekit, service = start_harness(Path(tmp), **WHIP_RTC)
        try:
            assert livekit.proc is not None
            medians = {t: latency_once(service, livekit.url, livekit.proc.pid, t, args)
                       for t in (False, True)}
        finally:
            service.stop()
            livekit.stop()
    passthrough = medians[False]
    print(f"\ntarget: passthrough median <= 150 ms "
          f"{'met' if passthrough is not None and passthrough <= 150 else 'MISSED'} "
          f"({passthrough if passthrough is None else round(passthrough)} ms); "
          f"transcoding median {medians[True] if medians[True] is None else round(medians[True])}"
          f" ms")


# -- concurrent passthrough sessions ----------------------------------------------------------


def make_h264(path: Path, seconds: int = 10) -> list[bytes]:
    """Encode the source once with Debian ffmpeg; its access units (Annex B)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={W}x{H}:rate={FPS}", "-t", str(seconds),
                    "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", "-bf", "0", "-g", "60", "-b:v", SOURCE_BITRATE,
                    "-maxrate", SOURCE_BITRATE, "-bufsize", SOURCE_BITRATE, "-f", "h264",
                    str(path)], check=True)
    with av.open(str(path), format="h264") as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


class H264FileTrack(MediaStreamTrack):
    """Pre-encoded access units as `av.Packet`s at FPS, looped with increasing timestamps."""

    kind = "video"

    def __init__(self, units: list[bytes]) -> None:
        super().__init__()
        self.units = units
        self.sent = 0
        self.started = asyncio.Event()
        self._start = 0.0

    async def recv(self) -> av.Packet:
        if not self.started.is_set():
            self._start = time.monotonic()
            self.started.set()
        await asyncio.sleep(max(0.0, self._start + self.sent / FPS - time.monotonic()))
        packet = av.Packet(self.units[self.sent % len(self.units)])
        packet.pts, packet.time_base = self.sent * RTP_CLOCK // FPS, Fraction(1, RTP_CLOCK)
        self.sent += 1
        return packet


@dataclass
class Publisher:
    """One WHIP publisher of a step, and the worker that serves it."""

    track: H264FileTrack
    task: asyncio.Task[whip_client.WhipPublish]
    worker: int = 0


def ended_sessions(log: str, since: int) -> dict[int, tuple[str, int, int, int]]:
    """worker pid -> (reason, frames in, sent into the room, dropped) from the log after
    `since`."""
    return {int(m[1]): (m[2], int(m[3]), int(m[4]), int(m[5]))
            for m in ENDED.finditer(log, since)}


async def run_step(service: ServiceProcess, keys: list[str], units: list[bytes],
                   args: argparse.Namespace) -> bool:
    """Start len(keys) sessions one by one, measure, end them; print a row; True if held."""
    assert service.proc is not None
    svc = service.proc.pid
    log_from = len(service.log())
    stop = asyncio.Event()
    publishers: list[Publisher] = []
    ramp0 = time.monotonic()
    for key in keys:
        before = set(session_workers(svc))
        track = H264FileTrack(units)
        task = asyncio.create_task(whip_client.publish(
            f"{service.url}/w/{key}", seconds=3600, video_codec="H264", audio=args.audio,
            video_track=track, until=stop))
        publisher = Publisher(track, task)
        publishers.append(publisher)
        started = asyncio.create_task(track.started.wait())
        await asyncio.wait([started, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        new = set(session_workers(svc)) - before
        publisher.worker = new.pop() if len(new) == 1 else 0
    ramp = time.monotonic() - ramp0
    await asyncio.sleep(args.warmup)
    workers = [p.worker for p in publishers if p.worker]
    pids = {"service": svc, "publishers": os.getpid()}
    cpu0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    work0 = sum(cpu_seconds(w) for w in workers)
    sent0 = [p.track.sent for p in publishers]
    await asyncio.sleep(args.window)
    span = time.monotonic() - t0
    work = (sum(cpu_seconds(w) for w in workers) - work0) / span
    other = {k: (cpu_seconds(p) - cpu0[k]) / span for k, p in pids.items()}
    rate = min((p.track.sent - s) / span for p, s in zip(publishers, sent0, strict=True))
    rss = [memory_bytes(w)[0] / 1e6 for w in workers if Path(f"/proc/{w}").exists()]
    stop.set()
    results = await asyncio.gather(*(p.task for p in publishers), return_exceptions=True)
    ended: dict[int, tuple[str, int, int, int]] = {}
    for _ in range(100):  # the session-end lines follow the DELETEs
        ended = ended_sessions(service.log(), log_from)
        if all(p.worker in ended for p in publishers):
            break
        await asyncio.sleep(0.1)
    shares, failed = [], []
    for p, result in zip(publishers, results, strict=True):
        if isinstance(result, BaseException) or result.status != 201 or not result.connected:
            failed.append(repr(result)[:200])
        if p.worker in ended:
            shares.append(ended[p.worker][2] / max(1, p.track.sent))
    n = len(keys)
    worst = min(shares) if shares else 0.0
    # publishers that could not send at FPS (a starved machine) test nothing
    held = not failed and len(shares) == n and worst >= REAL_TIME and rate >= FPS * REAL_TIME
    print(f"{n:>8} {work:>11.2f} {work / n * 100:>12.1f} "
          f"{(sum(rss) / len(rss) if rss else 0):>10.0f} {sum(rss):>9.0f} "
          f"{other['service'] * 100:>8.0f} {other['publishers'] * 100:>10.0f} "
          f"{rate:>7.1f} {worst * 100:>8.1f} {len(shares):>5}/{n:<3} {ramp:>6.1f}  "
          f"{'held' if held else 'FAILED'}  {load()}", flush=True)
    if rate < FPS * REAL_TIME:
        print(f"   a publisher sent {rate:.1f} fps in the window: the machine is saturated")
    for f in failed[:3]:
        print(f"   publisher failed: {f}")
    for p in publishers:
        if p.worker in ended and ended[p.worker][2] / max(1, p.track.sent) < REAL_TIME:
            reason, got, to_room, dropped = ended[p.worker]
            print(f"   worker {p.worker}: sent {p.track.sent}, in {got}, to the room "
                  f"{to_room}, dropped {dropped} ({reason})")
    for _ in range(100):  # the workers of this step exit before the next starts
        if not session_workers(svc):
            break
        await asyncio.sleep(0.1)
    return held


async def sessions_bench(service: ServiceProcess, units: list[bytes], steps: list[int],
                         args: argparse.Namespace) -> None:
    from livekit import api
    from livekit.protocol import ingress as pb

    async with api.LiveKitAPI(service.url, service.api_key, service.api_secret) as lk:
        keys = [(await lk.ingress.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.WHIP_INPUT, name=f"whip-{i}",
            room_name=f"whip-sessions-{i}", participant_identity=f"whip-pub-{i}"))).stream_key
            for i in range(max(steps))]
    print(f"{'sessions':>8} {'worker cores':>11} {'%core/sess':>12} {'RSS/wkr MB':>10} "
          f"{'RSS MB':>9} {'service%':>8} {'publisher%':>10} {'min fps':>7} {'worst %':>8} "
          f"{'ended':>9} {'ramp s':>6}")
    best = 0
    for n in steps:
        if not await run_step(service, keys[:n], units, args):
            break
        best = n
    print(f"-> largest step that held: {best} passthrough sessions (target >= 20: "
          f"{'met' if best >= 20 else 'MISSED'})")


def run_sessions(args: argparse.Namespace) -> None:
    steps = [int(s) for s in args.steps.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-whip-") as tmp:
        units = make_h264(Path(tmp) / "source.h264")
        kbit = sum(map(len, units)) * 8 / (len(units) / FPS) / 1000
        print(f"source: {len(units)} access units, {kbit:.0f} kbit/s, H.264 baseline "
              f"{W}x{H} {FPS} fps GOP 60 (Debian ffmpeg libx264); audio: "
              f"{'aiortc Opus tone' if args.audio else 'none'}; warm-up {args.warmup:g} s, "
              f"window {args.window:g} s; {load()}", flush=True)
        livekit, service = start_harness(Path(tmp), **WHIP_RTC)
        try:
            asyncio.run(sessions_bench(service, units, steps, args))
        finally:
            service.stop()
            livekit.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="glass-to-glass, passthrough and transcoding")
    lat.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    lat.add_argument("--warmup", type=float, default=3.0,
                     help="seconds after the first received frame that are not measured")
    lat.add_argument("--codec", default="H264", choices=["H264", "VP8"],
                     help="what aiortc encodes in the publisher (default H264)")
    ses = sub.add_parser("sessions", help="concurrent passthrough sessions")
    ses.add_argument("--steps", default="1,5,10,15,20,25,30")
    ses.add_argument("--warmup", type=float, default=5.0)
    ses.add_argument("--window", type=float, default=15.0)
    ses.add_argument("--no-audio", dest="audio", action="store_false",
                     help="video only (compare to see what forwarding the Opus costs)")
    pub = sub.add_parser("publish")  # the latency publisher child
    pub.add_argument("url")
    pub.add_argument("--seconds", type=float, required=True)
    pub.add_argument("--codec", default="H264")
    args = parser.parse_args()
    if args.what == "publish":
        print(json.dumps(publish_stamped(args.url, args.seconds, args.codec)), flush=True)
        return
    print_command()
    print(load(), flush=True)
    {"latency": run_latency, "sessions": run_sessions}[args.what](args)


if __name__ == "__main__":
    main()
