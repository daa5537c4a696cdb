"""The HTTP listener (relay/service/http/server.py: hypercorn in our per-connection
fault box) on a real loopback socket: keep-alive, pipelining, 100-continue, bad
requests, timeouts, an app that fails, TLS, and the two hypercorn defects the box
contains. The API's own tests (test_api_*, test_whip_*) run through it too."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.service.http import server as http_server
from relay.service.http.server import HttpLimits, listener_config, serve_app

FUZZ_CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "http"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
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
    if path == "/think":  # an answer that takes longer than the request timeout
        await trio.sleep(1.5)
    headers = [(b"content-type", b"text/plain")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    reply = b"%s %s %s" % (scope["method"].encode(), scope["raw_path"], body)
    headers.append((b"content-length", str(len(reply)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply[:3], "more_body": True})
    await send({"type": "http.response.body", "body": reply[3:]})


def config(**changes: Any) -> Any:
    cfg = listener_config("127.0.0.1", 0)
    cfg.keep_alive_timeout = changes.get("keep_alive", 0.5)
    cfg.read_timeout = changes.get("read", 0.5)
    return cfg


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[str, int]]:
    urls = await nursery.start(partial(serve_app, app, config()))
    host, port = urls[0].removeprefix("http://").rsplit(":", 1)
    yield host, int(port)


@pytest.fixture
async def limited(nursery: trio.Nursery) -> AsyncIterator[tuple[str, int]]:
    """Short limits of our own; hypercorn's keep-alive long enough not to be the cut."""
    urls = await nursery.start(partial(serve_app, app, config(keep_alive=5, read=5),
                                       limits=HttpLimits(request_timeout=1.0,
                                                         max_connections=4)))
    host, port = urls[0].removeprefix("http://").rsplit(":", 1)
    yield host, int(port)


async def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send `data`, return everything up to the server's close."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                got += chunk
        return got


def responses(raw: bytes) -> list[tuple[str, bytes]]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(v) for k, _, v in (line.partition(b": ") for line in lines[1:])
                       if k.lower() == b"content-length"), 0)
        out.append((lines[0].decode().strip(), rest[:length]))
        raw = rest[length:]
    return out


async def test_keep_alive_and_pipelining(server: tuple[str, int]) -> None:
    raw = await exchange(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                                 b"helloGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 200", b"POST /echo hello"),
                              ("HTTP/1.1 200", b"GET /two ")]


async def test_body_byte_by_byte_and_100_continue(server: tuple[str, int]) -> None:
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        await stream.send_all(b"PUT /slow HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 4\r\n\r\n")
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        for byte in b"abcd":
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.05)
        raw = b""
        with trio.fail_after(5):
            while not raw.endswith(b"abcd"):
                raw += await stream.receive_some(65536)
    assert responses(raw) == [("HTTP/1.1 200", b"PUT /slow abcd")]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", "HTTP/1.1 431"),
])
async def test_bad_requests_get_a_status_and_the_connection_closes(
        server: tuple[str, int], request_bytes: bytes, status: str) -> None:
    raw = await exchange(server, request_bytes)
    assert raw.startswith(status.encode())


async def test_a_failing_app_answers_500_and_the_server_goes_on(
        server: tuple[str, int]) -> None:
    raw = await exchange(server, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500")
    raw = await exchange(server, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 200", b"GET /after ")]


async def test_idle_and_stalled_connections_are_closed(server: tuple[str, int]) -> None:
    with trio.fail_after(5):
        assert await exchange(server, b"") == b""  # idle past keep_alive_timeout
        # a request head that never ends: the read timeout closes it
        assert await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""


@pytest.mark.parametrize("name", ["24def0c4bd9ccda8d498354b22f2ab5320d15aab",
                                  "40cd0f359051522a6c4c952deb9caa49a0923045"])
async def test_hypercorn_defects_end_one_connection_only(
        server: tuple[str, int], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzz finds of docs/DESIGN.md "The HTTP edge", byte by byte on a real socket:
    the connection ends (within the close grace), and the listener still answers."""
    monkeypatch.setattr(http_server, "CLOSE_GRACE", 0.5)
    data = (FUZZ_CORPUS / name).read_bytes()[1:]
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        for i in range(len(data)):
            try:
                await stream.send_all(data[i:i + 1])
            except trio.BrokenResourceError:
                break
        with trio.fail_after(5), trio.move_on_after(3):
            while await stream.receive_some(65536):
                pass
    raw = await exchange(server, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert responses(raw) == [("HTTP/1.1 200", b"GET /after ")]


async def test_tls_when_a_certificate_is_configured(nursery: trio.Nursery,
                                                   tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cfg = listener_config("127.0.0.1", 0, cert_file=str(tmp_path / "c.pem"),
                          key_file=str(tmp_path / "k.pem"))
    urls = await nursery.start(partial(serve_app, app, cfg))
    assert urls[0].startswith("https://127.0.0.1:")
    port = int(urls[0].rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="localhost")
    async with stream:
        await stream.send_all(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw = b""
        with trio.fail_after(5):
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    raw += chunk
    assert responses(raw) == [("HTTP/1.1 200", b"GET /tls ")]


# -- limits of our own (issue 12): hypercorn restarts its timeouts on every byte -----------


async def dribble(address: tuple[str, int], data: bytes, every: float) -> tuple[bytes, float]:
    """Send `data` a byte every `every` s (each well inside the read timeout); return
    what came back and when the server closed, in seconds from the first byte."""
    stream = await trio.open_tcp_stream(*address)
    got = b""
    start = trio.current_time()
    async with stream, trio.open_nursery() as nursery:
        async def send_slowly() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for i in range(len(data)):
                    await stream.send_all(data[i:i + 1])
                    await trio.sleep(every)

        nursery.start_soon(send_slowly)
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                got += chunk
        nursery.cancel_scope.cancel()
    return got, trio.current_time() - start


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100,  # a head that never ends
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"b" * 100,  # a body
])
async def test_a_trickling_request_is_cut_at_the_request_timeout(
        limited: tuple[str, int], request_bytes: bytes) -> None:
    got, after = await dribble(limited, request_bytes, every=0.1)
    assert got.startswith(b"HTTP/1.1 408")
    assert 0.9 < after < 3.0  # request_timeout 1 s, though bytes came every 0.1 s


async def test_the_clock_stops_while_the_app_answers_and_restarts_per_request(
        limited: tuple[str, int]) -> None:
    stream = await trio.open_tcp_stream(*limited)
    async with stream:
        raw = b""
        for path in (b"/think", b"/again"):  # 1.5 s to answer, then a second request
            await stream.send_all(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                  b"\r\nok" % path)
            with trio.fail_after(5):
                while not raw.endswith(path + b" ok"):
                    raw += await stream.receive_some(65536)
            await trio.sleep(1.2)  # idle between requests, past the request timeout
    assert responses(raw) == [("HTTP/1.1 200", b"POST /think ok"),
                              ("HTTP/1.1 200", b"POST /again ok")]


async def test_connections_past_the_cap_are_closed_at_once(limited: tuple[str, int]) -> None:
    held = [await trio.open_tcp_stream(*limited) for _ in range(4)]
    try:
        await trio.sleep(0.1)
        with trio.fail_after(2):
            assert await exchange(limited, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        await held.pop().aclose()  # its slot is free again within EOF_GRACE (1 s)
        await trio.sleep(1.5)
        raw = await exchange(limited, b"GET /in HTTP/1.1\r\nHost: x\r\nConnection: close"
                                      b"\r\n\r\n")
        assert responses(raw) == [("HTTP/1.1 200", b"GET /in ")]
    finally:
        for stream in held:
            await stream.aclose()
