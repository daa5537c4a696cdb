"""hypercorn serving the node's quart-trio apps, each connection in its own fault box.

hypercorn does the HTTP (its h11 protocol and its trio `TCPServer`, one per
connection, with the listener's settings below). This module is the accept loop
around it, in place of `hypercorn.trio.serve`, for two defects of hypercorn 0.18
that the `http` fuzz harness found (fuzz/fuzz_http.py, corpus files named in
docs/DESIGN.md):

* a request that h11 refuses while a response is being written makes two tasks
  write to the socket at once; trio's BusyResourceError then escapes `TCPServer`
  and, under `hypercorn.trio.serve`, ends the whole listener (one client could take
  the node's API down). Here it ends that connection, with a warning.
* a pipelined request after a response that closes the connection leaves the
  connection's reader waiting forever for a "can read" event nobody sets: the
  socket is closed but the task and its buffers stay. Here a connection whose
  stream was closed is cancelled `CLOSE_GRACE` seconds later if it has not ended.
* a connection the client closed stays until its keep-alive timer ends (75 s),
  holding one of ``max_connections``: here it is ended `EOF_GRACE` after the EOF.
* a method hypercorn upper-cases for the app but h11 frames as sent (``hEAD``):
  the app answers a HEAD, h11 expects a body, and hypercorn logs the app's
  failure at ERROR. The connection ends either way; `_H11FramingFaults` makes the
  record a warning, so a client cannot fill the error log with it.

Limits of our own (`HttpLimits`, config keys ``http_request_timeout`` and
``http_max_connections``), because hypercorn's timeouts restart on every byte and
nothing in it caps connections (200 peers sending a header byte every 5 s were all
still open after 40 s):

* a request's head and body must arrive within ``request_timeout`` (10 s) of its
  first byte, however they trickle in; past it the client gets 408 and the
  connection closes. The clock stops once the app has the whole body (a WHIP
  answer may take the worker's start-up) and starts again with the next request.
* at most ``max_connections`` (1,000) connections per listener; one more is closed
  at once (logged once, then every 100th), so a flood cannot take all sockets.

Settings (hypercorn's own keys; nothing here parses HTTP):

* ``keep_alive_timeout`` 75 s: idle keep-alive connections are closed after it.
* ``read_timeout`` 30 s: a connection silent in the middle of a request is closed.
* ``h11_max_incomplete_size`` 64 KiB: a request head still incomplete past this is
  refused (431) before the app sees it. Bodies are bounded by the app: 1 MiB for
  Twirp (api/twirp.py), 64 KiB for WHIP and the rest (app.py).
* ``keep_alive_max_requests``: no cap; hypercorn's default of 1,000 calls per
  connection would make every API client reconnect mid-stream.
* ``graceful_timeout`` 2 s: on shutdown, calls in flight get this long to finish;
  idle keep-alive connections close at once.
* TLS when ``http_cert_file``/``http_key_file`` are configured: a browser on an
  https page can only POST WHIP to an https URL.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr, wrap_app

from ..trio_util import sole_exception

log = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT = 75
READ_TIMEOUT = 30
MAX_HEAD_BYTES = 64 * 1024
GRACEFUL_TIMEOUT = 2.0
CLOSE_GRACE = 5.0  # a connection still running this long after its socket closed is ended
EOF_GRACE = 1.0  # ... or this long after the client closed its side
NO_REQUEST_CAP = 1 << 62
REFUSAL_LOG_EVERY = 100  # refused connections between two log lines
TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
                 b"content-length: 0\r\n\r\n")


@dataclass(frozen=True)
class HttpLimits:
    """What clients may hold of one listener (see the module docstring)."""

    request_timeout: float = 10.0
    max_connections: int = 1000


class _H11FramingFaults(logging.Filter):
    """hypercorn's "Error in ASGI Framework" caused by h11 refusing a response's
    framing (see the module docstring) is the server's fault, not the app's: a
    warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sole_exception(record.exc_info[1]) if record.exc_info else None
        if (record.levelno >= logging.ERROR and exc is not None
                and type(exc).__module__.startswith("h11")
                and type(exc).__name__ == "LocalProtocolError"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
            record.msg = f"{record.getMessage()}: {exc!r} (connection ended)"
            record.args = ()
        return True


HYPERCORN_LOG = logging.getLogger("relay.service.http.hypercorn")
HYPERCORN_LOG.addFilter(_H11FramingFaults())


def listener_config(host: str, port: int, *, cert_file: str = "", key_file: str = ""
                    ) -> HypercornConfig:
    """hypercorn's configuration of one listener (see the module docstring)."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.read_timeout = READ_TIMEOUT
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.keep_alive_max_requests = NO_REQUEST_CAP
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = HYPERCORN_LOG
    config.backlog = 1024
    if cert_file:
        config.certfile, config.keyfile = cert_file, key_file
        config.alpn_protocols = ["http/1.1"]
    return config


async def serve_app(app: Any, config: HypercornConfig, *, limits: HttpLimits = HttpLimits(),
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
    """Serve `app` on `config.bind` until cancelled; started with the URLs it listens
    on (port 0: the real port)."""
    asgi = wrap_app(app, config.wsgi_max_body_size, None)
    context = WorkerContext(None)
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[trio.abc.Listener[Any]] = []
    urls = []
    for sock in sockets.secure_sockets + sockets.insecure_sockets:
        sock.listen(config.backlog)
        listener: trio.abc.Listener[Any] = trio.SocketListener(
            trio.socket.from_stdlib_socket(sock))
        scheme = "http"
        if ssl_context is not None:
            listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
            scheme = "https"
        listeners.append(listener)
        urls.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")

    active = refused = 0

    async def handler(stream: trio.abc.Stream) -> None:
        nonlocal active, refused
        if active >= limits.max_connections:
            if refused % REFUSAL_LOG_EVERY == 0:
                log.warning("HTTP connection from %s refused: max connections (%d) reached "
                            "(%d refused so far)", _peer(stream), limits.max_connections,
                            refused + 1)
            refused += 1
            await trio.aclose_forcefully(stream)
            return
        active += 1
        try:
            await serve_connection(asgi, config, context, stream,
                                   request_timeout=limits.request_timeout)
        finally:
            active -= 1

    lifespan = Lifespan(asgi, config, {})
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    await accepting.start(partial(trio.serve_listeners, handler, listeners,
                                                  handler_nursery=connections))
                    task_status.started(urls)
                    await trio.sleep_forever()
            finally:
                # graceful: idle connections close now, calls in flight may finish
                with trio.CancelScope(shield=True):
                    await context.terminated.set()
                connections.cancel_scope.shield = True
                connections.cancel_scope.deadline = trio.current_time() + (
                    config.graceful_timeout)
        lifespan_nursery.cancel_scope.cancel()


async def serve_connection(asgi: Any, config: HypercornConfig, context: WorkerContext,
                           stream: trio.abc.Stream, *,
                           request_timeout: float = HttpLimits.request_timeout) -> None:
    """One connection to its end; whatever goes wrong in it stays in it."""
    watched = _WatchedStream(stream, request_timeout)
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watched.end_after_close, scope)
                with watched.request_deadline:
                    await TCPServer(watched.guard(asgi), config, context, {},
                                    watched).run()  # type: ignore[arg-type]
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught and not watched.client_closed:
            log.warning("HTTP connection from %s still running %.0f s after its socket "
                        "closed: ended", watched.peer(), CLOSE_GRACE)
        elif watched.request_deadline.cancelled_caught:
            log.info("HTTP connection from %s: request not received within %g s: closed",
                     watched.peer(), request_timeout)
            await watched.answer_timeout()
    except Exception as exc:  # a fault of the server in this connection: end it only
        log.warning("HTTP connection from %s ended by a server fault: %r", watched.peer(),
                    exc)
        await trio.aclose_forcefully(stream)


class _WatchedStream:
    """A connection's stream that knows when hypercorn closed it (its EOF or aclose)
    and times each request's arrival (`request_deadline`, armed by the first byte of
    a request, disarmed once the app has read the whole body or answered).
    Everything else is passed through, so hypercorn sees the socket, or the TLS
    stream, it expects."""

    def __init__(self, stream: trio.abc.Stream, request_timeout: float) -> None:
        self._stream = stream
        self._closed = trio.Event()
        self._request_timeout = request_timeout
        self._reading = True  # a request of the client is (or may be) arriving
        self._sent = False  # bytes went out since the deadline was armed
        self._grace = CLOSE_GRACE
        self.client_closed = False
        self.request_deadline = trio.CancelScope()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send_all(self, data: bytes) -> None:
        self._sent = True
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        if not data and not self._closed.is_set():
            # hypercorn keeps a connection whose client left until its keep-alive timer
            # ends (75 s), holding a slot of max_connections: end it soon instead
            self.client_closed, self._grace = True, EOF_GRACE
            self._closed.set()
        if data and self._reading and self.request_deadline.deadline == math.inf:
            self.request_deadline.deadline = trio.current_time() + self._request_timeout
            self._sent = False
        return data

    def _request_read(self, reading_next: bool) -> None:
        self.request_deadline.deadline = math.inf
        self._reading = reading_next

    def guard(self, asgi: Any) -> Any:
        """`asgi`, with the request deadline disarmed once the app has read the body."""

        async def guarded(scope: dict[str, Any], receive: Any, send: Any,
                          *args: Any) -> None:
            if scope.get("type") != "http":
                await asgi(scope, receive, send, *args)
                return

            async def receive_body() -> dict[str, Any]:
                message = await receive()
                if not message.get("more_body", False):
                    self._request_read(reading_next=False)
                return message

            try:
                await asgi(scope, receive_body, send, *args)
            finally:
                self._request_read(reading_next=True)

        return guarded

    async def answer_timeout(self) -> None:
        """408 to a client whose request timed out, if nothing was answered yet."""
        with trio.move_on_after(1):
            try:
                if not self._sent:
                    await self._stream.send_all(TIMEOUT_REPLY)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(self._stream)

    async def send_eof(self) -> None:  # hypercorn sends EOF only when it closes
        self._closed.set()
        await self._stream.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self._closed.set()
        await self._stream.aclose()

    async def end_after_close(self, scope: trio.CancelScope) -> None:
        await self._closed.wait()
        await trio.sleep(self._grace)
        scope.cancel()

    def peer(self) -> str:
        return _peer(self._stream)


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None)
    try:
        host, port = sock.getpeername()[:2]
    except (AttributeError, OSError, ValueError):
        return "?"
    return f"{host}:{port}"
