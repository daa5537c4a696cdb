"""What an RTMP peer can make the node do before it is authenticated (issue 12).

Real node, raw sockets: the hostile peer of the issue (16 MiB chunks, one 8 MiB
aggregate of ~560,000 empty tags before ``connect``) stalled the whole node for
1.6-1.8 s. Here the node's answers are timed from another connection while that
peer runs, and the connection budgets are checked with a real ffmpeg publisher.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import ServiceProcess
from tests.test_rtmp_ingest import (
    BUFFERING,
    Publisher,
    RawClient,
    create,
    ffmpeg_cmd,
    url,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.slow

MAX_UNAUTHENTICATED = 4


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # the default message cap (8 MiB), as the node the issue attacked
    proc = ServiceProcess(tmp_path_factory.mktemp("preauth"), rtmp_port=0,
                          rtmp_max_unauthenticated_connections=MAX_UNAUTHENTICATED,
                          rtmp_max_connections=MAX_UNAUTHENTICATED + 4)
    proc.start()
    yield proc
    proc.stop()


class AnswerGaps:
    """Asks the node's HTTP listener for `/` back to back on one connection and keeps
    the longest time between two answers: how long the event loop was held."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.longest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                self.conn.request("GET", "/")
                self.conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                if self._stop.is_set():
                    return  # the node went first: its stop, not a gap
                raise
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.answers += 1
            last = now
            time.sleep(0.005)

    def __enter__(self) -> AnswerGaps:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self.conn.close()


def _empty_tags(count: int) -> bytes:
    return (b"\x09" + bytes(10) + struct.pack(">I", 11)) * count


def test_aggregate_before_connect_is_cut_without_stalling_the_node(
        svc: ServiceProcess) -> None:
    with AnswerGaps(svc.url) as gaps:
        time.sleep(0.3)
        client = RawClient(svc.rtmp_addr)
        try:
            client.handshake()
            client.sock.sendall(client.writer.set_chunk_size(16 * 1024 * 1024 - 1))
            aggregate = client.writer.write(6, 22, 0, 0, _empty_tags(8 * 1024 * 1024 // 15))
            with contextlib.suppress(OSError):  # the node closes while we still send
                client.sock.sendall(aggregate)
            assert client.closed_within(5.0) is not None
        finally:
            client.close()
        time.sleep(0.3)
    assert re.search(r"rtmp connection from \S+ closed: protocol error before publishing: "
                     r"message of \d+ bytes above the cap 65536", svc.log())
    assert gaps.answers > 20
    # the unfixed node held its loop 1.6-1.8 s here; one answer takes ~1 ms
    assert gaps.longest < 0.5, f"the node did not answer for {gaps.longest:.3f} s"


def test_chunk_size_of_one_is_refused(svc: ServiceProcess) -> None:
    client = RawClient(svc.rtmp_addr)
    try:
        client.handshake()
        client.sock.sendall(client.writer.set_chunk_size(1))
        assert client.closed_within(5.0) is not None
    finally:
        client.close()
    assert "protocol error before publishing: chunk size 1 below the minimum 128" in svc.log()


def test_overlong_stream_key_is_unknown_without_a_lookup(svc: ServiceProcess) -> None:
    client = RawClient(svc.rtmp_addr)
    try:
        client.handshake()
        _, status = client.publish("k" * 10_000)
    finally:
        client.close()
    assert (status["code"], status["description"]) == (
        "NetStream.Publish.BadName", "unknown stream key")
    wait_for(lambda: "key of 10000 characters) refused: unknown stream key" in svc.log(), 5,
             "the refusal's log line")


def _idle_connection(addr: str) -> socket.socket:
    """A peer that does the RTMP handshake and then nothing."""
    client = RawClient(addr)
    client.handshake()
    return client.sock


def _refused_at_once(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with (socket.create_connection((host, int(port)), timeout=5) as sock,
          contextlib.suppress(ConnectionResetError)):
        sock.sendall(b"\x03" + bytes(1536))
        return sock.recv(1) == b""
    return True


def test_unauthenticated_peers_have_their_own_budget(svc: ServiceProcess,
                                                     tmp_path: Path) -> None:
    """Idle peers fill the unauthenticated budget only; a live publish holds none of it."""
    info = create(svc, name="budget")
    publisher = Publisher(ffmpeg_cmd(url(svc, info.stream_key), 60))
    idle: list[socket.socket] = []
    try:
        wait_state(svc, info.ingress_id, BUFFERING)
        idle = [_idle_connection(svc.rtmp_addr) for _ in range(MAX_UNAUTHENTICATED)]
        assert _refused_at_once(svc.rtmp_addr)
        wait_for(lambda: f"refused: max unauthenticated connections ({MAX_UNAUTHENTICATED}) "
                 "reached" in svc.log(), 5, "the refusal's log line")
        for sock in idle:
            sock.close()
        idle = []
        # the slots come back: a new peer gets its handshake answered
        wait_for(lambda: not _refused_at_once(svc.rtmp_addr), 5, "a free slot")
        assert publisher.proc.poll() is None
        wait_state(svc, info.ingress_id, BUFFERING)
    finally:
        for sock in idle:
            sock.close()
        publisher.kill()
