"""The control plane of a node that works for a LiveKit server (cluster mode).

The server owns the ingresses (in Redis) and the Ingress API; this node is one of
its ingress workers, reached with psrpc (relay/psrpc, over relay/service/cluster/
redis_bus.py). It implements ingest's ControlPlane (relay/service/ingest/control.py):

* ``lookup``: ``IOInfo.GetIngressInfo`` by stream key (RTMP/WHIP publishers);
* ``update_state``: ``IOInfo.UpdateIngressState`` on every state change;
* ``run``: serves ``IngressInternal.StartIngress`` (URL pulls: claimed with an
  affinity from this node's free capacity, declined when it has none) and
  ``ListActiveIngress``, and, for each live session, ``IngressHandler.UpdateIngress``
  / ``DeleteIngress`` on the ingress' topic, which stop the session.

The server mints nothing for us: the session's room token is made from this node's
api_key/api_secret, as LiveKit's own ingress service does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial

import trio
from livekit.protocol import ingress as pb

from api.errors import TwirpError
from api.service import SessionControl as SessionCommands
from api.validation import transcoding_enabled
from relay import psrpc

from ..ingest.admission import Admission
from ..ingest.control import RESTARTED, StateWrite
from ..ingest.registry import SessionRegistry
from .journal import LiveJournal
from .redis_bus import RedisBus
from .rpc import RpcCaller, RpcFailed, Served, serve_rpc

log = logging.getLogger(__name__)

IO_TIMEOUT = 5.0  # seconds for an IOInfo call (the server answers from Redis)


def url_affinity(admission: Admission, draining: Callable[[], bool],
                 info: pb.IngressInfo) -> float:
    """How much this node wants a URL pull: the share of its cores still free after
    it, or -1 (decline) when it does not fit or the node is stopping, so the least
    loaded node that stays takes it."""
    if draining():
        return -1.0
    cost = admission.cost_for("url", transcoding_enabled(info))
    if not admission.admit(cost):
        return -1.0
    cpus = admission.status.cpus if admission.status is not None else 1
    return max(0.0, min(1.0, (admission.available() - cost) / cpus)) + 1e-6


class ClusterControlPlane:
    """ControlPlane over psrpc (see the module docstring)."""

    def __init__(self, bus: RedisBus, registry: SessionRegistry,
                 url_affinity: Callable[[pb.IngressInfo], float], journal: LiveJournal
                 ) -> None:
        self._bus = bus
        self._registry = registry
        self._url_affinity = url_affinity
        self._journal = journal
        self._io = RpcCaller(bus, psrpc.RpcClient("IOInfo", psrpc.new_id("CLI_")))
        self._changes_in, self._changes = trio.open_memory_channel[tuple[str, bool]](math.inf)
        registry.listeners.append(
            lambda ingress_id, live: self._changes_in.send_nowait((ingress_id, live)))

    # -- what sessions call ---------------------------------------------------------------

    async def lookup(self, stream_key: str) -> pb.IngressInfo | None:
        try:
            reply = await self._io.call(psrpc.GET_INGRESS_INFO,
                                        psrpc.GetIngressInfoRequest(stream_key=stream_key),
                                        timeout=IO_TIMEOUT)
        except RpcFailed as exc:
            if exc.error.code != "not_found":
                log.warning("GetIngressInfo failed: %s", exc)
            return None
        return reply.info if reply.HasField("info") else None

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> StateWrite:
        self._journal.record(ingress_id, state)
        try:
            await self._io.call(psrpc.UPDATE_INGRESS_STATE, psrpc.UpdateIngressStateRequest(
                ingress_id=ingress_id, state=state), timeout=IO_TIMEOUT)
        except RpcFailed as exc:
            if exc.error.code == "not_found":
                return StateWrite.GONE
            log.warning("UpdateIngressState of %s failed: %s", ingress_id, exc)
        return StateWrite.WRITTEN

    # -- what the server calls --------------------------------------------------------------

    async def run(self, commands: SessionCommands, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._io.run)
            await self._correct_a_killed_run()

            async def start_ingress(call: psrpc.Call) -> pb.IngressInfo | psrpc.RpcError:
                info = call.request.info
                # the worker that takes a pull stores the ingress (livekit's
                # CreateIngress leaves it to us: pkg/service/ingress.go)
                try:
                    await self._io.call(psrpc.CREATE_INGRESS, info, timeout=IO_TIMEOUT)
                except RpcFailed as exc:
                    return exc.error
                try:
                    commands.start_pull(info)
                except TwirpError as exc:  # no capacity after all
                    return psrpc.RpcError(exc.code, exc.msg)
                log.info("URL ingress %s claimed by this node", info.ingress_id)
                return info

            async def list_active(call: psrpc.Call) -> psrpc.ListActiveIngressResponse:
                sessions = self._registry.sessions()
                return psrpc.ListActiveIngressResponse(
                    ingress_ids=[ingress_id for ingress_id, _ in sessions],
                    ingress_sessions=[psrpc.IngressSession(ingress_id=i, resource_id=r)
                                      for i, r in sessions])

            await nursery.start(partial(
                serve_rpc, self._bus,
                psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_")),
                [Served(psrpc.START_INGRESS, start_ingress,
                        affinity=lambda call: self._url_affinity(call.request.info)),
                 Served(psrpc.LIST_ACTIVE_INGRESS, list_active)]))
            task_status.started()
            handlers: dict[str, trio.CancelScope] = {}
            async for ingress_id, live in self._changes:
                old = handlers.pop(ingress_id, None)
                if old is not None:
                    old.cancel()
                if live:
                    handlers[ingress_id] = scope = trio.CancelScope()
                    await nursery.start(self._serve_session, ingress_id, commands, scope)

    async def _correct_a_killed_run(self) -> None:
        """Report what the previous run left live as over (see journal.py)."""
        left = self._journal.load()
        self._journal.clear()
        for ingress_id, state in left.items():
            log.warning("session %s of %s was live when this node stopped: %s",
                        state.resource_id, ingress_id, RESTARTED)
            state.status, state.error = pb.IngressState.ENDPOINT_ERROR, RESTARTED
            state.ended_at = state.updated_at = time.time_ns()
            await self.update_state(ingress_id, state)

    async def _serve_session(self, ingress_id: str, commands: SessionCommands,
                             scope: trio.CancelScope, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """IngressHandler calls on the topic of one live session, until `scope` is
        cancelled (the session ended); started once the topic is subscribed."""

        def stopping(reason: str) -> Callable[[psrpc.Call], object]:
            async def handler(call: psrpc.Call) -> pb.IngressState:
                commands.stop(ingress_id, reason)
                return pb.IngressState(status=pb.IngressState.ENDPOINT_INACTIVE)

            return handler

        with scope:
            await serve_rpc(
                self._bus, psrpc.RpcServer("IngressHandler", psrpc.new_id("SRV_")),
                [Served(psrpc.UPDATE_INGRESS, stopping("ingress updated"), topic=ingress_id),
                 Served(psrpc.DELETE_INGRESS, stopping("ingress deleted"), topic=ingress_id)],
                task_status=task_status)
