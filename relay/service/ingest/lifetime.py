"""One session lifetime for every ingest front (RTMP, WHIP, URL).

A front keeps only its protocol (RTMP chunks, WHIP's HTTP resource, a URL to pull);
:class:`SessionHost` owns what every session goes through, in this order:

1. **check** (``lookup``/``check``): the node is not draining, the stream key is
   known, the ingress is of the front's input type, enabled, and has a room;
   otherwise :class:`Refused`, whose ``reason`` each front maps to its protocol
   (an RTMP ``onStatus`` code, a WHIP HTTP status, a URL ingress' ERROR state).
2. **admit**: the node has the CPU (admission.py); the session holds its promise
   until it ends.
3. **register** its cancel scope under the ingress id (registry.py): a newer session
   on the same ingress, DeleteIngress, UpdateIngress and shutdown end it by
   cancelling that scope, so everything below runs in one ``finally``. A newer
   session waits (bounded) until the one it replaced has ended: its worker out of
   the room, its final state written.
4. **BUFFERING** with a fresh resource id and ``started_at``, through the control
   plane (control.py). An ingress deleted meanwhile refuses the session.
5. **worker**: the session's child process (worker_client.py), started with ``Start``
   and the participant token; its reports become PUBLISHING states with the input's
   size, rate and bitrate while the front does its part.
6. **final state**: INACTIVE (push inputs) / COMPLETE (URL) / ERROR with the first
   error, written shielded and naming the session (its ``started_at``), so a newer
   session's state is never overwritten. A URL pull stopped by shutdown writes
   nothing: the next start resumes it.
7. **metrics**: ``livekit_ingress_requests`` when it starts,
   ``livekit_ingress_publish_status`` when it ends or is refused.

Usage, in a front::

    info = await host.lookup("rtmp", stream_key)          # Refused
    async with host.session("rtmp", info) as live:        # Refused (capacity, gone)
        ...  # the protocol; live.worker takes the media
        live.end("publisher ended the stream", drain=True)
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import trio
from livekit.protocol import ingress as pb
from livekit.protocol import models

from api.ids import (
    RTMP_RESOURCE_PREFIX,
    URL_RESOURCE_PREFIX,
    WHIP_RESOURCE_PREFIX,
    new_resource_id,
)
from api.redaction import scrub
from api.validation import transcoding_enabled
from relay.wire import Start, StateReport

from .. import metrics
from ..trio_util import unwrap_single_exception
from .admission import CAPACITY_EXCEEDED, Admission, Promise, SessionKind
from .control import ControlPlane, StateWrite
from .registry import LiveSession, SessionRegistry
from .tokens import participant_token
from .worker_client import SessionWorker, open_session_worker
from .worker_template import TemplateError

log = logging.getLogger(__name__)

STATE_WRITE_TIMEOUT = 5.0
# a replaced session ends within its worker's exit grace plus its final state write
TAKEOVER_WAIT = 10.0
SHUTTING_DOWN = "server shutting down"  # the stop reason of every session at shutdown

_PREFIX = {"rtmp": RTMP_RESOURCE_PREFIX, "whip": WHIP_RESOURCE_PREFIX,
           "url": URL_RESOURCE_PREFIX}
_INPUT = {"rtmp": pb.IngressInput.RTMP_INPUT, "whip": pb.IngressInput.WHIP_INPUT,
          "url": pb.IngressInput.URL_INPUT}
_INPUT_NAME = {"rtmp": "an RTMP", "whip": "a WHIP", "url": "a URL"}


class Refusal(enum.Enum):
    """Why a session was not started (REFERENCE §4, "at publish time")."""

    SHUTTING_DOWN = enum.auto()
    UNKNOWN_KEY = enum.auto()
    WRONG_INPUT = enum.auto()
    DISABLED = enum.auto()
    NO_ROOM = enum.auto()
    CAPACITY = enum.auto()
    GONE = enum.auto()  # deleted between the lookup and BUFFERING
    STOPPED = enum.auto()  # stopped (takeover, delete, shutdown) while it was starting


class Refused(Exception):
    """A session that may not start; the message is the text for the publisher."""

    def __init__(self, reason: Refusal, text: str,
                 info: pb.IngressInfo | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.info = info


class SessionFailure(Exception):
    """The session failed; the message becomes the ingress' error (ENDPOINT_ERROR)."""


@dataclass(frozen=True)
class WorkerSettings:
    """Where session workers publish (ws_url), the key that signs their tokens, and
    whether URL pulls may reach private addresses (url_allow_private_addresses)."""

    ws_url: str
    api_key: str
    api_secret: str
    url_allow_private_addresses: bool = False


WorkerLauncher = Callable[[Start], AbstractAsyncContextManager[SessionWorker]]


@dataclass
class Live:
    """One running session, as its front sees it."""

    kind: SessionKind
    info: pb.IngressInfo
    resource_id: str
    started_at: int
    worker: SessionWorker | None = None
    registration: LiveSession | None = None
    status: int = pb.IngressState.ENDPOINT_INACTIVE
    error: str = ""
    reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def ingress_id(self) -> str:
        return self.info.ingress_id

    def end(self, reason: str, *, drain: bool = False) -> None:
        """The source ended cleanly; `drain`: the worker publishes what it holds."""
        self.reason = self.reason or reason
        if self.worker is not None:
            self.worker.drain = drain

    def fail(self, error: str) -> None:
        """The session failed: the first error is the one the ingress keeps (and logs),
        without its URL's key material or its stream key (api/redaction.py)."""
        error = scrub(error, self.info.url, self.info.stream_key)
        if self.status != pb.IngressState.ENDPOINT_ERROR:
            self.status, self.error, self.reason = pb.IngressState.ENDPOINT_ERROR, error, error
        if self.worker is not None:
            self.worker.drain = False

    async def worker_exited(self) -> None:
        """Wait for the worker to end by itself (WHIP: the publisher left; URL: the
        media ended); its failure, if any, becomes the session's."""
        assert self.worker is not None
        await self.worker.exited.wait()
        self.worker.drain = False


class SessionHost:
    """Runs every session of this node through the lifetime of the module docstring."""

    def __init__(self, control: ControlPlane, registry: SessionRegistry, *,
                 workers: WorkerSettings | None, admission: Admission | None = None,
                 draining: Callable[[], bool] = lambda: False,
                 launch: WorkerLauncher = open_session_worker,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.control = control
        self.registry = registry
        self.workers = workers  # None: no LiveKit server configured, nothing is published
        self.admission = admission or Admission.unlimited()
        self.draining = draining
        self.launch = launch
        self.clock_ns = clock_ns

    # -- 1, 2: check and admit -----------------------------------------------------------

    async def lookup(self, kind: SessionKind, stream_key: str) -> pb.IngressInfo:
        """The ingress a publisher names, checked for this front; Refused otherwise."""
        if self.draining():
            self._refuse(kind, Refusal.SHUTTING_DOWN, SHUTTING_DOWN)
        info = await self.control.lookup(stream_key)
        if info is None:
            self._refuse(kind, Refusal.UNKNOWN_KEY, "unknown stream key")
        self.check(kind, info)
        return info

    def check(self, kind: SessionKind, info: pb.IngressInfo) -> None:
        """Refused unless the ingress may run a session of this kind now."""
        if info.input_type != _INPUT[kind]:
            self._refuse(kind, Refusal.WRONG_INPUT,
                         f"ingress is not {_INPUT_NAME[kind]} ingress", info)
        if info.HasField("enabled") and not info.enabled:
            self._refuse(kind, Refusal.DISABLED, "session is disabled", info)
        if not info.room_name:
            self._refuse(kind, Refusal.NO_ROOM, "no room name", info)

    def rejected(self, kind: SessionKind) -> None:
        """Count a publish a front refused for reasons of its own protocol."""
        metrics.PUBLISH_STATUS.labels(kind, "rejected").inc()

    def _refuse(self, kind: SessionKind, reason: Refusal, text: str,
                info: pb.IngressInfo | None = None) -> None:
        self.rejected(kind)
        raise Refused(reason, text, info)

    # -- 3-7: the session ----------------------------------------------------------------

    @asynccontextmanager
    async def session(self, kind: SessionKind, info: pb.IngressInfo, *, offer: str = "",
                      host_addresses: tuple[str, ...] = (),
                      ice_ports: tuple[int, int] = (0, 0),
                      labels: dict[str, str] | None = None,
                      promise: Promise | None = None) -> AsyncIterator[Live]:
        """Run one session around the caller's block (see the module docstring).

        Raises Refused instead of running the block (capacity, ingress gone, stopped
        or failed while starting). The block's own failures end the session, never
        the caller: the text of a SessionFailure (or of a TemplateError: no worker
        could be forked) becomes the error, any other exception is
        logged as a bug and recorded as "internal error". Cancellation (stop,
        takeover, shutdown) ends it quietly. `promise`: capacity reserved already
        (a URL pull is admitted when CreateIngress asks for it), not decided again.
        """
        transcode = transcoding_enabled(info)
        if promise is None:  # else admitted already (a URL pull, when it was created)
            promise = self.admission.reserve(self.admission.cost_for(kind, transcode))
        if promise is None:
            self._refuse(kind, Refusal.CAPACITY, CAPACITY_EXCEEDED, info)
        assert promise is not None
        started_at = self.clock_ns()
        live = Live(kind, info, new_resource_id(_PREFIX[kind]), started_at,
                    status=(pb.IngressState.ENDPOINT_COMPLETE if kind == "url"
                            else pb.IngressState.ENDPOINT_INACTIVE),
                    labels=labels or {})
        # labels: "scheme" names the session in logs (rtmps), "peer" where it comes from
        who = f"{live.labels.get('scheme', kind)} session {live.resource_id} of {info.ingress_id}"
        if live.labels.get("peer"):
            who += f" from {live.labels['peer']}"
        began = trio.current_time()
        started = yielded = False
        with promise, trio.CancelScope() as scope, self.registry.register(
                info.ingress_id, live.resource_id, scope) as registration:
            live.registration = registration
            try:
                await self._outlive(registration.replaced, who)
                started = True  # from here a final state is owed: BUFFERING may be written
                written = await self.control.update_state(info.ingress_id, pb.IngressState(
                    status=pb.IngressState.ENDPOINT_BUFFERING, resource_id=live.resource_id,
                    started_at=started_at, updated_at=started_at))
                if written is StateWrite.GONE:
                    started = False
                    self._refuse(kind, Refusal.GONE, "unknown stream key", info)
                if written is StateWrite.STALE:
                    log.warning("%s: the control plane holds a newer state; going on", who)
                metrics.INGRESS_REQUESTS.labels(kind, "true" if transcode else "false").inc()
                log.info("%s: publishing to room %r as %r", who, info.room_name,
                         info.participant_identity)
                if self.workers is None:
                    yielded = True
                    yield live
                else:
                    start = Start(self.workers.ws_url, participant_token(
                        self.workers.api_key, self.workers.api_secret, info, live.resource_id),
                        info.SerializeToString(), transcode=transcode, offer=offer,
                        host_addresses=host_addresses, url=info.url if kind == "url" else "",
                        ice_ports=ice_ports,
                        allow_private_addresses=self.workers.url_allow_private_addresses)
                    with unwrap_single_exception():  # the block's own error, not a group
                        async with self.launch(start) as worker, \
                                trio.open_nursery() as reports:
                            live.worker = worker
                            reports.start_soon(self._apply_reports, live)
                            try:
                                yielded = True
                                yield live
                            except BaseException:
                                worker.drain = False  # cancelled or failed: leave at once
                                raise
                            finally:
                                reports.cancel_scope.cancel()
                    if worker.failure:
                        live.fail(worker.failure)
            except Refused:
                raise
            except (SessionFailure, TemplateError) as exc:  # no worker: the session ends
                live.fail(str(exc))
            except Exception as exc:  # a bug (ours or a library's): end this session only
                log.exception("%s: unexpected error", who)
                live.fail(f"internal error: {type(exc).__name__}")
            finally:
                if started:
                    await self._finish(live, who, trio.current_time() - began)
        if not yielded:  # stopped (or failed) while starting: the block never ran
            raise Refused(Refusal.STOPPED, f"the session ended while starting: "
                          f"{live.reason}", info)

    async def _outlive(self, replaced: LiveSession | None, who: str) -> None:
        """A takeover starts once the session it replaced has ended (bounded).

        Both publish as the ingress' participant identity, and the room keeps whichever
        joins last: a replaced worker still joining could otherwise push the new one
        out. Waiting also writes the old session's final state before the new one's
        BUFFERING.
        """
        if replaced is None or replaced.ended.is_set():
            return
        with trio.move_on_after(TAKEOVER_WAIT):
            await replaced.ended.wait()
            return
        log.warning("%s: the session it took over has not ended after %.0f s; going on",
                    who, TAKEOVER_WAIT)

    async def _finish(self, live: Live, who: str, elapsed: float) -> None:
        stop_reason = live.registration.stop_reason if live.registration else ""
        if stop_reason and live.status != pb.IngressState.ENDPOINT_ERROR:
            # stopped from outside: deleted, updated, taken over, shutdown
            live.status, live.reason = pb.IngressState.ENDPOINT_INACTIVE, stop_reason
        live.reason = live.reason or stop_reason or "cancelled"
        if not (live.kind == "url" and stop_reason == SHUTTING_DOWN):
            await self._write_final(live)  # (a shutdown leaves a pull to be resumed)
        failed = live.status == pb.IngressState.ENDPOINT_ERROR
        log.log(logging.WARNING if failed else logging.INFO, "%s ended after %.1f s: %s%s",
                who, elapsed, live.reason, live.labels.get("summary", ""))
        metrics.PUBLISH_STATUS.labels(live.kind,
                                      pb.IngressState.Status.Name(live.status)).inc()

    async def _write_final(self, live: Live) -> None:
        """Shielded and bounded: it runs in cleanup, possibly while cancelled."""
        ended = self.clock_ns()
        final = pb.IngressState(status=live.status, error=live.error,
                                resource_id=live.resource_id, started_at=live.started_at,
                                ended_at=ended, updated_at=ended)
        with trio.move_on_after(STATE_WRITE_TIMEOUT, shield=True):
            try:
                await self.control.update_state(live.ingress_id, final)
            except Exception:
                log.exception("could not write the final state of %s", live.ingress_id)

    async def _apply_reports(self, live: Live) -> None:
        """The worker's reports as PUBLISHING states (with input stats) until it exits."""
        assert live.worker is not None
        async for report in live.worker.reports:
            if report.status not in ("publishing", "stats"):
                continue
            state = publishing_state(report, live.resource_id, live.started_at,
                                     self.clock_ns())
            if await self.control.update_state(live.ingress_id, state) is not (
                    StateWrite.WRITTEN):
                log.info("state of %s not written: a newer session owns it", live.ingress_id)

    async def write_refusal(self, kind: SessionKind, info: pb.IngressInfo,
                            refused: Refused) -> None:
        """A session refused with nobody to tell (a URL pull) ends its ingress in ERROR,
        under a resource id of its own like any session that ended."""
        resource_id, now = new_resource_id(_PREFIX[kind]), self.clock_ns()
        log.warning("%s session %s of %s ended: %s", kind, resource_id, info.ingress_id,
                    refused.text)
        with trio.move_on_after(STATE_WRITE_TIMEOUT, shield=True):
            await self.control.update_state(info.ingress_id, pb.IngressState(
                status=pb.IngressState.ENDPOINT_ERROR, error=refused.text,
                resource_id=resource_id, started_at=now, ended_at=now, updated_at=now))


def publishing_state(report: StateReport, resource_id: str, started_at: int,
                     now_ns: int) -> pb.IngressState:
    state = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING,
                            resource_id=resource_id, started_at=started_at,
                            updated_at=now_ns, room_id=report.room_id)
    state.tracks.extend(models.TrackInfo.FromString(t) for t in report.tracks)
    if report.video:
        state.video.CopyFrom(pb.InputVideoState(**report.video))
    if report.audio:
        state.audio.CopyFrom(pb.InputAudioState(**report.audio))
    return state
