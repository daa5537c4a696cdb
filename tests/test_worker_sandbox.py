"""Session workers parse hostile media: they start without the service's secrets and
die with the service (issue 12), checked on real processes and a real SIGKILL.

The service's ws_url is a listening socket that never answers, so a worker stays in
its room join long enough to be looked at.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.service.ingest.worker_client import worker_environment
from relay.worker.limits import CPU_KILL_GRACE
from tests.service import ServiceProcess, alive, child_processes, session_workers
from tests.test_rtmp_ingest import Publisher, create, ffmpeg_cmd, url

SECRET = "s3cret-" + "x" * 40


def test_the_worker_environment_keeps_no_key() -> None:
    env = worker_environment({"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET,
                              "INGRESS_CONFIG_BODY": f"api_secret: {SECRET}",
                              "INGRESS_API_SECRET": SECRET, "PATH": "/bin",
                              "LC_ALL": "C.UTF-8", "INGRESS_WORKER_LOG": "DEBUG"})
    assert env == {"PATH": "/bin", "LC_ALL": "C.UTF-8", "INGRESS_WORKER_LOG": "DEBUG",
                   "INGRESS_SERVICE_PID": str(os.getpid()),
                   "INGRESS_WORKER_MEMORY_MB": "4096", "INGRESS_WORKER_CPU_SECONDS": "0"}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts and never answers (a LiveKit server that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def worker_pids(svc: ServiceProcess) -> list[int]:
    assert svc.proc is not None
    return session_workers(svc.proc.pid)


def worker_limits(pid: int) -> dict[str, list[str]]:
    """/proc/<pid>/limits: name -> [soft, hard]."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, values = line[:26].strip(), line[26:].split()
        out[name] = values[:2]
    return out


@pytest.mark.slow
def test_workers_see_no_secret_and_die_with_the_service(tmp_path: Path,
                                                        silent_server: int) -> None:
    svc = ServiceProcess(tmp_path, rtmp_port=0, ws_url=f"ws://127.0.0.1:{silent_server}",
                         api_secret=SECRET, env={"LIVEKIT_API_SECRET": SECRET},
                         worker_memory_limit_mb=1536, worker_cpu_time_limit=3600)
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
        # the limits it set on itself, soft = hard (it cannot raise them again)
        deadline = time.monotonic() + 5
        while (limits := worker_limits(pid)).get("Max core file size") != ["0", "0"]:
            assert time.monotonic() < deadline, limits
            time.sleep(0.05)
        assert limits["Max address space"] == [str(1536 << 20)] * 2
        assert limits["Max cpu time"] == ["3600", str(3600 + CPU_KILL_GRACE)]
        assert svc.proc is not None
        (template,) = [child for child, cmdline in child_processes(svc.proc.pid)
                       if "relay.worker.template" in cmdline]
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(5)
        deadline = time.monotonic() + 3
        while alive(pid) or alive(template):
            assert time.monotonic() < deadline, (
                "the worker or its template outlived their killed service")
            time.sleep(0.05)
    finally:
        if publisher is not None:
            publisher.kill()
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()



def test_the_limits_bite_and_cannot_be_raised_again() -> None:
    """What a decoder exploited by a hostile stream would meet: allocations past the
    address-space limit fail, and the process cannot lift the limit."""
    probe = (
        "import os, resource\n"
        "from relay.worker.limits import apply_limits\n"
        "apply_limits(os.environ)\n"
        "try:\n"
        "    bytearray(600 << 20)\n"
        "    print('allocated')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)\n"
        "    print('raised')\n"
        "except (ValueError, OSError):\n"
        "    print('kept')\n"
        "print('THP_disabled=' + open('/proc/self/status').read()"
        ".split('THP_enabled:')[1].split()[0])\n"
    )
    env = {"PATH": os.environ["PATH"], "INGRESS_WORKER_MEMORY_MB": "512"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent)
    # and no transparent huge pages (relay/worker/limits.py: RSS)
    assert out.stdout.split() == ["MemoryError", "kept", "THP_disabled=0"], out.stderr
