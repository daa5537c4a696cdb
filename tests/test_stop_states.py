"""States are true after any stop (issue 12), with real signals on the real service:
SIGTERM writes the final states of live sessions before the store closes; after a
SIGKILL, the next start corrects what the killed run left live."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio
from livekit.protocol import ingress as pb

from api.store import open_sqlite_store
from relay.service.ingest.control import RESTARTED
from tests.service import ServiceProcess
from tests.test_rtmp_ingest import Publisher, create, ffmpeg_cmd, state, url, wait_state

pytestmark = pytest.mark.slow

BUFFERING = pb.IngressState.ENDPOINT_BUFFERING


def stored_state(svc: ServiceProcess, ingress_id: str) -> pb.IngressState:
    """The state as the store holds it, read with no service running."""

    async def read() -> pb.IngressState:
        async with open_sqlite_store(Path(svc.config["data_dir"]) / "ingress.sqlite3") as store:
            info = await store.get(ingress_id)
            assert info is not None
            return info.state

    return trio.run(read)


def live_session(tmp_path: Path) -> tuple[ServiceProcess, pb.IngressInfo, Publisher]:
    """A service with one RTMP session publishing (BUFFERING: no LiveKit server)."""
    svc = ServiceProcess(tmp_path, rtmp_port=0)
    svc.start()
    info = create(svc, name="live when the node stops")
    return svc, info, Publisher(ffmpeg_cmd(url(svc, info.stream_key), 30))


def test_sigterm_writes_the_final_state_of_live_sessions(tmp_path: Path) -> None:
    svc, info, publisher = live_session(tmp_path)
    try:
        live = wait_state(svc, info.ingress_id, BUFFERING)
        started = time.monotonic()
        assert svc.stop() == 0
        took = time.monotonic() - started
    finally:
        publisher.kill()
    final = stored_state(svc, info.ingress_id)
    assert final.status == pb.IngressState.ENDPOINT_INACTIVE, final
    assert final.resource_id == live.resource_id and final.ended_at > live.started_at
    assert took < 10, took
    assert "server shutting down" in svc.log()


def test_after_sigkill_the_next_start_ends_what_was_live(tmp_path: Path) -> None:
    svc, info, publisher = live_session(tmp_path)
    try:
        live = wait_state(svc, info.ingress_id, BUFFERING)
        assert svc.proc is not None
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(5)
        svc.proc = None
    finally:
        publisher.kill()
    assert stored_state(svc, info.ingress_id).status == BUFFERING  # what the kill left
    svc.start()
    try:
        now = state(svc, info.ingress_id)  # corrected before the node took any session
        assert now.status == pb.IngressState.ENDPOINT_ERROR and now.error == RESTARTED
        assert now.resource_id == live.resource_id and now.ended_at > 0
    finally:
        svc.stop()
