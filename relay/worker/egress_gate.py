"""The egress gate: every TCP connection of an http(s) pull goes through it.

FFmpeg resolves host names itself and connects wherever they point: the first
segment of a playlist, each HLS segment (on any host the playlist names), every
redirect it follows, every reconnection. Checking the URL's host once before
`av.open` would leave all of those, and a DNS answer that changes between the check
and the connection (rebinding), unchecked. So the session worker runs this gate: a
minimal HTTP proxy on 127.0.0.1 given to FFmpeg (`http_proxy`, which its HLS
demuxer passes on to segments) and to the urllib probe. For each connection it
resolves the target once, checks every address (relay/worker/egress.py) and connects
to a checked address itself: what was checked is what is reached.

- `CONNECT host:port` (https): a tunnel; TLS stays end to end between the client and
  the origin, so certificates are verified by the client as without a proxy.
- `GET http://host/path` (plain http): forwarded in origin form. Requests on one
  client connection may name another origin (after a redirect): the gate then
  checks and connects again at that request boundary.

A refused or unreachable target gets a bodiless 403/502/504 and the reason is kept
(`take_error()`) for the session's error text, which says nothing of what a refused
target would have answered.

The protocol half is sans-IO (_proxy_requests.py); this is its trio shell. The gate
is served in a nursery its pull owns (`open_egress_gate()`): one task per client
connection, one more per origin connection copying the origin's bytes back, and
leaving the nursery ends them all. Its clients, FFmpeg and the probe, block in
threads of their own; the event loop never waits for them, it serves them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from . import egress
from ._proxy_requests import (
    NEED_DATA,
    PAUSED,
    Connect,
    ConnectionClosed,
    Forward,
    ProxyRequestError,
    ProxyRequests,
)

log = logging.getLogger("relay.worker.egress_gate")

HEAD_TIMEOUT = 10.0  # for the first request head of a connection
CHUNK = 64 * 1024
LINGER = 2.0  # seconds an origin may take to finish after its client is done
ANSWER_LINGER = 2.0  # seconds, and ANSWER_DRAIN bytes, read after an error answer
ANSWER_DRAIN = 1024 * 1024
REASONS = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
           502: "Bad Gateway", 504: "Gateway Timeout"}
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class _Failure(Exception):
    """The gate answers `status` and closes; `text` is kept for the session's error."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def failure_text(reason: object, host: str, port: int | None, timeout: float) -> str:
    """A connection failure in the words the session's error uses (the probe's and the
    gate's alike)."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS failure with {host}: {reason.verify_message or reason}"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failure with {host}: {reason.reason or reason}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host {host}"
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot reach {host}{f':{port}' if port else ''}: connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer from {host} in {timeout:.0f} s"
    return f"cannot reach {host}: {reason}"


@contextlib.asynccontextmanager
async def open_egress_gate(refuse: egress.Refuse = egress.refusal, *,
                           getaddrinfo: Callable[..., Sequence[egress.AddrInfo]] | None = None,
                           connect_timeout: float = 10.0) -> AsyncIterator[EgressGate]:
    """A gate serving for the `async with` block, its URL known on entry; leaving the
    block closes its listener and every connection through it."""
    gate = EgressGate(refuse, getaddrinfo=getaddrinfo, connect_timeout=connect_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.serve)
        try:
            yield gate
        finally:
            nursery.cancel_scope.cancel()


class EgressGate:
    """One pull's gate (see the module docstring): `serve()` it in a nursery, or use
    `open_egress_gate()`. `url` is its proxy URL. `getaddrinfo`, if given, is a
    blocking resolver (tests give their own; it runs in a thread); by default names
    are resolved with trio.socket.getaddrinfo."""

    def __init__(self, refuse: egress.Refuse = egress.refusal, *,
                 getaddrinfo: Callable[..., Sequence[egress.AddrInfo]] | None = None,
                 connect_timeout: float = 10.0) -> None:
        self._refuse = refuse
        self._getaddrinfo = getaddrinfo
        self.connect_timeout = connect_timeout
        self._url: str | None = None
        # set on the event loop, read by the probe's and FFmpeg's threads
        self._lock = threading.Lock()
        self._error: str | None = None
        self.refused: str | None = None  # the first refusal, kept: the pull fails with it
        # no_proxy would send matching hosts around the gate (FFmpeg and urllib read it)
        for name in ("no_proxy", "NO_PROXY"):
            os.environ.pop(name, None)

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the egress gate is not serving yet")
        return self._url

    def take_error(self) -> str | None:
        """Why the gate last refused or failed a connection (then forgotten), if it did.
        Safe from any thread."""
        with self._lock:
            error, self._error = self._error, None
        return error

    async def serve(self, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1 and serve until cancelled; started once `url` is set."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    # -- one client connection ----------------------------------------------------------

    async def _serve(self, client: trio.SocketStream) -> None:
        requests = ProxyRequests()
        try:
            async with trio.open_nursery() as copies:  # origin -> client, one per origin
                await self._relay(client, requests, copies)
        finally:
            await client.aclose()  # closes even when cancelled

    async def _relay(self, client: trio.SocketStream, requests: ProxyRequests,
                     copies: trio.Nursery) -> None:
        """The connection's requests; a failure is answered once its origin is closed
        (no answer of the origin is then still on its way to the client)."""
        try:
            with trio.fail_after(HEAD_TIMEOUT):
                request = await _next_request(client, requests)
            if isinstance(request, Connect):
                await self._tunnel(client, requests, request, copies)
            elif isinstance(request, Forward):
                await self._forward(client, requests, request, copies)
        except ProxyRequestError as exc:
            log.debug("egress gate: %s", exc)
            await _answer(client, exc.status)
        except _Failure as exc:
            if exc.text:
                with self._lock:
                    self._error = exc.text
            await _answer(client, exc.status)
        except (*_STREAM_ERRORS, trio.TooSlowError) as exc:
            log.debug("egress gate connection ended: %r", exc)

    async def _tunnel(self, client: trio.SocketStream, requests: ProxyRequests,
                      request: Connect, copies: trio.Nursery) -> None:
        """https: bytes both ways between the client and the checked origin."""
        origin = _Origin(await self._open(request.host, request.port))
        try:
            await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if requests.trailing_data:
                await origin.stream.send_all(requests.trailing_data)
            await copies.start(origin.copy_to, client)
            while data := await client.receive_some(CHUNK):
                await origin.stream.send_all(data)
        finally:
            await origin.finish()

    async def _forward(self, client: trio.SocketStream, requests: ProxyRequests,
                       request: Forward, copies: trio.Nursery) -> None:
        """Plain http: each request in origin form to its checked origin."""
        origin: _Origin | None = None
        where: tuple[str, int] | None = None
        try:
            while True:
                if origin is None or (request.host, request.port) != where:
                    if origin is not None:  # another origin, at a request boundary
                        retired, origin = origin, None
                        await retired.close(linger=0)  # its end is not the client's
                    origin = _Origin(await self._open(request.host, request.port))
                    where = (request.host, request.port)
                    await copies.start(origin.copy_to, client)
                await origin.stream.send_all(request.head)
                event = await _next_request(client, requests)
                if isinstance(event, ConnectionClosed):
                    return
                assert isinstance(event, Forward)  # the parser refuses CONNECT here
                request = event
        finally:
            if origin is not None:
                await origin.finish()

    async def _open(self, host: str, port: int) -> trio.SocketStream:
        """Resolve once, check, connect to a checked address; _Failure otherwise."""
        try:
            infos = egress.check(host, await self._lookup(host, port), self._refuse)
        except egress.Refused as exc:
            log.warning("egress refused: %s is %s", host, exc.kind)
            self.refused = self.refused or str(exc)
            raise _Failure(403, str(exc)) from None
        except (socket.gaierror, UnicodeError) as exc:
            raise _Failure(502, failure_text(socket.gaierror(str(exc)), host, port,
                                             self.connect_timeout)) from None
        reason: OSError = OSError("no IPv4 or IPv6 address")
        for family, _, _, _, sockaddr in infos:
            try:
                sock = trio.socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                reason = exc
                continue
            try:
                with trio.fail_after(self.connect_timeout):
                    await sock.connect(sockaddr)  # the checked address, never the name
            except (OSError, trio.TooSlowError) as exc:
                sock.close()
                reason = exc if isinstance(exc, OSError) else TimeoutError()
                continue
            except BaseException:
                sock.close()
                raise
            return trio.SocketStream(sock)
        status = 504 if isinstance(reason, TimeoutError) else 502
        raise _Failure(status, failure_text(reason, host, port, self.connect_timeout))

    async def _lookup(self, host: str, port: int) -> Sequence[egress.AddrInfo]:
        if self._getaddrinfo is None:
            return await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return await trio.to_thread.run_sync(
            functools.partial(self._getaddrinfo, host, port, type=socket.SOCK_STREAM),
            abandon_on_cancel=True)


class _Origin:
    """A connection to a checked origin, and the task copying its bytes to the client."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._scope = trio.CancelScope()
        self._copying = False
        self._done = trio.Event()

    async def copy_to(self, client: trio.SocketStream, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The origin's bytes to the client, then its end; cancelled (by close()), not
        the end: a retired origin's end is not the client's."""
        self._copying = True
        task_status.started()
        try:
            with self._scope:
                try:
                    while data := await self.stream.receive_some(CHUNK):
                        await client.send_all(data)
                except _STREAM_ERRORS as exc:
                    log.debug("egress gate origin ended: %r", exc)
                with contextlib.suppress(*_STREAM_ERRORS):
                    await client.send_eof()
        finally:
            self._done.set()

    async def finish(self) -> None:
        """The client is done: pass its end on, let the answer in flight reach it (for
        at most LINGER seconds), then close."""
        try:
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.send_eof()
        finally:
            await self.close(LINGER)

    async def close(self, linger: float) -> None:
        """Stop copying after at most `linger` seconds and close the origin's connection;
        returns once the copy has stopped (it sends nothing to the client after)."""
        try:
            with trio.move_on_after(linger):
                await self._done.wait()
        finally:
            self._scope.cancel()
            with trio.CancelScope(shield=True):
                if self._copying:
                    await self._done.wait()  # at once: it was cancelled
                await self.stream.aclose()


async def _next_request(client: trio.SocketStream, requests: ProxyRequests
                        ) -> Connect | Forward | ConnectionClosed:
    while (event := requests.next_event()) is NEED_DATA:
        requests.receive_data(await client.receive_some(CHUNK))
    assert event is not PAUSED  # nothing is read after a Connect
    return event


async def _answer(client: trio.SocketStream, status: int) -> None:
    """A bodiless answer, then a lingering close: unread bytes would turn the close
    into a reset that can destroy the answer before the client has read it."""
    with contextlib.suppress(*_STREAM_ERRORS):
        await client.send_all(f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Length: 0"
                              "\r\nConnection: close\r\n\r\n".encode())
        await client.send_eof()
        with trio.move_on_after(ANSWER_LINGER):
            drained = 0
            while drained < ANSWER_DRAIN and (data := await client.receive_some(CHUNK)):
                drained += len(data)
