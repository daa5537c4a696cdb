"""Fuzz harness for the node's HTTP listener: hypercorn serving our quart-trio app.

Input layout: byte 0 picks how the client's bytes arrive (mod 4), the rest is what a
client sends on one connection:

* 0 ``whole``: in one write, then, once the server has answered what it can, the
  client's end of the stream (EOF);
* 1 ``bytewise``: one byte per write (inputs up to 256 bytes), then EOF as in 0;
* 2 ``split``: in writes of 1-16 bytes (sizes from the input's own hash), then EOF;
* 3 ``hang``: in one write, then the client stays silent with its side open, so only
  the server's timeouts can end the connection.

One connection, as the listener serves it (relay/service/http/server.py:
hypercorn's trio connection server in our fault box, with the listener's own
settings), runs on trio's in-memory streams under a virtual clock (timeouts pass
at once), serving the real app (relay/service/http/app.py):
Twirp on an IngressService over an in-memory store, WHIP routes to a stub front
that answers every request 204, the operations routes, and the console over the
same IngressService, where the cookie ``ingress_console=fuzz`` is a signed-in
session whose CSRF token is ``fuzz`` (so inputs reach its forms).

Oracle (raises OracleFailure, i.e. a crash): the connection ends within the idle
timeout plus the read timeouts of the bytes sent; no error is logged (an app crash
means a route let something through); everything the server wrote parses, with an
h11 client, as complete HTTP/1.1 responses (interim 100s allowed), one per request
at most plus one error answer, none of them a 5xx but 501 (a request feature h11
refuses) and 503.

Run: ``python fuzz/run.py http --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import BYTEWISE_MAX, OracleFailure, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.service.http", "relay.service.console", "api",
                                          "hypercorn", "h11"])
      if atheris and __name__ == "__main__" else nullcontext()):
    import h11
    import trio
    import trio.testing
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app
    from livekit.protocol import ingress as pb

    from api.auth import Authenticator
    from api.service import EndpointUrls, IngressService
    from api.store import StoreConflict
    from api.twirp import TwirpServer
    from relay.service.console import ConsoleSessions, ConsoleSettings, console_blueprint
    from relay.service.console._sessions import ConsoleSession
    from relay.service.http.app import create_app
    from relay.service.http.server import CLOSE_GRACE, listener_config, serve_connection
    from relay.service.status import NodeStatus

MODES = ("whole", "bytewise", "split", "hang")
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 8 * 1024 * 1024
MEM_PER_BYTE = 256
CONFIG = listener_config("127.0.0.1", 0)
KEEP_ALIVE, READ = CONFIG.keep_alive_timeout, CONFIG.read_timeout


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Faults(logging.Handler):
    """The fault box's warnings: a hypercorn fault it contained in this connection."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.records.append(record)


ERRORS = _Errors()
FAULTS = _Faults()
logging.getLogger("relay.service.http.server").addHandler(FAULTS)
logging.getLogger("relay.service.http.hypercorn").addHandler(FAULTS)
logging.getLogger().addHandler(ERRORS)
logging.getLogger().setLevel(logging.CRITICAL)  # nothing printed; ERRORS still sees them
for _name in ("relay", "api", "hypercorn", "quart", "ingress-relay"):
    logging.getLogger(_name).addHandler(ERRORS)
    logging.getLogger(_name).setLevel(logging.WARNING)  # handled here, printed nowhere
    logging.getLogger(_name).propagate = False


class MemoryStore:
    """IngressStore in a dict: the harness needs the API's rules, not durability."""

    def __init__(self) -> None:
        self.items: dict[str, pb.IngressInfo] = {}

    async def create(self, info: pb.IngressInfo) -> None:
        if info.ingress_id in self.items:
            raise StoreConflict(info.ingress_id)
        self.items[info.ingress_id] = info

    async def get(self, ingress_id: str) -> pb.IngressInfo | None:
        return self.items.get(ingress_id)

    async def get_by_stream_key(self, stream_key: str) -> pb.IngressInfo | None:
        return next((i for i in self.items.values() if i.stream_key == stream_key), None)

    async def list(self, room_name: str | None = None) -> list[pb.IngressInfo]:
        return [i for i in self.items.values() if room_name in (None, i.room_name)]

    async def list_room_wire(self, room_name: str) -> bytes:
        return pb.ListIngressResponse(items=await self.list(room_name)).SerializeToString()

    async def put(self, info: pb.IngressInfo) -> bool:
        if info.ingress_id not in self.items:
            return False
        self.items[info.ingress_id] = info
        return True

    async def update(self, ingress_id: str,
                     change: Callable[[pb.IngressInfo], pb.IngressInfo]
                     ) -> pb.IngressInfo | None:
        if ingress_id not in self.items:
            return None
        item = pb.IngressInfo()
        item.CopyFrom(self.items[ingress_id])
        self.items[ingress_id] = change(item)  # no await in between: atomic
        return self.items[ingress_id]

    async def list_page(self, room_name: str | None, after: int, limit: int
                        ) -> tuple[list[pb.IngressInfo], int | None]:
        items = (await self.list(room_name))[after:]
        return items[:limit], after + limit if len(items) > limit else None

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> bool:
        if ingress_id not in self.items:
            return False
        self.items[ingress_id].state.CopyFrom(state)
        return True

    async def delete(self, ingress_id: str) -> pb.IngressInfo | None:
        return self.items.pop(ingress_id, None)


class StubWhip:
    """The WHIP front's face: every request is answered 204 (the route is fuzzed here;
    the WHIP core has its own harness, fuzz_sdp.py)."""

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> Any:
        class Reply:
            status, body, headers, content_type = 204, b"", (), "text/plain"

        return Reply()


class SignedInSessions(ConsoleSessions):
    """The console's sessions, where session id "fuzz" is always signed in."""

    FUZZ = ConsoleSession("fuzz", "fuzz", 0.0, 0.0)

    def get(self, session_id: str) -> ConsoleSession | None:
        return self.FUZZ if session_id == "fuzz" else super().get(session_id)


SEEN: list[str] = []  # the methods of the requests the app was given, in order
_SERVICE = IngressService(MemoryStore(), EndpointUrls("rtmp://x/x", "http://x/w"))
_APP = create_app(NodeStatus(), TwirpServer(_SERVICE, Authenticator({"key": "secret" * 6})),
                  StubWhip(), console_blueprint(
                      _SERVICE, ConsoleSettings("key", "secret" * 6, "ws://127.0.0.1:7880"),
                      SignedInSessions("key", "secret" * 6)))


async def recording_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        SEEN.append(scope["method"])
    await _APP(scope, receive, send)


APP = wrap_app(recording_app, CONFIG.wsgi_max_body_size, None)


class _Socket:
    """What hypercorn reads of a socket: its family and two addresses."""

    family = 2  # AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)


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
    server_side.socket = _Socket()  # type: ignore[attr-defined]
    received = bytearray()
    done = trio.Event()

    async def run_server() -> None:
        await serve_connection(APP, CONFIG, WorkerContext(None), server_side)
        done.set()

    read = trio.Event()

    async def read_all() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await client.receive_some(65536):
                received.extend(data)
        read.set()

    budget = KEEP_ALIVE + READ * (sum(len(c) for c in chunks) + 2) + CLOSE_GRACE + 10
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        nursery.start_soon(read_all)
        try:
            for chunk in chunks:
                if chunk:
                    await client.send_all(chunk)
            if not hang:
                # a client reads its answers before it closes (hypercorn treats a
                # half-close as the end of the connection and drops answers in flight)
                await trio.testing.wait_all_tasks_blocked()
                await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed first: fine
        with trio.move_on_after(budget) as scope:
            await done.wait()
        if scope.cancelled_caught:
            raise OracleFailure("the connection did not end within its timeouts")
        with trio.move_on_after(1):  # what the server wrote last, up to its close
            await read.wait()
        nursery.cancel_scope.cancel()
    return bytes(received)


def check_output(output: bytes, methods: list[str]) -> None:
    """The server's bytes are whole HTTP/1.1 responses as an h11 client reads them,
    the client having sent the requests the app saw (GET for the rest: a request
    the server refused before the app saw it). A request the client never finished
    may go unanswered (interim 100 at most) when the server times the connection out."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(output)
    conn.receive_data(b"")
    answered = 0
    awaiting_final = False  # a request sent, no final response begun yet
    while True:
        if conn.our_state is h11.IDLE:
            awaiting_final = True
            if not conn.trailing_data[0]:
                return  # every response read; the server's close is all that is left
            method = methods[answered] if answered < len(methods) else "GET"
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if awaiting_final and "ConnectionClosed" in str(exc):
                return  # closed before answering an unfinished request
            raise OracleFailure(f"malformed response bytes ({exc}): {output[:300]!r}") from None
        if event is h11.NEED_DATA:
            raise OracleFailure(f"a response was cut short: {output[-300:]!r}")
        if isinstance(event, h11.ConnectionClosed):
            return
        if isinstance(event, h11.Response):
            answered += 1
            awaiting_final = False
            if event.status_code >= 500 and event.status_code not in (501, 503):
                raise OracleFailure(f"server error {event.status_code}: {output[:300]!r}")
            if not 200 <= event.status_code < 600:
                raise OracleFailure(f"unexpected status {event.status_code}")
            if answered > len(methods) + 1:
                raise OracleFailure(f"{answered} responses for {len(methods)} requests")
        if isinstance(event, h11.EndOfMessage):
            if conn.their_state is h11.MUST_CLOSE:
                continue  # ConnectionClosed comes next
            conn.start_next_cycle()


def has_malformed_request(data: bytes) -> bool:
    """Whether h11 (which hypercorn uses) refuses some request in these bytes followed
    by the client's close (a request cut off by it counts), each earlier one answered
    with an empty 200."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return True
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return False
        if isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.their_state is h11.MUST_CLOSE:  # bytes after it are an error
                continue
            conn.start_next_cycle()


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode, body = MODES[data[0] % len(MODES)], data[1:]
    ERRORS.records.clear()
    FAULTS.records.clear()
    # trio shuffles runnable tasks on purpose; seeded from the input, a crash file
    # replays the same interleaving (the generator is private to trio)
    trio._core._run._r.seed(hashlib.sha256(data).digest())
    SEEN.clear()
    with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
        output = trio.run(serve_one, writes(mode, body), mode == "hang",
                          clock=trio.testing.MockClock(autojump_threshold=0))
    if ERRORS.records:
        record = ERRORS.records[0]
        cause = repr(record.exc_info[1]) if record.exc_info else ""
        raise OracleFailure(f"the server logged an error: {record.getMessage()} {cause}")
    if output:
        try:
            check_output(output, list(SEEN))
        except OracleFailure as exc:
            # hypercorn closes at once on a fault the box contained, or on a malformed
            # request pipelined behind one still being answered: that answer is cut
            cut = "cut short" in str(exc) or "peer closed" in str(exc)
            if not (cut and (FAULTS.records or has_malformed_request(body))):
                raise


def main() -> None:
    libfuzzer_main(atheris, "http", run_one)


if __name__ == "__main__":
    main()
