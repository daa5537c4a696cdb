"""The service's side of the worker template (relay/worker/template.py): session
workers forked from a process that has done their imports.

One template per service process, started on the first session and again when it
has gone (or been retired); `fork_worker()` asks it for a worker and gives back a
`ForkedWorker`, which the session drives like a process of its own
(worker_client.py). The template is retired after any worker that dies by a
signal: the workers it forks share its address-space layout, and a stream that
crashes workers must not get to probe one layout again and again. A retired
template takes no more requests and leaves when its last worker has, still
reporting their exit statuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import trio

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # its imports: 0.4 s on an idle machine, seconds on a loaded one
UNKNOWN_EXIT = 255  # the template went away before telling how the worker ended


class TemplateError(Exception):
    """The template could not be started, or did not fork the worker."""


class ForkedWorker:
    """A worker forked by the template, with what a session needs of a process: its
    pipes, its exit status (reported by the template: it is the template's child)
    and a kill (through a pidfd, so a reused pid is never signalled)."""

    def __init__(self, pid: int, stdin: int, stdout: int, status: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = trio.lowlevel.FdStream(stdin)
        self.stdout = trio.lowlevel.FdStream(stdout)
        self._status = trio.socket.from_stdlib_socket(status)
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone: its status is on the way
            self._pidfd = None
        self._waiting = trio.Lock()

    async def wait(self) -> int:
        async with self._waiting:  # the report reader and the stopper both wait
            if self.returncode is None:
                self.returncode = await self._exit_status()
                self._status.close()
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        return self.returncode

    async def _exit_status(self) -> int:
        message = await self._status.recv(64)
        if message.startswith(b"exit "):
            return int(message[5:])
        # the template was killed: wait for the worker itself, status unknown
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
        return UNKNOWN_EXIT

    def kill(self) -> None:
        if self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):  # both, even in a cancelled session
            await self.stdin.aclose()
            await self.stdout.aclose()


class WorkerTemplate:
    """The template process, started when a worker is first asked for."""

    def __init__(self, environment: dict[str, str]) -> None:
        self._environment = environment
        self._lock = threading.Lock()  # one start or request at a time, from any thread
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._retired: list[subprocess.Popen] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def fork(self, environment: dict[str, str]) -> tuple[int, int, int, socket.socket]:
        """Blocking (for a thread): a new worker's (pid, stdin, stdout, status)."""
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                self._reap_retired()
                request = json.dumps(environment).encode()
                for attempt in (1, 2):  # a template that died since: start another
                    try:
                        socket.send_fds(self._started(), [request],
                                        [stdin_read, stdout_write, theirs.fileno()])
                        break
                    except OSError as exc:
                        self._retire()
                        if attempt == 2:
                            raise TemplateError(f"the worker template failed: {exc}") from exc
            ours.settimeout(START_TIMEOUT)
            try:
                answer = ours.recv(64)
            except OSError as exc:  # no answer in time
                raise TemplateError(f"the worker template did not answer: {exc}") from exc
            if not answer.startswith(b"pid "):
                raise TemplateError("the worker template did not fork the worker")
            ours.settimeout(None)
            return int(answer[4:]), stdin_write, stdout_read, ours
        except BaseException:
            for fd in (stdin_write, stdout_read):
                os.close(fd)
            ours.close()
            raise
        finally:
            os.close(stdin_read)
            os.close(stdout_write)
            theirs.close()

    def warm(self) -> None:
        """Blocking (for a thread): start the template now, not at the first session."""
        with self._lock:
            self._started()

    def retire(self) -> None:
        """Fork no more workers from the current template; the next comes from a new
        one (a new address-space layout)."""
        with self._lock:
            self._retire()

    def _started(self) -> socket.socket:
        if self._control is not None and self._process is not None \
                and self._process.poll() is None:
            return self._control
        self._retire()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen([sys.executable, "-m", "relay.worker.template"],
                                       stdin=theirs, env=self._environment)
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready = ours.recv(16)
        except OSError:
            ready = b""
        if ready != b"ready":
            process.kill()
            process.wait()
            ours.close()
            raise TemplateError("the worker template did not start "
                                f"(exit status {process.poll()})")
        ours.settimeout(None)
        self._process, self._control = process, ours
        log.info("worker template %d ready", process.pid)
        return ours

    def _retire(self) -> None:
        if self._control is not None:
            self._control.close()  # it leaves when its last worker has
        if self._process is not None:
            self._retired.append(self._process)
        self._process = self._control = None

    def _reap_retired(self) -> None:
        self._retired = [p for p in self._retired if p.poll() is None]


_template: WorkerTemplate | None = None
_template_lock = threading.Lock()


def worker_template(environment: dict[str, str]) -> WorkerTemplate:
    """This process' template (created on first use with `environment`)."""
    global _template
    with _template_lock:
        if _template is None:
            _template = WorkerTemplate(environment)
        return _template


async def fork_worker(template: WorkerTemplate, environment: dict[str, str]
                      ) -> ForkedWorker:
    """A worker forked by `template` with `environment` added to its own."""
    pid, stdin, stdout, status = await trio.to_thread.run_sync(template.fork, environment)
    return ForkedWorker(pid, stdin, stdout, status)
