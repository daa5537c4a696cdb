"""How many default-preset 720p sessions this machine runs in real time, and the
memory each one costs.

Adds session workers (relay/worker/main.py) one at a time, each fed its own copy of a
1280x720 30 fps H.264 + AAC stream in real time and publishing into a local
livekit-server (each encoding the preset's layers itself), until the workers start
dropping video (their lag gate, queue or layer encoders) or use more CPU than the
machine has. For each step: the workers' CPU (cores), the SFU's and this process'
(the stand-in for the service's RTMP front), the machine's idle share, the workers'
memory (RSS and PSS per session) and the drops in the window, by counter.
No subscribers run here: viewers are on other machines, and decoding for them
would take CPU from the workers. Run: .venv/bin/python bench/sessions.py [--max 8]

With --ffmpeg the steps add Debian's ffmpeg processes instead, each doing one
session's media work the way bench/transcode.py's does (decode, the default preset's
layers with the worker's libx264 settings, AAC -> Opus, each stream sent as SRTP over
UDP to this process): the machine's ceiling for the same work with the field's own
tool, in the same hour. ffmpeg does not drop pictures, it falls behind: a step holds
while every process keeps >= 98% of real time (its -progress media time) over the
window.

The workers are forked by the service's worker template (relay/worker/template.py),
as in the service, and the PSS per session includes each session's share of the
template's pages. With --exec each worker is started as `python -m relay.worker`
instead, as before the template: what the template saves in memory and start-up
time (the `start s` column: from asking for the worker to its first track).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as pb

import rtmp
from bench.rtmp import cpu_seconds
from bench.transcode import (
    ffmpeg_command,
    media_events,
    progress_media_seconds,
    shift,
    udp_sinks,
)
from relay.service.ingest.tokens import participant_token
from relay.service.ingest.worker_client import (
    SessionWorker,
    open_session_worker,
    run_session_worker,
    warm_worker_template,
    worker_environment,
)
from relay.service.ingest.worker_template import worker_template
from relay.wire import Start, StateReport
from relay.worker.layers import fit_layers, video_encoding
from tests.livekit import API_KEY, API_SECRET, LiveKitServer

WARMUP = 6.0
WINDOW = 8.0
SOURCE = (1280, 720)
REAL_TIME = 0.98  # an ffmpeg step holds while every process keeps this share of real time


def memory_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process. RSS counts every page it maps, those it shares with
    the other workers (the same libraries) too; PSS divides each shared page among
    its sharers: the sum of PSS over the workers is what they take together."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0]) * 1024
    return fields.get("Rss", 0), fields.get("Pss", 0)


def make_source(path: Path) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size={SOURCE[0]}x{SOURCE[1]}:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10",
                    "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                    "-b:v", "2500k", "-pix_fmt", "yuv420p", "-g", "60", "-bf", "0",
                    "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)], check=True)


class Session:
    def __init__(self, worker: SessionWorker, spawned: float) -> None:
        self.worker = worker
        self.last: StateReport | None = None
        self.spawned = spawned
        self.start_seconds = 0.0  # from spawning the worker to its first track

    def drops(self) -> collections.Counter[str]:
        return collections.Counter(self.last.drops if self.last is not None else {})


def idle_seconds() -> float:
    """The machine's idle time so far, all cores (/proc/stat: idle + iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


async def feed(worker: SessionWorker, events: list[rtmp.Event]) -> None:
    """Loop the stream forever in real time (timestamps keep increasing)."""
    span = max(e.dts for e in events) + 33
    began = trio.current_time()
    offset = 0
    while True:
        for event in events:
            await trio.sleep_until(began + (offset + event.dts) / 1000)
            if not await worker.send(shift(event, offset)):
                return
        offset += span


async def collect(session: Session) -> None:
    async for report in session.worker.reports:
        session.last = report
        if report.status == "publishing" and not session.start_seconds:
            session.start_seconds = trio.current_time() - session.spawned


@asynccontextmanager
async def open_started_worker(start: Start) -> AsyncIterator[SessionWorker]:
    """A worker started as its own program, as before the worker template."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay.worker"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env=worker_environment())
    async with run_session_worker(process, start) as worker:
        yield worker


async def run_session(livekit: LiveKitServer, events: list[rtmp.Event], n: int,
                      sessions: list[Session], started: bool,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    info = pb.IngressInfo(ingress_id=f"IN_bench{n}", room_name=f"sessions-{n}",
                          participant_identity=f"bench-{n}",
                          input_type=pb.IngressInput.RTMP_INPUT)
    start = Start(livekit.url, participant_token(API_KEY, API_SECRET, info, f"RT_{n}"),
                  info.SerializeToString())
    spawned = trio.current_time()
    opened = open_started_worker(start) if started else open_session_worker(start)
    async with opened as worker, trio.open_nursery() as nursery:
        session = Session(worker, spawned)
        sessions.append(session)
        nursery.start_soon(collect, session)
        task_status.started()
        await feed(worker, events)


async def bench(livekit: LiveKitServer, events: list[rtmp.Event], most: int,
                started: bool) -> None:
    sessions: list[Session] = []
    print(f"{'sessions':>8} {'CPU cores':>9} {'SFU':>5} {'front':>5} {'idle':>5} "
          f"{'RSS/session MB':>14} {'PSS/session MB':>14} {'start s':>7} "
          f"{'drops in window':>15}")
    others = [livekit.proc.pid if livekit.proc else 0, os.getpid()]
    if not started:  # as the service does when it starts
        await warm_worker_template()
    async with trio.open_nursery() as nursery:
        for n in range(1, most + 1):
            await nursery.start(run_session, livekit, events, n, sessions, started)
            await trio.sleep(WARMUP)
            dead = [s.worker.failure for s in sessions if s.worker.exited.is_set()]
            if dead:
                print(f"-> a session worker ended: {dead[0]}")
                break
            pids = [s.worker.process.pid for s in sessions]
            cpu0 = sum(cpu_seconds(p) for p in pids)
            others0 = [cpu_seconds(p) for p in others]
            idle0 = idle_seconds()
            drops0 = sum((s.drops() for s in sessions), collections.Counter())
            await trio.sleep(WINDOW)
            cores = (sum(cpu_seconds(p) for p in pids) - cpu0) / WINDOW
            sfu, front = ((cpu_seconds(p) - c) / WINDOW
                          for p, c in zip(others, others0, strict=True))
            idle = (idle_seconds() - idle0) / WINDOW / (os.cpu_count() or 1)
            memory = [memory_bytes(p) for p in pids]
            rss, pss = (sum(m[i] for m in memory) / 1e6 / n for i in (0, 1))
            template = worker_template(worker_environment()).pid
            if not started and template is not None:  # the sessions' shares of its pages
                pss += memory_bytes(template)[1] / 1e6 / n
            await trio.sleep(0.5 + 5)  # a fresh stats report (every 5 s)
            drops = sum((s.drops() for s in sessions), collections.Counter()) - drops0
            shown = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "0"
            print(f"{n:>8} {cores:>9.2f} {sfu:>5.2f} {front:>5.2f} {idle:>5.0%} {rss:>14.0f} "
                  f"{pss:>14.0f} {sessions[-1].start_seconds:>7.2f} {shown:>15}", flush=True)
            if drops or cores > 1.9:
                print(f"-> {n - 1 if drops else n} sessions in real time on this machine")
                break
        nursery.cancel_scope.cancel()


class FfmpegSession:
    """One ffmpeg process doing a session's media work; a thread follows the media
    time it has output (its -progress reports)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.reports: list[tuple[float, float]] = []  # (wall time it came, media s)
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if (seconds := progress_media_seconds(line)) is not None:
                self.reports.append((time.monotonic(), seconds))

    def speed(self, since: float, until: float) -> float:
        """Media seconds output per wall second between two times, from the reports
        that came between them (every 0.5 s: reading the media time at the window's
        ends instead would be up to 0.5 s stale, +/- 6% of an 8 s window)."""
        inside = [r for r in self.reports if since <= r[0] <= until]
        if len(inside) < 2:
            return 0.0
        (wall0, media0), (wall1, media1) = inside[0], inside[-1]
        return (media1 - media0) / (wall1 - wall0)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self._reader.join()


def bench_ffmpeg(source: Path, most: int) -> None:
    encoding = video_encoding(None)
    layers = fit_layers(encoding, *SOURCE)
    print(f"{'ffmpeg':>8} {'CPU cores':>9} {'idle':>5} {'RSS/process MB':>14} "
          f"{'PSS/process MB':>14} {'slowest, share of real time':>27}")
    with contextlib.ExitStack() as stack:
        sessions: list[FfmpegSession] = []
        for n in range(1, most + 1):
            ports = stack.enter_context(udp_sinks(len(layers) + 1))
            cmd = ffmpeg_command(source, layers, encoding.frame_rate, 3600, ports)
            sessions.append(stack.enter_context(contextlib.closing(FfmpegSession(cmd))))
            time.sleep(WARMUP)
            pids = [s.proc.pid for s in sessions]
            cpu0, idle0 = sum(cpu_seconds(p) for p in pids), idle_seconds()
            began = time.monotonic()
            time.sleep(WINDOW)
            cores = (sum(cpu_seconds(p) for p in pids) - cpu0) / WINDOW
            idle = (idle_seconds() - idle0) / WINDOW / (os.cpu_count() or 1)
            slowest = min(s.speed(began, began + WINDOW) for s in sessions)
            memory = [memory_bytes(p) for p in pids]
            rss, pss = (sum(m[i] for m in memory) / 1e6 / n for i in (0, 1))
            print(f"{n:>8} {cores:>9.2f} {idle:>5.0%} {rss:>14.0f} {pss:>14.0f} "
                  f"{slowest:>27.3f}", flush=True)
            if slowest < REAL_TIME:
                print(f"-> {n - 1} ffmpeg sessions in real time on this machine")
                break
        print("command of each:", " ".join(cmd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--ffmpeg", action="store_true",
                        help="add ffmpeg processes doing the same work, not workers")
    parser.add_argument("--exec", action="store_true",
                        help="start each worker as `python -m relay.worker`, not forked "
                             "by the worker template")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.flv"
        make_source(source)
        if args.ffmpeg:
            bench_ffmpeg(source, args.max)
            return
        events = media_events(source)
        livekit = LiveKitServer(Path(tmp))
        livekit.start()
        try:
            trio.run(bench, livekit, events, args.max, args.exec)
        finally:
            livekit.stop()


if __name__ == "__main__":
    main()
