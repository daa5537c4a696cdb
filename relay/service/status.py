"""Node health: CPU load sampling and the availability answer for load balancers."""

from __future__ import annotations

import os

import trio

from . import metrics


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
    """What /availability and livekit_node_cpu_load report."""

    def __init__(self, min_idle_ratio: float = 0.05) -> None:
        self.cpu_load = 0.0
        self.draining = False
        self.min_idle_ratio = min_idle_ratio
        self.cpus = os.cpu_count() or 1
        metrics.AVAILABLE.set(1)

    @property
    def available(self) -> bool:
        return not self.draining and (1.0 - self.cpu_load) >= self.min_idle_ratio

    def drain(self) -> None:
        """Stop taking new sessions (shutdown has begun)."""
        self.draining = True
        metrics.AVAILABLE.set(0)

    async def sample_cpu(self, interval: float = 1.0) -> None:
        """Refresh the CPU load every `interval` seconds, forever."""
        last = _read_cpu_times()
        while True:
            await trio.sleep(interval)
            now = _read_cpu_times()
            if now is None or last is None:
                continue
            idle, total = now[0] - last[0], now[1] - last[1]
            last = now
            if total > 0:
                self.cpu_load = max(0.0, min(1.0, 1.0 - idle / total))
                metrics.NODE_CPU_LOAD.set(self.cpu_load)
                metrics.AVAILABLE.set(1 if self.available else 0)
