"""WHIP ingest: the HTTP resource side (RFC 9725) around per-session workers.

`POST /w/<key>` (or `POST /w` with the key as Bearer token) carries the
publisher's SDP offer. The ingress is checked (REFERENCE §4, §7), the offer is
inspected by the sans-IO `whip` package, the node's CPU capacity is checked
(relay/admission.py: 429 "server capacity exceeded" when the session does not
fit; an admitted session holds its promise until it ends), then a session worker
is started with the offer: it answers, joins the room and receives the media
over its own peer connection (relay/whip_session.py). The answer goes back in
the 201 with the resource's Location; `DELETE` on that Location ends the session.

Each session is a task in the ingest's nursery, registered in the
SessionRegistry under its ingress id, so DeleteIngress/UpdateIngress, a newer
publisher on the same key, a DELETE, the publisher leaving and a failure all end
it by cancelling one scope; its `finally` writes the final state.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio
from livekit.protocol import ingress as pb

import whip
from api.ids import WHIP_RESOURCE_PREFIX, new_resource_id
from api.store import IngressStore
from api.validation import transcoding_enabled

from . import metrics
from .admission import CAPACITY_EXCEEDED, Admission, Promise
from .pipeline import apply_reports
from .sessions import SessionRegistry, write_final_state
from .tokens import participant_token
from .wire import IceRestart, RemoteCandidates, Start
from .worker_client import SessionWorker, open_session_worker

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 10.0  # the worker's answer to an offer
ICE_RESTART_TIMEOUT = 5.0  # the worker's new ICE credentials after a restart PATCH
MAX_OFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"


def _error(status: int, text: str) -> HttpReply:
    return HttpReply(status, text.encode() + b"\n")


class WhipIngest:
    """The WHIP resources of this node; `handle()` is the HTTP entry point."""

    def __init__(self, store: IngressStore, sessions: SessionRegistry, *, ws_url: str,
                 api_key: str, api_secret: str, host_addresses: tuple[str, ...] = (),
                 ice_ports: tuple[int, int] = (0, 0),
                 draining: Callable[[], bool] = lambda: False,
                 admission: Admission | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.sessions = sessions
        self.ws_url = ws_url
        self.api_key = api_key
        self.api_secret = api_secret
        self.host_addresses = host_addresses
        self.ice_ports = ice_ports
        self.draining = draining
        self.admission = admission or Admission.unlimited()
        self.clock_ns = clock_ns
        self._nursery: trio.Nursery | None = None
        self._live: dict[str, _LiveWhip] = {}  # by resource id

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the sessions' nursery until cancelled (sessions end with it)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- HTTP ------------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> HttpReply:
        parts = [p for p in path.split("/") if p][1:]  # after "w"
        if method == "OPTIONS":
            return HttpReply(204, headers=(("accept-post", "application/sdp"),))
        if method == "POST" and len(parts) <= 1:
            key = parts[0] if parts else _bearer(headers.get("authorization", ""))
            if not key:
                return _error(401, "missing stream key (POST /w/<key> or Bearer <key>)")
            return await self.offer(key, headers.get("content-type", ""), body)
        if len(parts) == 2 and method == "DELETE":
            return await self.delete(*parts)
        if len(parts) == 2 and method == "PATCH":
            return await self.patch(*parts, headers, body)
        return _error(405 if len(parts) <= 2 else 404, f"{method} {path} is not a WHIP route")

    async def offer(self, key: str, content_type: str, body: bytes) -> HttpReply:
        if content_type.split(";")[0].strip().lower() != "application/sdp":
            return _error(415, "the offer must be application/sdp")
        if self.draining():
            return _error(503, "server shutting down")
        info = await self.store.get_by_stream_key(key)
        if info is None:
            return _error(404, "unknown stream key")
        if info.input_type != pb.IngressInput.WHIP_INPUT:
            return _error(400, "ingress is not a WHIP ingress")
        if info.HasField("enabled") and not info.enabled:
            return _error(403, "session is disabled")
        if not info.room_name:
            return _error(400, "no room name")
        transcode = transcoding_enabled(info)
        try:
            summary = whip.inspect_offer(body, transcoding=transcode)
        except whip.WhipOfferError as exc:
            metrics.PUBLISH_STATUS.labels("whip", "rejected").inc()
            return _error(exc.status, exc.message)
        if self._nursery is None:
            return _error(503, "WHIP ingest is not running")
        promise = self.admission.reserve(self.admission.cost_for("whip", transcode))
        if promise is None:
            metrics.PUBLISH_STATUS.labels("whip", "rejected").inc()
            return _error(429, CAPACITY_EXCEEDED)
        resource_id = new_resource_id(WHIP_RESOURCE_PREFIX)
        try:
            answer = await self._nursery.start(self._session, info, resource_id,
                                               summary.sdp, transcode, summary.ice_ufrag,
                                               promise)
        except SessionRefused as exc:
            return _error(exc.status, str(exc))
        metrics.INGRESS_REQUESTS.labels("whip", "true" if transcode else "false").inc()
        return HttpReply(201, answer.encode(), (("location", f"/w/{key}/{resource_id}"),
                                                ("etag", _etag(answer))), "application/sdp")

    async def delete(self, key: str, resource_id: str) -> HttpReply:
        info = await self.store.get_by_stream_key(key)
        live = self.sessions.get(info.ingress_id) if info is not None else None
        if info is None or live is None or live.resource_id != resource_id:
            return _error(404, "no such WHIP session")
        self.sessions.stop(info.ingress_id, "the publisher ended the session (DELETE)")
        return HttpReply(200)

    async def patch(self, key: str, resource_id: str, headers: dict[str, str],
                    body: bytes) -> HttpReply:
        """Trickled candidates and ICE restarts go to the session's worker."""
        live = self._live.get(resource_id)
        if live is None or live.key != key:
            return _error(404, "no such WHIP session")
        if headers.get("content-type", "").split(";")[0].strip().lower() != (
                "application/trickle-ice-sdpfrag"):
            return _error(415, "a PATCH must be application/trickle-ice-sdpfrag")
        if_match = headers.get("if-match", "*").strip()
        if if_match not in ("*", live.etag):
            return _error(412, "the If-Match entity tag does not name this session")
        try:
            update = whip.parse_trickle(body)
        except whip.WhipOfferError as exc:
            return _error(exc.status, exc.message)
        candidates = tuple((c.mid or "", c.raw) for c in update.candidates)
        if update.is_ice_restart(live.ufrag):
            assert update.ice_ufrag is not None and update.ice_pwd is not None
            return await self._restart_ice(resource_id, live, IceRestart(
                update.ice_ufrag, update.ice_pwd, candidates, update.end_of_candidates))
        if update.candidates or update.end_of_candidates:
            await live.worker.send(RemoteCandidates(candidates, update.end_of_candidates))
        return HttpReply(204)

    async def _restart_ice(self, resource_id: str, live: _LiveWhip, restart: IceRestart
                           ) -> HttpReply:
        """RFC 9725 section 4.3.2: 200 with our new credentials and a new ETag; the
        publisher's new ufrag is the session's from now on."""
        answer = await live.worker.restart_ice(restart, ICE_RESTART_TIMEOUT)
        if answer is None:
            return _error(503, "the session did not answer the ICE restart; try again, or "
                          "DELETE it and POST a new offer")
        if not answer.ufrag:
            return _error(422, f"ICE restart is not possible: {answer.error}")
        fragment = f"a=ice-ufrag:{answer.ufrag}\r\na=ice-pwd:{answer.pwd}\r\n"
        etag = _etag(fragment)
        if self._live.get(resource_id) is live:
            self._live[resource_id] = replace(live, etag=etag, ufrag=restart.ufrag)
        log.info("whip session %s: ICE restarted", resource_id)
        return HttpReply(200, fragment.encode(), (("etag", etag),),
                         "application/trickle-ice-sdpfrag")

    # -- sessions --------------------------------------------------------------------

    async def _session(self, info: pb.IngressInfo, resource_id: str, offer: str,
                       transcode: bool, ufrag: str, promise: Promise,
                       task_status: trio.TaskStatus[str]) -> None:
        with promise:  # the session's CPU promise ends with it, however it ends
            await self._run_session(info, resource_id, offer, transcode, ufrag, task_status)

    async def _run_session(self, info: pb.IngressInfo, resource_id: str, offer: str,
                           transcode: bool, ufrag: str, task_status: trio.TaskStatus[str]
                           ) -> None:
        ingress_id = info.ingress_id
        started_at = self.clock_ns()
        who = f"whip session {resource_id} of {ingress_id}"
        start = Start(self.ws_url, participant_token(self.api_key, self.api_secret, info,
                                                     resource_id),
                      info.SerializeToString(), transcode=transcode, offer=offer,
                      host_addresses=self.host_addresses, ice_ports=self.ice_ports)
        status, error, reason = pb.IngressState.ENDPOINT_INACTIVE, "", ""
        answered = False
        with trio.CancelScope() as scope, self.sessions.register(ingress_id, resource_id,
                                                                 scope) as live:
            try:
                await self.store.update_state(ingress_id, pb.IngressState(
                    status=pb.IngressState.ENDPOINT_BUFFERING, resource_id=resource_id,
                    started_at=started_at, updated_at=started_at))
                async with open_session_worker(start) as worker:
                    with trio.move_on_after(ANSWER_TIMEOUT):
                        await worker.answered.wait()
                    if worker.answer is None:
                        with trio.move_on_after(2.0):  # let a failing worker say why
                            await worker.exited.wait()
                        raise SessionRefused(400 if worker.failure else 500, worker.failure
                                             or "the session worker did not answer the offer")
                    answered = True
                    self._live[resource_id] = _LiveWhip(info.stream_key, worker,
                                                        _etag(worker.answer), ufrag)
                    task_status.started(worker.answer)
                    log.info("%s: publishing to room %r as %r", who, info.room_name,
                             info.participant_identity)
                    await apply_reports(self.store, worker, ingress_id, resource_id,
                                        started_at, self.clock_ns)
                    worker.drain = False
                if worker.failure:
                    status, error = pb.IngressState.ENDPOINT_ERROR, worker.failure
                    reason = error
                else:
                    reason = "the publisher left"
            except SessionRefused as exc:
                status, error, reason = pb.IngressState.ENDPOINT_ERROR, str(exc), str(exc)
                if not answered:
                    await write_final_state(self.store, self.clock_ns, ingress_id,
                                            resource_id, started_at, status, error)
                    raise
            finally:
                self._live.pop(resource_id, None)
                if not reason:
                    reason = live.stop_reason or "cancelled"
                if answered:
                    await write_final_state(self.store, self.clock_ns, ingress_id,
                                            resource_id, started_at, status, error)
                log.log(logging.WARNING if error else logging.INFO, "%s ended: %s", who, reason)
                metrics.PUBLISH_STATUS.labels("whip", pb.IngressState.Status.Name(status)).inc()
        if not answered:  # cancelled while starting: a newer publish, a delete, shutdown
            raise SessionRefused(409, f"the session ended before it answered: {reason}")


@dataclass(frozen=True)
class _LiveWhip:
    key: str
    worker: SessionWorker
    etag: str
    ufrag: str  # the publisher's ICE username fragment: another one is an ICE restart


def _etag(answer: str) -> str:
    return '"' + hashlib.sha256(answer.encode()).hexdigest()[:16] + '"'


class SessionRefused(Exception):
    """The worker could not take the offer; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bearer(value: str) -> str:
    """The stream key from an Authorization header, with or without the word Bearer."""
    value = value.strip()
    if value.lower().startswith("bearer "):
        value = value[7:].strip()
    return value
