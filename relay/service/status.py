"""Node health: CPU load sampling and the availability answer for load balancers.

The machine's idle CPU is sampled from /proc/stat once a second. One sample is what
`livekit_node_cpu_load` shows; admission and /availability read a smoothed figure
instead (:class:`IdleEstimate`), because a single second is noise: another process's
burst (an encoder finishing, a build) made an idle 2-core node refuse sessions
("server capacity exceeded" with 93% load for one second). See docs/DESIGN.md,
"Admission".
"""

from __future__ import annotations

import math
import os

import trio

from . import metrics

# The time constant of the idle-CPU average: a 1 s burst to 100% moves it by 28%
# (e^(-1/3) of the old figure stays), a sustained load shows at 63% after 3 s and
# 95% after 9 s. Long enough to ride out a burst, short enough that a node that
# really is busy stops taking sessions within a few seconds.
SMOOTHING_SECONDS = 3.0


class IdleEstimate:
    """Exponentially weighted average of the machine's idle cores, over time.

    Sans-clock and sans-I/O: each sample is the mean idle cores over [start, end]
    (what two reads of /proc/stat give) and weighs by its duration, so a missed or
    late sample does not skew the average. Before any sample the estimate is
    `prior` (NodeStatus: all cores idle, as the unsmoothed sampler assumed).
    """

    __slots__ = ("time_constant", "value")

    def __init__(self, prior: float, time_constant: float = SMOOTHING_SECONDS) -> None:
        if time_constant <= 0:
            raise ValueError("time_constant must be positive")
        self.value = prior
        self.time_constant = time_constant

    def feed(self, start: float, end: float, idle: float) -> float:
        """Blend in a sample (mean idle cores from `start` to `end`); the new estimate."""
        duration = end - start
        if duration > 0:
            keep = math.exp(-duration / self.time_constant)
            self.value = idle + (self.value - idle) * keep
        return self.value


def _read_cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


class NodeStatus:
    """What /availability, livekit_node_cpu_load and admission read of the node."""

    def __init__(self, min_idle_ratio: float = 0.05,
                 smoothing: float = SMOOTHING_SECONDS, cpus: int | None = None) -> None:
        self.cpu_load = 0.0  # the last 1 s sample, 0..1 of all cores (the metric)
        self.draining = False
        self.min_idle_ratio = min_idle_ratio
        self.cpus = cpus or os.cpu_count() or 1
        self.idle = IdleEstimate(float(self.cpus), smoothing)
        metrics.AVAILABLE.set(1)

    @property
    def idle_cores(self) -> float:
        """Smoothed idle cores of the whole machine (what admission reads)."""
        return self.idle.value

    @property
    def available(self) -> bool:
        return not self.draining and self.idle_cores >= self.min_idle_ratio * self.cpus

    def drain(self) -> None:
        """Stop taking new sessions (shutdown has begun)."""
        self.draining = True
        metrics.AVAILABLE.set(0)

    def observe(self, start: float, end: float, load: float) -> None:
        """Record one sample: `load` (0..1 of all cores) from `start` to `end`."""
        self.cpu_load = max(0.0, min(1.0, load))
        self.idle.feed(start, end, self.cpus * (1.0 - self.cpu_load))
        metrics.NODE_CPU_LOAD.set(self.cpu_load)
        metrics.AVAILABLE.set(1 if self.available else 0)

    async def sample_cpu(self, interval: float = 1.0) -> None:
        """Sample the CPU load every `interval` seconds, forever."""
        last, since = _read_cpu_times(), trio.current_time()
        while True:
            await trio.sleep(interval)
            now, at = _read_cpu_times(), trio.current_time()
            if now is None or last is None:
                continue
            idle, total = now[0] - last[0], now[1] - last[1]
            if total > 0:
                self.observe(since, at, 1.0 - idle / total)
            last, since = now, at
