"""The live ingest sessions of this node, each owned by a trio cancel scope.

Whatever ends a session (DeleteIngress, UpdateIngress, the source disconnecting,
an error, a takeover by a new publisher) ends it by cancelling its scope, so its
cleanup runs in exactly one place: the session's own `finally`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)


@dataclass
class LiveSession:
    ingress_id: str
    resource_id: str
    cancel_scope: trio.CancelScope
    stop_reason: str = field(default="")
    # the session this one took over, until it has ended (see SessionHost.session)
    replaced: LiveSession | None = None
    ended: trio.Event = field(default_factory=trio.Event)


class SessionRegistry:
    """At most one live session per ingress; a newer one replaces (cancels) the older."""

    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}
        self._emptied = trio.Event()
        self._emptied.set()
        # told (ingress_id, True) when an ingress gets a live session and (ingress_id,
        # False) when it has none any more: a cluster node serves its topic meanwhile
        self.listeners: list[Callable[[str, bool], None]] = []

    def __len__(self) -> int:
        return len(self._live)

    def sessions(self) -> list[tuple[str, str]]:
        """(ingress_id, resource_id) of each live session."""
        return [(s.ingress_id, s.resource_id) for s in self._live.values()]

    def _tell(self, ingress_id: str, live: bool) -> None:
        for listener in self.listeners:
            listener(ingress_id, live)

    @contextmanager
    def register(self, ingress_id: str, resource_id: str,
                 cancel_scope: trio.CancelScope) -> Iterator[LiveSession]:
        """Own the ingress for the duration of the block; an older owner is cancelled."""
        old = self._live.get(ingress_id)
        if old is not None:
            old.stop_reason = f"taken over by {resource_id}"
            old.cancel_scope.cancel()
        session = LiveSession(ingress_id, resource_id, cancel_scope, replaced=old)
        if self._emptied.is_set():
            self._emptied = trio.Event()
        self._live[ingress_id] = session
        if old is None:
            self._tell(ingress_id, True)
        try:
            yield session
        finally:
            session.ended.set()
            session.replaced = None
            if self._live.get(ingress_id) is session:
                del self._live[ingress_id]
                self._tell(ingress_id, False)
                if not self._live:
                    self._emptied.set()

    def stop(self, ingress_id: str, reason: str) -> bool:
        session = self._live.get(ingress_id)
        if session is None:
            return False
        log.info("stopping session %s of %s: %s", session.resource_id, ingress_id, reason)
        session.stop_reason = reason
        session.cancel_scope.cancel()
        return True

    def stop_all(self, reason: str) -> None:
        for ingress_id in list(self._live):
            self.stop(ingress_id, reason)

    async def wait_empty(self) -> None:
        """Return once no session is registered (each has run its cleanup)."""
        await self._emptied.wait()
