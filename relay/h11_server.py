"""The API listener's HTTP/1.1 server: h11 for the protocol, one trio task per
connection, the ASGI app run inline, one socket write per response.

Why not hypercorn here: on this listener the calls are small and many (Twirp,
WHIP signalling, health), and under hypercorn 96% of a call's CPU was the
server's own machinery: a task per request, a keep-alive timer task restarted
per request, ASGI message plumbing, three socket writes per response. With this
loop over the same h11, ListIngress by room went from ~1,700 to ~5,000 calls/s
on one process (docs/PERFORMANCE.md). The separate health and Prometheus ports
are served by it too.

What it does not do, because nothing on this listener needs it: HTTP/2,
WebSockets, TLS, lifespan events, streamed responses (a response is written when
the app's last body message arrives). h11 owns the protocol state (framing,
keep-alive, pipelining, `Expect: 100-continue`, the head size bound); this module
is the thin trio shell, as the RTMP server is around rtmp/.
"""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

HTTP_BACKLOG = 1024
MAX_RECV = 65536
MAX_HEAD_BYTES = 64 * 1024  # an incomplete request head past this (+ one read): 431
KEEP_ALIVE_TIMEOUT = 75.0  # idle between requests (hypercorn's setting here before)
READ_TIMEOUT = 30.0  # silence in the middle of a request
LINGER_SECONDS = 1.0  # closing on a client that is still sending: see _linger
LINGER_READS = 256  # at most this many reads (16 MiB) are dropped meanwhile


def open_listener(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket, made here rather than inside `serve()` so that
    API replicas (relay/api_replica.py) can inherit the API's; not inheritable
    unless passed on purpose."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepts
        sock.bind((host, port))
        sock.listen(HTTP_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def asgi_scope(method: str, target: bytes, headers: list[tuple[bytes, bytes]],
               client: tuple[str, int], http_version: str = "1.1") -> dict[str, Any]:
    """The ASGI `http` scope of a request (`target`: path and query)."""
    path, _, query = target.partition(b"?")
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": http_version, "method": method, "scheme": "http",
            "path": path.decode("latin-1"), "raw_path": path, "query_string": query,
            "root_path": "", "headers": headers, "client": client, "server": None,
            "extensions": {}}


class H11Server:
    """Serves `app` (ASGI 3, `http` scope only) on a listening socket."""

    def __init__(self, app: Any, *, keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.app = app
        self.keep_alive_timeout = keep_alive_timeout
        self.read_timeout = read_timeout

    async def serve(self, sock: socket.socket,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept on `sock` (bound and listening) until cancelled, then close it;
        reports its URL."""
        sock.setblocking(False)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        host, port = sock.getsockname()[:2]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self.connection, [listener])
                task_status.started([f"http://{host}:{port}"])
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def connection(self, stream: trio.abc.HalfCloseableStream) -> None:
        """One connection, request after request. Whatever goes wrong ends this
        connection only: the exception is logged, the server goes on."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        client = _peer(stream)
        try:
            while True:
                event = await self.next_event(conn, stream, self.keep_alive_timeout)
                if not isinstance(event, h11.Request):
                    return  # closed by the client, or idle too long
                await _Exchange(self, conn, stream, event, client).run()
                if conn.their_state is h11.SEND_BODY:  # answered before the body came
                    await _linger(stream)
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # Connection: close
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await _refuse(conn, stream, exc)
            await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("HTTP connection from %s:%d failed", *client)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def next_event(self, conn: h11.Connection, stream: trio.abc.ReceiveStream,
                         timeout: float) -> Any:
        """The next h11 event, reading as needed. EOF, or no bytes for `timeout`
        seconds, reads as the end of the stream (ConnectionClosed when idle,
        RemoteProtocolError in the middle of a request)."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = b""
            with trio.move_on_after(timeout):
                data = await stream.receive_some(MAX_RECV)
            conn.receive_data(data)
            timeout = self.read_timeout


class _Exchange:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    def __init__(self, server: H11Server, conn: h11.Connection,
                 stream: trio.abc.HalfCloseableStream,
                 request: h11.Request, client: tuple[str, int]) -> None:
        self.server = server
        self.conn = conn
        self.stream = stream
        self.request = request
        self.client = client
        self.start: dict[str, Any] | None = None
        self.body: list[bytes] = []
        self.sent = False
        self.body_done = False

    async def run(self) -> None:
        if self.request.method == b"CONNECT":  # a 2xx would turn the connection into a
            self.start = {"status": 405, "headers": [  # tunnel; nothing here makes one
                (b"allow", b"GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
                (b"content-type", b"text/plain"), (b"connection", b"close")]}
            self.body = [b"CONNECT is not served here\n"]
            await self._write()
            return
        method = self.request.method.decode("ascii")
        scope = asgi_scope(method, self.request.target, list(self.request.headers),
                           self.client, self.request.http_version.decode("ascii"))
        try:
            await self.server.app(scope, self.receive, self.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            raise
        except Exception:
            log.exception("%s %s failed", method, scope["path"])
            if self.sent:
                return
            self.start = {"status": 500, "headers": [(b"content-type", b"text/plain"),
                                                     (b"connection", b"close")]}
            self.body = [b"internal error\n"]
        if not self.sent:  # an app that returned without finishing its response
            if self.start is None:
                self.start = {"status": 500, "headers": [(b"connection", b"close")]}
            await self._write()

    async def receive(self) -> dict[str, Any]:
        if self.body_done:
            await trio.sleep_forever()  # after the body only a disconnect could come
        if self.conn.they_are_waiting_for_100_continue:
            await self.stream.send_all(self.conn.send(
                h11.InformationalResponse(status_code=100, headers=[])))
        event = await self.server.next_event(self.conn, self.stream, self.server.read_timeout)
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        self.body_done = True
        if isinstance(event, h11.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body" and not self.sent:
            self.body.append(message.get("body", b""))
            if not message.get("more_body", False):
                await self._write()

    async def _write(self) -> None:
        assert self.start is not None
        status = int(self.start["status"])
        body = b"".join(self.body)
        headers = [(k, v) for k, v in self.start.get("headers", [])
                   if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        self.sent = True
        out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                          reason=_reason(status)))
        if body and self.request.method != b"HEAD":
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)


def _peer(stream: trio.abc.Stream) -> tuple[str, int]:
    """(address, port) of a socket stream's peer; ("", 0) for any other stream."""
    try:
        peer = stream.socket.getpeername()  # type: ignore[attr-defined]
        return str(peer[0]), int(peer[1])
    except (AttributeError, OSError, IndexError, TypeError, ValueError):
        return "", 0


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Close the way a client still sending can read our answer: end our side, then
    read and drop what it sends for a moment (closing with unread bytes makes the
    kernel reset the connection, and the reset can destroy the answer in flight)."""
    try:
        await stream.send_eof()
        with trio.move_on_after(LINGER_SECONDS):
            for _ in range(LINGER_READS):
                if not await stream.receive_some(MAX_RECV):
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def _refuse(conn: h11.Connection, stream: trio.abc.SendStream,
                  exc: h11.RemoteProtocolError) -> None:
    """Answer a request we cannot parse with h11's status for it (400, 431, ...),
    when the connection is still at a point where an answer can go out."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"bad request: {exc}\n".encode()
    status = exc.error_status_hint
    try:
        out = conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
            (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]))
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(out)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
