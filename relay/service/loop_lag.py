"""A watch on the service's own event loop: one process serves every connection, so
any task that holds the loop (parsing without a checkpoint, a blocking call) delays
all of them. Reported as metrics (relay/service/metrics.py) for operators and for
bench/hardening.py."""

from __future__ import annotations

from collections import deque

import trio

from . import metrics

TICK = 0.02  # seconds between two looks
WINDOW = 10.0  # seconds the "worst" gauge covers


class LagWindow:
    """The worst lag of the last `window` seconds, from (time, lag) samples; no clock."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()  # decreasing lags

    def add(self, now: float, lag: float) -> float:
        """Record one sample; return the worst lag of the window ending at `now`."""
        samples = self._samples
        while samples and samples[-1][1] <= lag:
            samples.pop()  # never the worst again: a later sample is as bad
        samples.append((now, lag))
        while samples[0][0] < now - self.window:
            samples.popleft()
        return samples[0][1]


async def watch_loop_lag(tick: float = TICK) -> None:
    """Run forever: how much later than asked a `tick` sleep wakes up."""
    window = LagWindow()
    while True:
        asked = trio.current_time() + tick
        await trio.sleep_until(asked)
        now = trio.current_time()
        lag = max(0.0, now - asked)
        metrics.LOOP_LAG.observe(lag)
        metrics.LOOP_LAG_WORST.set(window.add(now, lag))
