"""WHIP ingest: the HTTP resource side (RFC 9725) around per-session workers.

`POST /w/<key>` (or `POST /w` with the key as Bearer token) carries the
publisher's SDP offer. The ingress is checked (REFERENCE §4, §7), the offer is
inspected by the sans-IO `whip` package, the node's CPU capacity is checked
(admission.py: 429 "server capacity exceeded" when the session does not
fit; an admitted session holds its promise until it ends), then a session worker
is started with the offer: it answers, joins the room and receives the media
over its own peer connection (relay/worker/whip_input.py). The answer goes back in
the 201 with the resource's Location; `DELETE` on that Location ends the session.

Each session is a task in the front's nursery running the host's session
lifetime (lifetime.py: checks, admission, registration, BUFFERING, the worker,
its reports, the final state), so DeleteIngress/UpdateIngress, a newer publisher
on the same key, a DELETE, the publisher leaving and a failure all end it the
same way.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import trio
from livekit.protocol import ingress as pb

import whip
from api.validation import transcoding_enabled
from relay.wire import IceRestart, RemoteCandidates

from .lifetime import Refusal, Refused, SessionHost
from .worker_client import SessionWorker

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 10.0  # the worker's answer to an offer
ICE_RESTART_TIMEOUT = 5.0  # the worker's new ICE credentials after a restart PATCH
MAX_OFFER_BYTES = 64 * 1024
REFUSAL_STATUS = {Refusal.SHUTTING_DOWN: 503, Refusal.UNKNOWN_KEY: 404,
                  Refusal.WRONG_INPUT: 400, Refusal.DISABLED: 403, Refusal.NO_ROOM: 400,
                  Refusal.CAPACITY: 429, Refusal.GONE: 404, Refusal.STOPPED: 409}


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"


def _error(status: int, text: str) -> HttpReply:
    return HttpReply(status, text.encode() + b"\n")


class WhipFront:
    """The WHIP resources of this node; `handle()` is the HTTP entry point."""

    def __init__(self, host: SessionHost, *, host_addresses: tuple[str, ...] = (),
                 ice_ports: tuple[int, int] = (0, 0)) -> None:
        self.host = host
        self.host_addresses = host_addresses
        self.ice_ports = ice_ports
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
        try:
            info = await self.host.lookup("whip", key)
        except Refused as exc:
            return _error(REFUSAL_STATUS[exc.reason], exc.text)
        try:
            summary = whip.inspect_offer(body, transcoding=transcoding_enabled(info))
        except whip.WhipOfferError as exc:
            self.host.rejected("whip")
            return _error(exc.status, exc.message)
        if self._nursery is None:
            return _error(503, "WHIP ingest is not running")
        try:
            answer, resource_id = await self._nursery.start(self._session, info, summary)
        except Refused as exc:
            return _error(REFUSAL_STATUS[exc.reason], exc.text)
        except SessionRefused as exc:
            return _error(exc.status, str(exc))
        return HttpReply(201, answer.encode(), (("location", f"/w/{key}/{resource_id}"),
                                                ("etag", _etag(answer))), "application/sdp")

    async def delete(self, key: str, resource_id: str) -> HttpReply:
        live = self._live.get(resource_id)
        if live is None or live.key != key:
            return _error(404, "no such WHIP session")
        self.host.registry.stop(live.ingress_id, "the publisher ended the session (DELETE)")
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

    async def _session(self, info: pb.IngressInfo, summary: whip.OfferSummary,
                       task_status: trio.TaskStatus[tuple[str, str]]) -> None:
        """One session: started (answer, resource id) once the worker answered."""
        refused: SessionRefused | None = None
        answered = False
        async with self.host.session("whip", info, offer=summary.sdp,
                                     host_addresses=self.host_addresses,
                                     ice_ports=self.ice_ports) as live:
            worker = live.worker
            assert worker is not None, "WHIP runs only with a LiveKit server configured"
            try:
                with trio.move_on_after(ANSWER_TIMEOUT):
                    await worker.answered.wait()
                if worker.answer is None:
                    with trio.move_on_after(2.0):  # let a failing worker say why
                        await worker.exited.wait()
                    raise SessionRefused(400 if worker.failure else 500, worker.failure
                                         or "the session worker did not answer the offer")
                self._live[live.resource_id] = _LiveWhip(
                    info.stream_key, info.ingress_id, worker, _etag(worker.answer),
                    summary.ice_ufrag)
                answered = True
                task_status.started((worker.answer, live.resource_id))
                await live.worker_exited()
                live.end("the publisher left")
            except SessionRefused as exc:
                live.fail(str(exc))
                refused = exc
            finally:
                self._live.pop(live.resource_id, None)
        if refused is not None:
            raise refused
        if not answered:  # cancelled while starting: a newer publish, a delete, shutdown
            raise SessionRefused(409, f"the session ended before it answered: {live.reason}")


@dataclass(frozen=True)
class _LiveWhip:
    key: str
    ingress_id: str
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
