"""relay/h11_server.py on a real loopback socket, with a small ASGI app, byte by byte
where it matters: keep-alive, pipelining, 100-continue, bad requests, timeouts, an
app that fails. The API's own tests (test_api_*, test_whip_*) run through it too."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from relay.h11_server import H11Server, open_listener


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    body = b""
    if path != "/noread":
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    if path == "/boom":
        raise RuntimeError("the app failed")
    headers = [(b"content-type", b"text/plain")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    reply = b"%s %s %s" % (scope["method"].encode(), scope["raw_path"], body)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply[:3], "more_body": True})
    await send({"type": "http.response.body", "body": reply[3:]})


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[str, int]]:
    sock = open_listener("127.0.0.1", 0)
    address = sock.getsockname()
    await nursery.start(H11Server(app, keep_alive_timeout=0.5, read_timeout=0.5).serve, sock)
    yield address


async def exchange(address: tuple[str, int], data: bytes, *, until_closed: bool = True,
                   expect: int = 0) -> bytes:
    """Send `data`, return what comes back: everything up to the server's close, or
    (until_closed=False) the first `expect` bytes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(10):
            while until_closed or len(got) < expect:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
        return got


def responses(raw: bytes) -> list[tuple[str, bytes]]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b": ") for line in lines[1:])
                      if k.lower() == b"content-length")
        out.append((lines[0].decode(), rest[:length]))
        raw = rest[length:]
    return out


async def test_keep_alive_and_pipelining(server: tuple[str, int]) -> None:
    two = (b"POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
           b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    raw = await exchange(server, two, until_closed=False, expect=10_000)
    assert responses(raw) == [("HTTP/1.1 200 OK", b"POST /echo hello"),
                              ("HTTP/1.1 200 OK", b"GET /second ")]


async def test_body_arriving_byte_by_byte_and_100_continue(server: tuple[str, int]) -> None:
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        await stream.send_all(b"PUT /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                              b"Expect: 100-continue\r\n\r\n")
        with trio.fail_after(10):
            interim = await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        for byte in b"abcd":
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.01)
        with trio.fail_after(10):
            raw = await stream.receive_some(65536)
    assert responses(raw) == [("HTTP/1.1 200 OK", b"PUT /slow abcd")]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 200_000 + b"\r\n\r\n",
     "HTTP/1.1 431 Request Header Fields Too Large"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 400 Bad Request"),
])
async def test_bad_requests_get_a_status_and_the_connection_closes(
        server: tuple[str, int], request_bytes: bytes, status: str) -> None:
    raw = await exchange(server, request_bytes)
    ((line, body),) = responses(raw)
    assert line == status and body.startswith(b"bad request: ")


async def test_connect_is_refused_without_asking_the_app(server: tuple[str, int]) -> None:
    """A 2xx to CONNECT would make the connection a tunnel (the fuzzer's first find:
    the app's 200 and then its body broke h11's state)."""
    raw = await exchange(server, b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 405 Method Not Allowed",
                               b"CONNECT is not served here\n")]


async def test_a_failing_app_answers_500_and_the_server_goes_on(
        server: tuple[str, int]) -> None:
    raw = await exchange(server, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 500 Internal Server Error", b"internal error\n")]
    raw = await exchange(server, b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 200 OK", b"GET /after ")]


async def test_connection_close_head_and_unread_bodies(server: tuple[str, int]) -> None:
    # the app's Connection: close ends the connection after its response
    raw = await exchange(server, b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n"
                                 b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 200 OK", b"GET /close ")]
    # HEAD: the length of the body, not the body
    raw = await exchange(server, b"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"content-length: 8\r\n" in raw
    # an answer before the request body was read: the rest cannot be framed, so the
    # connection ends, in a way the client, still sending, reads the whole answer
    stream = await trio.open_tcp_stream(*server)
    raw = b""
    async with stream:
        await stream.send_all(b"POST /noread HTTP/1.1\r\nHost: a\r\n"
                              b"Content-Length: 8000000\r\n\r\n")

        async def upload() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for _ in range(40):
                    await stream.send_all(b"x" * 100_000)
                    await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            with trio.fail_after(10):
                while chunk := await stream.receive_some(65536):
                    raw += chunk
    assert responses(raw) == [("HTTP/1.1 200 OK", b"POST /noread ")]


async def test_idle_and_stalled_connections_are_closed(server: tuple[str, int]) -> None:
    with trio.fail_after(10):  # 0.5 s idle, then 0.5 s + 1 s linger
        assert await exchange(server, b"") == b""  # idle past keep_alive_timeout
        raw = await exchange(server, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
                                     b"\r\nabc")  # then silence past read_timeout
    assert responses(raw)[0][0] == "HTTP/1.1 400 Bad Request"


def test_the_listener_is_not_inherited() -> None:
    sock = open_listener("127.0.0.1", 0)
    with sock:
        assert not sock.get_inheritable()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
