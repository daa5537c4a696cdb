"""Runs the real service in a child process for end-to-end tests.

The service binds port 0 on 127.0.0.1 and logs its address; the harness reads it
from the log, so parallel runs never race for a port.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
READY = re.compile(r"ingress service ready: api (http://\S+),")
READY_RTMP = re.compile(r"ingress service ready: .*? rtmp ([\d.]+:\d+),")
READY_RTMPS = re.compile(r"ingress service ready: .*? rtmps ([\d.]+:\d+),")


class ServiceProcess:
    """`python -m relay serve` with its own data dir, key pair and log file."""

    def __init__(self, workdir: Path, **config: Any) -> None:
        self.workdir = workdir
        self.api_key = config.pop("api_key", "APIkey" + secrets.token_hex(4))
        self.api_secret = config.pop("api_secret", secrets.token_urlsafe(32))
        self.env: dict[str, str] = config.pop("env", {})  # e.g. INGRESS_* test knobs
        self.config: dict[str, Any] = {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "bind_address": "127.0.0.1",
            "http_port": 0,
            "rtmp_port": -1,
            "rtmp_base_url": "rtmp://127.0.0.1:1935/live",
            "whip_base_url": "http://127.0.0.1:8080/w",
            "data_dir": str(workdir / "data"),
            "logging": {"level": "info"},
            # Admission off: the sessions of a test are not refused because the shared
            # machine is busy (tests/test_capacity_e2e.py sets its own costs).
            "cpu_cost": {"rtmp_cpu_cost": 0, "whip_cpu_cost": 0,
                         "whip_bypass_transcoding_cpu_cost": 0, "url_cpu_cost": 0,
                         "min_idle_ratio": 0},
            **config,
        }
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.rtmp_addr = ""  # host:port of the RTMP listener, when rtmp_port >= 0
        self.rtmps_addr = ""

    def start(self, timeout: float = 20.0) -> str:
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("INGRESS_", "LIVEKIT_"))} | self.env
        log = self.log_path.open("ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = READY.search(text)
            if match:
                self.url = match.group(1)
                line = text[match.start():text.find("\n", match.start())]
                rtmp, rtmps = READY_RTMP.search(line), READY_RTMPS.search(line)
                self.rtmp_addr = rtmp.group(1) if rtmp else ""
                self.rtmps_addr = rtmps.group(1) if rtmps else ""
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("service did not become ready:\n" + self.log())

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def restart(self) -> str:
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, *, ingress_admin: bool = True, ttl: float = 600,
              key: str | None = None, secret: str | None = None) -> str:
        from datetime import timedelta

        from livekit.api import AccessToken, VideoGrants

        return (AccessToken(key or self.api_key, secret or self.api_secret)
                .with_grants(VideoGrants(ingress_admin=ingress_admin))
                .with_ttl(timedelta(seconds=ttl)).to_jwt())

    def api(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn(ingress_client)` with the official livekit-api client (asyncio)."""
        from livekit import api

        async def main() -> T:
            async with api.LiveKitAPI(self.url, self.api_key, self.api_secret) as lkapi:
                return await fn(lkapi.ingress)

        return run_asyncio(main())


def run_asyncio(coro: Awaitable[T]) -> T:
    """asyncio.run in a thread of its own: the test itself may be running under trio."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, asyncio.run(coro)))  # type: ignore[arg-type]
        except BaseException as exc:
            result.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def child_processes(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live child processes of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def session_workers(pid: int) -> list[int]:
    """The live session workers of the service process `pid`: the children of its
    worker template (relay/worker/template.py), by their process name."""
    workers = []
    for template, _ in child_processes(pid):
        for child, _ in child_processes(template):
            try:
                name = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
            if name == "ingress-worker":
                workers.append(child)
    return workers
