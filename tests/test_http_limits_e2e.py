"""The node's HTTP listener against slowloris peers (issue 12), real process and sockets.

Before the request deadline, 200 connections sending one header byte every 5 s were
all still open after 40 s: hypercorn restarts its read timeout on every byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.service import ServiceProcess
from tests.test_rtmp_preauth import AnswerGaps

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 2.0
PEERS = 100


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # a ws_url (never reached: no session starts here) turns the WHIP routes on
    proc = ServiceProcess(tmp_path_factory.mktemp("http-limits"), ws_url="ws://127.0.0.1:9",
                          http_request_timeout=REQUEST_TIMEOUT,
                          http_max_connections=PEERS + 20)
    proc.start()
    yield proc
    proc.stop()


def _address(svc: ServiceProcess) -> tuple[str, int]:
    host, port = svc.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_slowloris_peers_are_cut_at_the_request_deadline(svc: ServiceProcess) -> None:
    closed_after: list[float] = []
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000

    def slow_peer() -> None:
        with socket.create_connection(_address(svc), timeout=30) as sock:
            start = time.monotonic()
            sock.settimeout(0.5)
            for byte in head:  # a byte every 0.5 s: far inside hypercorn's read timeout
                try:
                    sock.sendall(bytes([byte]))
                    if sock.recv(65536) == b"" or time.monotonic() - start > 15:
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            closed_after.append(time.monotonic() - start)

    peers = [threading.Thread(target=slow_peer) for _ in range(PEERS)]
    with AnswerGaps(svc.url) as gaps:
        for peer in peers:
            peer.start()
        for peer in peers:
            peer.join(30)
    assert len(closed_after) == PEERS
    assert max(closed_after) < REQUEST_TIMEOUT + 3, sorted(closed_after)[-5:]
    assert gaps.answers > 10  # the node answered all along


def test_connections_past_the_cap_are_closed(svc: ServiceProcess) -> None:
    held = [socket.create_connection(_address(svc)) for _ in range(PEERS + 20)]
    try:
        time.sleep(0.5)
        with socket.create_connection(_address(svc), timeout=5) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(65536) == b""
    finally:
        for sock in held:
            sock.close()
    assert "refused: max connections (120) reached" in svc.log()
    # the slots come back (within the 1 s EOF grace): the next test finds them free
    deadline = time.monotonic() + 5
    while "Healthy" not in _get(svc, "/"):
        assert time.monotonic() < deadline, "slots not given back"
        time.sleep(0.1)


def _get(svc: ServiceProcess, path: str) -> str:
    try:
        with urllib.request.urlopen(svc.url + path, timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return ""


@pytest.mark.parametrize("size", [100 * 1024, 8 << 20])
def test_an_oversized_whip_offer_is_refused_unread(svc: ServiceProcess, size: int) -> None:
    """WHIP bodies (an SDP offer) are capped at 64 KiB: 413, the body not taken in."""
    host, port = _address(svc)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /w/somekey HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/sdp\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(OSError):  # the node may answer and close mid-body
            sock.sendall(b"v=0\r\n" + b"a" * (size - 5))
        reply = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
