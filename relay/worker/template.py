"""The worker template: a process that has done a session worker's imports and forks
one worker per request (`python -m relay.worker.template`, started by the service:
relay/service/ingest/worker_template.py).

A worker started fresh spends 0.4 s of CPU on its imports (1.5 s on a loaded
machine: that long before a WHIP publisher gets its answer) and keeps 74 MB of
them to itself. Forked from here, it starts at once and shares those pages with
the template and the other workers until it writes to them (the garbage
collector's view of them is frozen first, so a collection does not write to every
one); bench/sessions.py measures both.

Protocol, on the service's end of a SOCK_SEQPACKET pair (this process' stdin):
the template says ``ready`` once its imports are done. Each request is one
message: the JSON object of environment variables the worker adds (its limits),
with three descriptors: the worker's stdin and stdout, and a SOCK_SEQPACKET
socket on which the template answers ``pid <n>`` and, when the worker has
exited, ``exit <code>`` (a returncode: negative for a signal). A malformed
request is dropped. When the service closes its end, the template takes no more
requests and leaves once its workers have (each still gets its exit status);
when the service process is gone, it leaves at once.

The workers are the template's children and share its address-space layout: the
service replaces the template after any worker that dies by a signal, so a
stream that crashes workers cannot probe one layout again and again.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import selectors
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

from . import main as worker_main

MAX_REQUEST = 4096
SERVICE_CHECK_INTERVAL = 0.5
PR_SET_NAME = 15  # linux/prctl.h
# /proc/<pid>/comm (at most 15 bytes): tells a worker from the template in ps and top,
# where both show the template's command line
WORKER_NAME = b"ingress-worker"
TEMPLATE_NAME = b"ingress-templ"


@dataclass
class _Child:
    pid: int
    pidfd: int
    status: socket.socket


def serve(control: socket.socket, service_pid: int) -> None:
    """Fork a worker per request until the service closes `control` and the workers
    have ended, or the service process is gone."""
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    children: dict[int, _Child] = {}
    accepting = True
    while accepting or children:
        for key, _ in selector.select(SERVICE_CHECK_INTERVAL):
            if key.fileobj is control:
                try:
                    data, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 3)
                except OSError:
                    data, fds = b"", []
                if not data and not fds:  # the service closed its end
                    selector.unregister(control)
                    accepting = False
                    continue
                child = _fork(data, fds, control, selector, children)
                if child is not None:
                    children[child.pidfd] = child
                    selector.register(child.pidfd, selectors.EVENT_READ)
            else:
                _reap(children.pop(key.fd), selector)
        if os.getppid() != service_pid:
            return  # the service is gone; its workers see that themselves


def _fork(request: bytes, fds: list[int], control: socket.socket,
          selector: selectors.BaseSelector, children: dict[int, _Child]) -> _Child | None:
    try:
        environment = json.loads(request)
        if len(fds) != 3 or not isinstance(environment, dict):
            raise ValueError("a request is an object and three descriptors")
        stdin, stdout, status_fd = fds
        status = socket.socket(fileno=status_fd)
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        return None
    try:
        pid = os.fork()
    except OSError:  # no memory, no pids: this request fails (its socket closes), not us
        for fd in (stdin, stdout):
            os.close(fd)
        status.close()
        return None
    if pid == 0:
        _set_name(WORKER_NAME)
        # the template's descriptors are not the worker's: close this process' copies
        control.close()
        selector.close()
        for child in children.values():
            os.close(child.pidfd)
            child.status.close()
        status.close()
        _become_worker(stdin, stdout, {str(k): str(v) for k, v in environment.items()})
    os.close(stdin)
    os.close(stdout)
    # the service may not be waiting any more: the worker then finds that out itself
    with contextlib.suppress(OSError):
        status.send(b"pid %d" % pid)
    return _Child(pid, os.pidfd_open(pid), status)


def _reap(child: _Child, selector: selectors.BaseSelector) -> None:
    selector.unregister(child.pidfd)
    os.close(child.pidfd)
    _, status = os.waitpid(child.pid, 0)
    with contextlib.suppress(OSError):
        child.status.send(b"exit %d" % os.waitstatus_to_exitcode(status))
    child.status.close()


def _become_worker(stdin: int, stdout: int, environment: dict[str, str]) -> NoReturn:
    """In the forked child: the descriptors and environment of a worker, then its
    main(); never returns."""
    code = 1
    try:
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.close(stdin)
        os.close(stdout)
        os.environ.update(environment)
        code = worker_main.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # what `python -m relay.worker` would print and exit 1 for
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _set_name(name: bytes) -> None:
    """This process' name in ps and top (its command line stays the template's)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the name is cosmetic
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def main() -> int:
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)  # stdin is no longer the service's socket
    os.dup2(null, 0)
    os.close(null)
    service_pid = int(os.environ.get(worker_main.SERVICE_PID, "0")) or os.getppid()
    _set_name(TEMPLATE_NAME)
    gc.collect()
    gc.freeze()  # what the imports made stays shared with the workers
    control.send(b"ready")
    serve(control, service_pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
