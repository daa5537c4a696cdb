"""Fuzz harness for the API listener's HTTP/1.1 server (relay/h11_server.py).

Input layout: byte 0 picks how the client's bytes arrive (mod 4), the rest is what a
client sends on one connection:

* 0 ``whole``: in one write, then the client's end of the stream (EOF);
* 1 ``bytewise``: one byte per write (inputs up to 256 bytes), then EOF;
* 2 ``split``: in writes of 1-16 bytes (sizes from the input's own hash), then EOF;
* 3 ``hang``: in one write, then the client stays silent with its side open, so only
  the server's timeouts can end the connection.

The server runs on trio's in-memory streams under a virtual clock (timeouts pass
at once), serving an echo app that also checks the ASGI scope it is given.

Oracle (raises OracleFailure, i.e. a crash): `connection()` returns, never raises,
within the idle timeout plus the read timeouts of the bytes sent; no error is
logged (an app crash or "connection failed" means the shell let something
through); everything the server wrote parses, with an h11 client, as complete
HTTP/1.1 responses (interim 100s allowed), one per request the app saw at most
plus one error answer; each 200 echoes a request whose scope was well formed.

Run: ``python fuzz/run.py http --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import BYTEWISE_MAX, OracleFailure, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.h11_server", "h11"])
      if atheris and __name__ == "__main__" else nullcontext()):
    import h11
    import trio
    import trio.testing

    from relay.h11_server import H11Server

MODES = ("whole", "bytewise", "split", "hang")
KEEP_ALIVE, READ = 75.0, 30.0
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 4 * 1024 * 1024
MEM_PER_BYTE = 256


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


ERRORS = _Errors()
logging.getLogger("relay.h11_server").addHandler(ERRORS)
logging.getLogger("relay.h11_server").propagate = False


SEEN: list[str] = []  # the methods of the requests the app was given, in order


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers 200 with method, path and body."""
    SEEN.append(scope["method"])
    if scope["type"] != "http" or not isinstance(scope["method"], str):
        raise OracleFailure(f"bad scope type or method: {scope!r:.200}")
    if not isinstance(scope["path"], str) or not isinstance(scope["query_string"], bytes):
        raise OracleFailure(f"bad path or query: {scope!r:.200}")
    for name, value in scope["headers"]:
        if not (isinstance(name, bytes) and isinstance(value, bytes) and name == name.lower()):
            raise OracleFailure(f"bad header: {(name, value)!r:.200}")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message["body"]
        if not message["more_body"]:
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body",
                "body": scope["method"].encode() + b" " + scope["raw_path"] + b" " + body})


def writes(mode: str, body: bytes) -> list[bytes]:
    if mode == "bytewise" and len(body) <= BYTEWISE_MAX:
        return [body[i:i + 1] for i in range(len(body))]
    if mode == "split":
        sizes = hashlib.sha256(body).digest()
        out, i, k = [], 0, 0
        while i < len(body):
            size = 1 + sizes[k % len(sizes)] % 16
            out.append(body[i:i + size])
            i, k = i + size, k + 1
        return out
    return [body]


async def serve_one(chunks: list[bytes], hang: bool) -> bytes:
    """Run one connection to its end; the bytes the server wrote."""
    client, server_side = trio.testing.memory_stream_pair()
    server = H11Server(echo_app, keep_alive_timeout=KEEP_ALIVE, read_timeout=READ)
    received = bytearray()
    done = trio.Event()

    async def run_server() -> None:
        await server.connection(server_side)
        done.set()

    async def read_all() -> None:
        while data := await client.receive_some(65536):
            received.extend(data)

    budget = KEEP_ALIVE + READ * (sum(len(c) for c in chunks) + 2) + 10
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        nursery.start_soon(read_all)
        try:
            for chunk in chunks:
                if chunk:
                    await client.send_all(chunk)
            if not hang:
                await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed first: fine
        with trio.move_on_after(budget) as scope:
            await done.wait()
        if scope.cancelled_caught:
            raise OracleFailure("the connection did not end within its timeouts")
        nursery.cancel_scope.cancel()
    return bytes(received)


def check_output(output: bytes, methods: list[str]) -> None:
    """The server's bytes are whole HTTP/1.1 responses as an h11 client reads them,
    the client having sent the requests the app saw (GET for the rest: a request
    the server refused before the app saw it)."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(output)
    conn.receive_data(b"")
    answered = 0
    while True:
        if conn.our_state is h11.IDLE:
            if not conn.trailing_data[0]:
                return  # every response read; the server's close is all that is left
            method = methods[answered] if answered < len(methods) else "GET"
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise OracleFailure(f"malformed response bytes ({exc}): {output[:300]!r}") from None
        if event is h11.NEED_DATA:
            raise OracleFailure(f"a response was cut short: {output[-300:]!r}")
        if isinstance(event, h11.ConnectionClosed):
            return
        if isinstance(event, h11.Response):
            answered += 1
            if event.status_code != 200 and not 400 <= event.status_code < 600:
                raise OracleFailure(f"unexpected status {event.status_code}")
            if answered > len(methods) + 1:
                raise OracleFailure(f"{answered} responses for {len(methods)} requests")
        if isinstance(event, h11.EndOfMessage):
            if conn.their_state is h11.MUST_CLOSE:
                continue  # ConnectionClosed comes next
            conn.start_next_cycle()


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode, body = MODES[data[0] % len(MODES)], data[1:]
    ERRORS.records.clear()
    SEEN.clear()
    with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
        output = trio.run(serve_one, writes(mode, body), mode == "hang",
                          clock=trio.testing.MockClock(autojump_threshold=0))
    if ERRORS.records:
        record = ERRORS.records[0]
        cause = repr(record.exc_info[1]) if record.exc_info else ""
        raise OracleFailure(f"the server logged an error: {record.getMessage()} {cause}")
    if output:
        check_output(output, list(SEEN))


def main() -> None:
    libfuzzer_main(atheris, "http", run_one)


if __name__ == "__main__":
    main()
