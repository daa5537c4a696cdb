"""The worker template (relay/worker/template.py) and its client
(relay/service/ingest/worker_template.py), on real processes: workers forked with
their exit statuses reported, the template replaced after a worker killed by a
signal, and a retired template leaving with its last worker."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from relay.service.ingest.worker_client import open_session_worker, worker_environment
from relay.service.ingest.worker_template import (
    TemplateError,
    WorkerTemplate,
    fork_worker,
    worker_template,
)
from relay.wire import Start
from tests.service import alive


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def template() -> Iterator[WorkerTemplate]:
    made = WorkerTemplate(worker_environment())
    made.warm()
    yield made
    made.retire()


async def test_a_forked_worker_is_a_child_of_the_template_and_says_how_it_ended(
        template: WorkerTemplate) -> None:
    first = await fork_worker(template, {})
    assert parent(first.pid) == template.pid
    with trio.fail_after(5):  # named by itself, first thing after the fork
        while Path(f"/proc/{first.pid}/comm").read_text().strip() != "ingress-worker":
            await trio.sleep(0.01)
    await first.stdin.aclose()  # no Start: the worker leaves, status 0
    assert await first.wait() == 0
    second = await fork_worker(template, {})
    second.kill()
    assert await second.wait() == -signal.SIGKILL
    await first.aclose()
    await second.aclose()


async def test_the_environment_of_the_request_reaches_the_worker(
        template: WorkerTemplate) -> None:
    worker = await fork_worker(template, {"INGRESS_WORKER_MEMORY_MB": "1234"})
    try:
        with trio.fail_after(10):
            while "Max address space" not in (limits := Path(
                    f"/proc/{worker.pid}/limits").read_text()) or str(1234 << 20) not in limits:
                await trio.sleep(0.02)
    finally:
        worker.kill()
        await worker.wait()
        await worker.aclose()


async def test_a_malformed_request_is_dropped_and_the_next_one_served(
        template: WorkerTemplate) -> None:
    control = template._control
    assert control is not None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        socket.send_fds(control, [json.dumps({}).encode()], [theirs.fileno()])  # 1 of 3
        socket.send_fds(control, [b"not json"], [0, 1, 2])
    worker = await fork_worker(template, {})
    await worker.stdin.aclose()
    assert await worker.wait() == 0
    await worker.aclose()


async def test_a_retired_template_leaves_with_its_last_worker(
        template: WorkerTemplate) -> None:
    worker = await fork_worker(template, {})
    old = template.pid
    assert old is not None
    template.retire()
    assert alive(old)  # its worker still runs
    await worker.stdin.aclose()
    assert await worker.wait() == 0  # the retired template still reported it
    with trio.fail_after(5):
        while alive(old):
            await trio.sleep(0.05)
    await worker.aclose()
    newer = await fork_worker(template, {})  # from a new template
    assert template.pid not in (None, old) and parent(newer.pid) == template.pid
    newer.kill()
    await newer.wait()
    await newer.aclose()


async def test_a_worker_killed_by_a_signal_retires_the_template() -> None:
    """What a crashing decoder looks like: the next worker comes from a new template,
    with a new address-space layout."""
    with socket.socket() as silent:  # a LiveKit server that never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = Start(f"ws://127.0.0.1:{silent.getsockname()[1]}", "token", b"")
        async with open_session_worker(start) as worker:
            before = worker_template(worker_environment()).pid
            os.kill(worker.process.pid, signal.SIGSEGV)
            with trio.fail_after(10):
                await worker.exited.wait()
        assert worker.failure == "session worker crashed (SIGSEGV)"
        async with open_session_worker(start) as worker:
            after = worker_template(worker_environment()).pid
            assert after not in (None, before)
            assert parent(worker.process.pid) == after


async def test_a_template_that_cannot_start_is_a_clear_error() -> None:
    """A session then ends in ERROR with this text (lifetime.py), not a crash."""
    broken = WorkerTemplate({"PYTHONHOME": "/nonexistent"})  # Python cannot start
    with pytest.raises(TemplateError, match="the worker template did not start"):
        await fork_worker(broken, {})
