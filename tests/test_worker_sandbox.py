"""Session workers parse hostile media: they start without the service's secrets and
die with the service (issue 12), checked on real processes and a real SIGKILL.

The service's ws_url is a listening socket that never answers, so a worker stays in
its room join long enough to be looked at.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.service.ingest.worker_client import worker_environment
from tests.service import ServiceProcess, child_processes
from tests.test_capacity_e2e import children
from tests.test_rtmp_ingest import Publisher, create, ffmpeg_cmd, url

SECRET = "s3cret-" + "x" * 40


def test_the_worker_environment_keeps_no_key() -> None:
    env = worker_environment({"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET,
                              "INGRESS_CONFIG_BODY": f"api_secret: {SECRET}",
                              "INGRESS_API_SECRET": SECRET, "PATH": "/bin",
                              "LC_ALL": "C.UTF-8", "INGRESS_WORKER_LOG": "DEBUG"})
    assert env == {"PATH": "/bin", "LC_ALL": "C.UTF-8", "INGRESS_WORKER_LOG": "DEBUG",
                   "INGRESS_SERVICE_PID": str(os.getpid())}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts and never answers (a LiveKit server that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def worker_pids(svc: ServiceProcess) -> list[int]:
    assert svc.proc is not None
    return [pid for pid, cmdline in child_processes(svc.proc.pid) if "relay.worker" in cmdline]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_workers_see_no_secret_and_die_with_the_service(tmp_path: Path,
                                                        silent_server: int) -> None:
    svc = ServiceProcess(tmp_path, rtmp_port=0, ws_url=f"ws://127.0.0.1:{silent_server}",
                         api_secret=SECRET, env={"LIVEKIT_API_SECRET": SECRET})
    svc.start()
    publisher = None
    try:
        info = create(svc, name="sandboxed")
        publisher = Publisher(ffmpeg_cmd(url(svc, info.stream_key), 30))
        deadline = time.monotonic() + 15
        while not (pids := worker_pids(svc)):
            assert time.monotonic() < deadline, "no session worker started"
            time.sleep(0.1)
        (pid,) = pids
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert SECRET.encode() not in environ
        assert b"LIVEKIT_API" not in environ and b"INGRESS_CONFIG" not in environ
        assert svc.proc is not None
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(5)
        deadline = time.monotonic() + 3
        while alive(pid):
            assert time.monotonic() < deadline, "the worker outlived its killed service"
            time.sleep(0.05)
        assert not children(svc.proc.pid)
    finally:
        if publisher is not None:
            publisher.kill()
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()
