"""A clock the test sets: code that takes a ``clock()`` callable reads ``now``."""

from __future__ import annotations


class ManualClock:
    """Seconds that move only when the test moves them (``clock.now += 5``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
