"""The service's side of a session worker process (relay/worker/main.py).

`open_session_worker()` has the worker template fork the worker
(worker_template.py), sends it `Start`, and yields a `SessionWorker` to feed
media events to and read state reports from. Leaving the
block ends the child: EndOfStream and closed stdin first (it leaves the room
cleanly), a kill if it has not exited within `EXIT_GRACE` seconds. The block never
outlives the child, and a crash of the child never raises into the service: it
becomes `SessionWorker.failure`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from relay.wire import (
    EndOfStream,
    IceCredentials,
    IceRestart,
    Message,
    MessageReader,
    Start,
    StateReport,
    WhipAnswer,
    WireError,
    WorkerLimits,
    encode,
)

from ..trio_util import unwrap_single_exception
from .worker_template import TemplateError, fork_worker, worker_template

log = logging.getLogger(__name__)

EXIT_GRACE = 2.0
REPORT_QUEUE = 64


class WorkerProcess(Protocol):
    """What a session needs of its worker's process: a `trio.Process`, or a
    `ForkedWorker` (worker_template.py)."""

    pid: int
    returncode: int | None
    stdin: trio.abc.SendStream | None
    stdout: trio.abc.ReceiveStream | None

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class SessionWorker:
    def __init__(self, process: WorkerProcess) -> None:
        self.process = process
        self.failure = ""  # why the worker failed, once it has
        self._reports_send, self.reports = trio.open_memory_channel[StateReport](REPORT_QUEUE)
        self.exited = trio.Event()
        self.answer: str | None = None  # WHIP: the worker's SDP answer
        self.answered = trio.Event()
        self._ice_send, self._ice_answers = trio.open_memory_channel[IceCredentials](1)
        self._ice_lock = trio.Lock()

    drain = True  # False: leave the room at once (delete, update, takeover, failure)
    # We killed it, after the session was over, for exiting too slowly (a busy machine):
    # not a crash of the session.
    killed = False

    async def send(self, message: Message) -> bool:
        """Send one message; False once the worker is gone (its stdin closed)."""
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(encode(message))
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    async def restart_ice(self, restart: IceRestart, timeout: float) -> IceCredentials | None:
        """Send a WHIP ICE restart; the worker's new credentials, or None when it did
        not answer in time (or is gone). One restart at a time."""
        async with self._ice_lock:
            while True:  # an answer that came after an earlier restart's timeout
                try:
                    self._ice_answers.receive_nowait()
                except trio.WouldBlock:
                    break
            if not await self.send(restart):
                return None
            with trio.move_on_after(timeout):
                return await self._ice_answers.receive()
            return None

    async def _read_reports(self) -> None:
        assert self.process.stdout is not None
        reader = MessageReader()
        async with self._reports_send:
            try:
                async for data in self.process.stdout:
                    reader.receive_data(data)
                    for message in reader:
                        if isinstance(message, WhipAnswer):
                            self.answer = message.sdp
                            self.answered.set()
                        elif isinstance(message, IceCredentials):
                            # dropped when full: an answer nobody waits for any more
                            with contextlib.suppress(trio.WouldBlock):
                                self._ice_send.send_nowait(message)
                        elif isinstance(message, StateReport):
                            if message.status == "error" and not self.failure:
                                self.failure = message.error
                            await self._reports_send.send(message)
            except (WireError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.failure = self.failure or f"session worker protocol error: {exc}"
        await self.process.wait()
        self.note_exit()

    def note_exit(self) -> None:
        """Record how the process ended (idempotent); a crash becomes `failure`."""
        code = self.process.returncode
        if code is None or self.exited.is_set():
            return
        if code and not self.failure and not self.killed:
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                self.failure = f"session worker crashed ({name})"
            else:
                self.failure = f"session worker exited with status {code}"
        self.exited.set()


# What a worker may see of the service's environment. Not the API key or secret
# (LIVEKIT_API_*, INGRESS_CONFIG_BODY may hold them): a worker parses hostile media
# with C decoders, and its join token, passed in `Start`, is all it needs.
WORKER_ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
                      "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "INGRESS_WORKER_LOG",
                      "INGRESS_URL_STALL_TIMEOUT", "http_proxy", "https_proxy", "no_proxy",
                      "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def worker_environment(environ: Mapping[str, str] | None = None,
                       limits: WorkerLimits | None = None) -> dict[str, str]:
    """The environment a session worker starts with (see WORKER_ENVIRONMENT), with
    the resource limits it sets on itself (relay/worker/limits.py)."""
    environ = os.environ if environ is None else environ
    kept = {k: v for k, v in environ.items() if k in WORKER_ENVIRONMENT or k.startswith("LC_")}
    # the worker leaves when this process is gone (relay/worker/main.py)
    return kept | (limits or WorkerLimits()).environment() | {
        "INGRESS_SERVICE_PID": str(os.getpid())}


async def warm_worker_template() -> None:
    """Start the worker template now (its imports, in a thread), so that the first
    session does not wait for it; a failure is logged and the first session tries
    again."""
    try:
        await trio.to_thread.run_sync(worker_template(worker_environment()).warm)
    except TemplateError as exc:
        log.warning("%s", exc)


@asynccontextmanager
async def open_session_worker(start: Start, *, limits: WorkerLimits | None = None
                              ) -> AsyncIterator[SessionWorker]:
    template = worker_template(worker_environment())
    process = await fork_worker(template, (limits or WorkerLimits()).environment())
    try:
        async with run_session_worker(process, start) as worker:
            yield worker
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is not None and process.returncode < 0:
                # killed by a signal (a crash, or by us): the next worker gets a new
                # layout (in a thread: a template may be starting, holding its lock)
                await trio.to_thread.run_sync(template.retire)
            await process.aclose()


@asynccontextmanager
async def run_session_worker(process: WorkerProcess, start: Start
                             ) -> AsyncIterator[SessionWorker]:
    """A worker process that has just started, as a session: `Start` sent, its
    reports read, and stopped (or killed) when the block ends."""
    worker = SessionWorker(process)
    try:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker._read_reports)
                await worker.send(start)
                try:
                    yield worker
                finally:
                    with trio.CancelScope(shield=True):
                        await _stop(worker)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def _stop(worker: SessionWorker) -> None:
    """Ask the worker to finish, then make sure it has.

    Waits on the process itself, not on the report reader, which a cancellation of
    the session may already have stopped. A session that was cancelled (drain
    False) only closes the worker's stdin: a cancelled send may have left half a
    message in the pipe, and EOF alone tells the worker to leave at once.
    """
    process = worker.process
    assert process.stdin is not None
    if worker.drain:
        await worker.send(EndOfStream("session ended", drain=True))
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await process.stdin.aclose()
    with trio.move_on_after(EXIT_GRACE):
        await process.wait()
    if process.returncode is None:
        log.warning("session worker %d did not exit in %.0f s: killing it", process.pid,
                    EXIT_GRACE)
        worker.killed = True
        process.kill()
        await process.wait()
    worker.note_exit()
