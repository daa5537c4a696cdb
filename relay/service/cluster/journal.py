"""What a cluster node must remember across a crash: the sessions it left live.

The LiveKit server keeps every ingress; after a SIGKILL or an OOM kill nobody would
tell it that this node's sessions are over, and their ingresses would read
BUFFERING/PUBLISHING until their next publish. So the node keeps, in a small file
under data_dir, the last live state it reported for each of its sessions, and on its
next start reports each as ENDPOINT_ERROR "the node restarted while the session was
live", with the session's own started_at (the server refuses it if a newer session
of that ingress has reported since).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from google.protobuf import json_format
from livekit.protocol import ingress as pb

from ..ingest.control import ACTIVE


class LiveJournal:
    """ingress id -> the last live state reported, kept in `path` (0600, in a 0700
    folder), rewritten whole on each change (a handful of sessions per node)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._live: dict[str, pb.IngressState] = {}

    def load(self) -> dict[str, pb.IngressState]:
        """What the previous run left live (an unreadable file: nothing)."""
        try:
            raw = json.loads(self.path.read_text())
            return {ingress_id: json_format.ParseDict(state, pb.IngressState())
                    for ingress_id, state in raw.items()}
        except (OSError, ValueError, json_format.ParseError, AttributeError):
            return {}

    def record(self, ingress_id: str, state: pb.IngressState) -> None:
        """Note a reported state: live ones are kept, any other ends the entry. The
        file is rewritten only when what the correction needs changes (the session and
        its status), not for every refresh of a live session's input statistics."""
        if state.status in ACTIVE:
            old = self._live.get(ingress_id)
            kept = pb.IngressState()
            kept.CopyFrom(state)
            self._live[ingress_id] = kept
            if old is not None and _session_of(old) == _session_of(state):
                return
        elif self._live.pop(ingress_id, None) is None:
            return
        self._write()

    def clear(self) -> None:
        self._live.clear()
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        data = {ingress_id: json_format.MessageToDict(state)
                for ingress_id, state in self._live.items()}
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(temporary, self.path)


def _session_of(state: pb.IngressState) -> tuple[int, str, int]:
    return state.status, state.resource_id, state.started_at
