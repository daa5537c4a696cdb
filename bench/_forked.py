"""Session workers forked from a template process that has done their imports.

For bench/sessions.py --forked only: what a fork server would give the service,
measured before building one. The template (this file run as a script) imports
relay.worker.main, freezes the garbage collector's view of those objects (a
collection would otherwise write to every page that holds one, un-sharing it) and
forks a worker for each request: the request's two descriptors become the child's
stdin and stdout, and the child runs relay.worker.main.main() as an exec'd worker
would. The children share the template's pages until they write to them.

Not in the product: forked children share one address-space layout, so a hostile
stream that crashes workers again and again could probe it (the blind-ROP attack
on forking servers); a product template would have to be replaced after any worker
that dies by a signal. See docs/PERFORMANCE.md (sessions).
"""

from __future__ import annotations

import array
import gc
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:  # the template itself imports only what a worker does
    from relay.service.ingest.worker_client import SessionWorker
    from relay.wire import Start

ROOT = Path(__file__).resolve().parent.parent


class ForkedProcess:
    """What `SessionWorker` needs of a process, for a template's child (not ours:
    its exit is seen through a pidfd and its status is not known: 0)."""

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = trio.lowlevel.FdStream(stdin)
        self.stdout = trio.lowlevel.FdStream(stdout)
        self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        await trio.lowlevel.wait_readable(self._pidfd)
        self.returncode = 0
        return 0

    def kill(self) -> None:
        signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


@dataclass(frozen=True)
class WorkerTemplate:
    process: subprocess.Popen
    path: Path  # the socket it takes requests on


@contextmanager
def worker_template(workdir: Path, environment: dict[str, str]) -> Iterator[WorkerTemplate]:
    """The template process, listening on a socket in `workdir` until the block ends."""
    path = workdir / "template.sock"
    with subprocess.Popen([sys.executable, __file__, str(path)], env=environment,
                          cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the worker template did not start")
            yield WorkerTemplate(process, path)
        finally:
            process.kill()


def fork_worker(template: Path) -> ForkedProcess:
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as request:
        request.connect(str(template))
        request.sendmsg([b"fork"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [stdin_read, stdout_write]))])
        pid = int(request.recv(32))
    os.close(stdin_read)
    os.close(stdout_write)
    return ForkedProcess(pid, stdin_write, stdout_read)


@asynccontextmanager
async def open_forked_worker(template: WorkerTemplate, start: Start
                             ) -> AsyncIterator[SessionWorker]:
    """`open_session_worker`, with the worker forked from the template."""
    from relay.service.ingest.worker_client import run_session_worker

    process = fork_worker(template.path)
    async with run_session_worker(process, start) as worker:  # type: ignore[arg-type]
        yield worker


def serve(path: str) -> None:
    """The template: import, freeze, then fork a worker per request, forever."""
    sys.path.insert(0, str(ROOT))
    import relay.worker.main as worker_main

    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    print("ready", flush=True)
    while True:
        request, _ = server.accept()
        _, ancillary, _, _ = request.recvmsg(16, socket.CMSG_SPACE(2 * 4))
        fds = array.array("i")
        fds.frombytes(ancillary[0][2][:8])
        pid = os.fork()
        if pid == 0:
            server.close()
            request.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(fds[0], 0)
            os.dup2(fds[1], 1)
            os.close(fds[0])
            os.close(fds[1])
            os.environ["INGRESS_SERVICE_PID"] = str(os.getppid())
            code = 1
            try:
                code = worker_main.main()
            finally:
                os._exit(code)
        os.close(fds[0])
        os.close(fds[1])
        request.sendall(str(pid).encode())
        request.close()


if __name__ == "__main__":
    serve(sys.argv[1])
