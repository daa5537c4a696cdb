"""Capacity admission (`cpu_cost.*`): take a session only while the node has the CPU.

REFERENCE §4 and §8: a publish that finds no capacity is refused with "server
capacity exceeded" (RTMP: NetStream.Publish.Denied; WHIP: 429; URL: CreateIngress
answers `unavailable`, see url_front.py). The rule, in cores, is LiveKit's with two
changes that keep it from flapping (docs/DESIGN.md, "Admission")::

    measured  = idle - promised - min_idle_ratio * cpus
    committed = cpus - committed_costs
    admit a session of cost C  iff  min(measured, committed) >= C

`idle` is the machine's idle cores averaged over a few seconds
(:class:`relay.service.status.IdleEstimate`, fed by
:class:`relay.service.status.NodeStatus` once a second), not one second's sample:
another process's one-second burst must not refuse a session on an idle node.
The price is that a session's own load shows late: its worker needs a few seconds
to start (imports, joining the room), and the average a few more to follow. Each
admitted session therefore holds a :class:`Promise` of its cost, counted in
`promised` for :data:`PROMISE_SECONDS`, after which the measured load accounts for
it. A burst of publishes cannot all be admitted against the same idle figure.

`committed_costs` is the sum of the costs of all live sessions, however old: the
declared costs alone must fit in the machine's cores, whatever the measurement
says (sessions whose sources are still slow to start, or idle for a while, will not
stay cheap). A session that ends releases its promise at once, so a refused or
failed session never keeps blocking others.

The class is sans-clock (``now`` is injected) and sans-I/O, so the rule is unit
tested without processes; one instance is created in relay/service/node.py `serve()`
and shared by the RTMP, WHIP and URL fronts, all in one trio thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Protocol

from ..config import CpuCostConfig

log = logging.getLogger(__name__)

CAPACITY_EXCEEDED = "server capacity exceeded"
# worker start-up (~1-3 s) + three time constants of the idle average (3 x 3 s,
# relay/service/status.py SMOOTHING_SECONDS): by then 95% of the load shows
PROMISE_SECONDS = 12.0

SessionKind = Literal["rtmp", "whip", "url"]


class CpuLoad(Protocol):
    """What admission reads of :class:`relay.service.status.NodeStatus`."""

    @property
    def idle_cores(self) -> float: ...

    @property
    def cpus(self) -> int: ...


class Promise:
    """The cores promised to one admitted session until it ends.

    `release()` is idempotent; used as a context manager it releases on exit, so a
    session's promise is returned whichever way the session ends.
    """

    __slots__ = ("_admission", "cost", "fresh_until")

    def __init__(self, admission: Admission, cost: float, fresh_until: float) -> None:
        self._admission = admission
        self.cost = cost
        self.fresh_until = fresh_until  # until then its load may not show in `idle`

    def release(self) -> None:
        self._admission._live.discard(self)

    def __enter__(self) -> Promise:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class Admission:
    """Decides whether this node takes one more session (see the module docstring).

    `status` None means no limit: every session is admitted (what the ingest fronts
    use when they are given no Admission, e.g. in tests and without a media server).
    """

    def __init__(self, status: CpuLoad | None, costs: CpuCostConfig | None = None, *,
                 now: Callable[[], float] = time.monotonic,
                 promise_seconds: float = PROMISE_SECONDS) -> None:
        self.status = status
        self.costs = costs or CpuCostConfig()
        self.now = now
        self.promise_seconds = promise_seconds
        self._live: set[Promise] = set()

    @classmethod
    def unlimited(cls) -> Admission:
        """An Admission that admits everything (the fronts' default)."""
        return cls(None)

    def cost_for(self, kind: SessionKind, transcoding: bool) -> float:
        """The `cpu_cost.*` figure of a session of this kind.

        RTMP and WHIP sessions that do not transcode (WHIP's default; RTMP with
        enable_transcoding=false under `rtmp_passthrough`) both cost what the
        reference calls `whip_bypass_transcoding_cpu_cost`: the video is passed on as
        it came, only the audio is decoded and re-encoded. URL ingresses always
        transcode.
        """
        c = self.costs
        if kind == "url":
            return c.url_cpu_cost
        if not transcoding:
            return c.whip_bypass_transcoding_cpu_cost
        return c.rtmp_cpu_cost if kind == "rtmp" else c.whip_cpu_cost

    def promised(self) -> float:
        """Cores promised to sessions admitted within the last PROMISE_SECONDS (their
        load may not show in the measured idle cores yet)."""
        now = self.now()
        return sum(p.cost for p in self._live if p.fresh_until > now)

    def committed(self) -> float:
        """Cores promised to every live session, however old."""
        return sum(p.cost for p in self._live)

    def available(self) -> float:
        """The cores a new session may take: the lesser of the measured figure (idle
        cores minus fresh promises minus the reserve) and the cores no live session
        has been promised."""
        if self.status is None:
            return float("inf")
        cpus = self.status.cpus
        measured = self.status.idle_cores - self.promised() - self.costs.min_idle_ratio * cpus
        return min(measured, cpus - self.committed())

    def admit(self, cost: float) -> bool:
        """Whether a session costing `cost` cores fits now (promises nothing)."""
        return self.status is None or self.available() >= cost

    def reserve(self, cost: float) -> Promise | None:
        """Admit a session and promise it `cost` cores; None (and a log line) if it
        does not fit. The caller releases the promise when the session ends."""
        if not self.admit(cost):
            assert self.status is not None
            log.warning("%s: a session costing %.2f cores does not fit: %.2f available "
                        "(%d cpus, %.2f idle on average, %.2f promised in the last %.0f s, "
                        "%.2f committed, reserve %.2f)",
                        CAPACITY_EXCEEDED, cost, self.available(), self.status.cpus,
                        self.status.idle_cores, self.promised(), self.promise_seconds,
                        self.committed(), self.costs.min_idle_ratio * self.status.cpus)
            return None
        promise = Promise(self, cost, self.now() + self.promise_seconds)
        if self.status is not None:  # unlimited: nothing to account
            self._live.add(promise)
        return promise
