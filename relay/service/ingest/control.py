"""The control plane as the ingest side sees it: one small interface, two directions.

Whoever owns the ingresses (this node's SQLite store and Twirp API today; a LiveKit
server over Redis/psrpc in cluster mode) is, for the sessions, three calls and a
stream of commands:

* ``lookup(stream_key)``: the ingress a publisher names (RTMP/WHIP), or None.
  LiveKit's ``IOInfo.GetIngressInfo``.
* ``update_state(ingress_id, state)``: write a session's state (BUFFERING,
  PUBLISHING, the final one); the owner refuses a state older than the stored one.
  LiveKit's ``IOInfo.UpdateIngressState``.
* ``run(commands)``: deliver the owner's commands to this node's sessions until
  cancelled: stop a session (DeleteIngress, UpdateIngress), start a URL pull
  (CreateIngress of a URL ingress, or one to resume). In cluster mode that is the
  psrpc server of ``IngressInternal``/``IngressHandler``; locally the Twirp API
  calls :class:`SessionCommands` in-process and ``run`` only resumes the pulls a
  restart interrupted. (``SessionCommands`` is api.service's ``SessionControl``:
  the local API and any other control plane give the same two commands.)

The fronts and the session lifetime (lifetime.py) know only this Protocol; a second
implementation plugs in by being passed to :class:`~relay.service.ingest.lifetime.
SessionHost` in relay/service/node.py.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Protocol

import trio
from livekit.protocol import ingress as pb

from api.service import SessionControl as SessionCommands
from api.store import IngressStore

log = logging.getLogger(__name__)

ACTIVE = (pb.IngressState.ENDPOINT_BUFFERING, pb.IngressState.ENDPOINT_PUBLISHING)
RESTARTED = "the node restarted while the session was live"


class StateWrite(enum.Enum):
    """What became of a state written through the control plane."""

    WRITTEN = "written"
    STALE = "stale"  # a newer session's state is stored: ours was refused
    GONE = "gone"  # the ingress no longer exists (deleted)


class ControlPlane(Protocol):
    async def lookup(self, stream_key: str) -> pb.IngressInfo | None:
        """The ingress with this stream key, or None if there is none."""

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> StateWrite:
        """Store a session's state; refused (STALE) when its started_at is older than
        the stored state's, GONE when the ingress was deleted."""

    async def run(self, commands: SessionCommands, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver commands to `commands` until cancelled; started once it listens."""


class LocalControlPlane:
    """The standalone node's control plane: the SQLite store, and the Twirp API
    (api/service.py) in the same process calling SessionCommands directly."""

    def __init__(self, store: IngressStore) -> None:
        self.store = store

    async def lookup(self, stream_key: str) -> pb.IngressInfo | None:
        return await self.store.get_by_stream_key(stream_key)

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> StateWrite:
        if await self.store.update_state(ingress_id, state):
            return StateWrite.WRITTEN
        if await self.store.get(ingress_id) is None:
            return StateWrite.GONE
        return StateWrite.STALE

    async def run(self, commands: SessionCommands, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Correct what the previous run of the node left live (it was killed, or
        crashed), before any new session starts, then idle. A URL pull is resumed (a
        URL ingress that ended stays ended); an RTMP or WHIP session is over, its
        publisher gone with the old process: ENDPOINT_ERROR, RESTARTED."""
        for info in await self.store.list():
            if info.state.status not in ACTIVE:
                continue
            if info.input_type == pb.IngressInput.URL_INPUT:
                log.info("resuming the pull of %s, interrupted by a restart", info.ingress_id)
                commands.start_pull(info)
                continue
            log.warning("session %s of %s was live when this node stopped: %s",
                        info.state.resource_id, info.ingress_id, RESTARTED)
            state = pb.IngressState()
            state.CopyFrom(info.state)  # same session (started_at): the store takes it
            state.status, state.error = pb.IngressState.ENDPOINT_ERROR, RESTARTED
            state.ended_at = state.updated_at = time.time_ns()
            await self.store.update_state(info.ingress_id, state)
        task_status.started()
        await trio.sleep_forever()
