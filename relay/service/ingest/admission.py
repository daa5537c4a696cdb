"""Capacity admission (`cpu_cost.*`): take a session only while the node has the CPU.

REFERENCE §4 and §8: a publish that finds no capacity is refused with "server
capacity exceeded" (RTMP: NetStream.Publish.Denied; WHIP: 429; URL: the ingress
ends in ENDPOINT_ERROR). The rule is LiveKit's, in cores::

    available = cpus * (1 - cpu_load) - promised - min_idle_ratio * cpus
    admit a session of cost C  iff  available >= C

`cpu_load` is what :class:`relay.service.status.NodeStatus` samples from /proc/stat once a
second (the whole machine, 0..1 of all cores). A session's worker needs a few
seconds to start (imports, joining the room) and the sampler up to a second more
to see its load, so a burst of publishes would all be admitted against the same
idle figure. Each admitted session therefore holds a :class:`Promise` of its cost
for :data:`PROMISE_SECONDS`, after which the measured load accounts for it; a
session that ends earlier releases its promise at once (a refused or failed
session must not keep blocking others).

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
PROMISE_SECONDS = 10.0  # worker start-up (~1-3 s) + a few 1 s CPU samples

SessionKind = Literal["rtmp", "whip", "url"]


class CpuLoad(Protocol):
    """What admission reads of :class:`relay.service.status.NodeStatus`."""

    @property
    def cpu_load(self) -> float: ...

    @property
    def cpus(self) -> int: ...


class Promise:
    """The cores promised to one admitted session until it ends or the promise expires.

    `release()` is idempotent; used as a context manager it releases on exit, so a
    session's promise is returned whichever way the session ends.
    """

    __slots__ = ("_admission", "cost", "expires")

    def __init__(self, admission: Admission, cost: float, expires: float) -> None:
        self._admission = admission
        self.cost = cost
        self.expires = expires

    def release(self) -> None:
        self._admission._promises.discard(self)

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
        self._promises: set[Promise] = set()

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
        """Cores promised to sessions admitted within the last PROMISE_SECONDS."""
        now = self.now()
        expired = [p for p in self._promises if p.expires <= now]
        for p in expired:
            self._promises.discard(p)
        return sum(p.cost for p in self._promises)

    def available(self) -> float:
        """Idle cores minus promises minus the reserve (min_idle_ratio of all cores)."""
        if self.status is None:
            return float("inf")
        cpus = self.status.cpus
        idle = cpus * (1.0 - self.status.cpu_load)
        return idle - self.promised() - self.costs.min_idle_ratio * cpus

    def admit(self, cost: float) -> bool:
        """Whether a session costing `cost` cores fits now (promises nothing)."""
        return self.status is None or self.available() >= cost

    def reserve(self, cost: float) -> Promise | None:
        """Admit a session and promise it `cost` cores; None (and a log line) if it
        does not fit. The caller releases the promise when the session ends."""
        if not self.admit(cost):
            assert self.status is not None
            log.warning("%s: a session costing %.2f cores does not fit: %.2f available "
                        "(%d cpus, load %.0f%%, %.2f promised, reserve %.2f)",
                        CAPACITY_EXCEEDED, cost, self.available(), self.status.cpus,
                        self.status.cpu_load * 100, self.promised(),
                        self.costs.min_idle_ratio * self.status.cpus)
            return None
        promise = Promise(self, cost, self.now() + self.promise_seconds)
        if self.status is not None:  # unlimited: nothing to account
            self._promises.add(promise)
        return promise
