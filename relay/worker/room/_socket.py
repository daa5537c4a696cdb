"""The signal WebSocket to the LiveKit server: trio streams + wsproto (sans-IO).

Binary messages in and out, whole; ``ws://`` over TCP, ``wss://`` over TLS with
the system's CA store. What the messages mean is relay/lksignal's business.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from relay.lksignal import MAX_MESSAGE

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536


class SignalSocketError(Exception):
    """The signal WebSocket could not be opened, or broke."""


class SignalSocket:
    """One WebSocket, opened by :func:`open_signal_socket`; one reader, one writer."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._buffer = bytearray()
        self._pending: list[bytes] = []
        self._send_lock = trio.Lock()
        self.closed = False

    async def send(self, message: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(self._ws.send(Message(data=message)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SignalSocketError(f"signal connection lost: {exc}") from exc

    async def receive(self) -> bytes:
        """The next whole binary message; SignalSocketError when the server closes."""
        # what came with the upgrade's answer, or with the last read, first: the join
        # often shares a TCP segment with the 101
        for event in self._ws.events():
            await self._handle(event)
        while not self._pending:
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise SignalSocketError(f"signal connection lost: {exc}") from exc
            if not data:
                raise SignalSocketError("the server closed the signal connection")
            self._ws.receive_data(data)
            for event in self._ws.events():
                await self._handle(event)
        return self._pending.pop(0)

    async def _handle(self, event: object) -> None:
        if isinstance(event, BytesMessage):
            self._buffer += event.data
            if len(self._buffer) > MAX_MESSAGE:
                raise SignalSocketError(f"a signal message over {MAX_MESSAGE} bytes")
            if event.message_finished:
                self._pending.append(bytes(self._buffer))
                self._buffer.clear()
        elif isinstance(event, Ping):
            async with self._send_lock:
                try:
                    await self._stream.send_all(self._ws.send(event.response()))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise SignalSocketError(f"signal connection lost: {exc}") from exc
        elif isinstance(event, CloseConnection):
            raise SignalSocketError(f"the server closed the signal connection "
                                    f"({event.code} {event.reason})")
        elif isinstance(event, TextMessage):
            raise SignalSocketError("a text signal message (we speak protobuf only)")

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with trio.move_on_after(1):
            try:
                async with self._send_lock:
                    await self._stream.send_all(self._ws.send(CloseConnection(code=1000)))
            except Exception:  # closing a broken socket: nothing left to tell
                pass
        await trio.aclose_forcefully(self._stream)


async def open_signal_socket(url: str, path: str) -> SignalSocket:
    """Connect to ``url`` (``ws(s)://host[:port]``) and upgrade at ``path``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SignalSocketError(f"not a LiveKit URL: {url!r}")
    secure = parts.scheme in ("wss", "https")
    port = parts.port or (443 if secure else 80)
    base = parts.path.rstrip("/")
    with trio.move_on_after(CONNECT_TIMEOUT) as timeout:
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if secure:
                stream = trio.SSLStream(stream, ssl.create_default_context(),
                                        server_hostname=parts.hostname)
                await stream.do_handshake()
            ws = WSConnection(ConnectionType.CLIENT)
            host = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
            await stream.send_all(ws.send(Request(host=host, target=base + path)))
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise SignalSocketError("the server closed the connection during the "
                                            "WebSocket upgrade")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return SignalSocket(stream, ws)
                    if isinstance(event, RejectConnection):
                        body = b""
                        if event.has_body:
                            for more in ws.events():
                                if isinstance(more, RejectData):
                                    body += more.data
                        raise SignalSocketError(
                            f"the server refused the connection ({event.status_code}): "
                            f"{body[:200].decode(errors='replace').strip()}")
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise SignalSocketError(f"cannot connect to {parts.hostname}:{port}: "
                                    f"{exc}") from exc
    assert timeout.cancelled_caught
    raise SignalSocketError(f"no answer from {parts.hostname}:{port} in "
                            f"{CONNECT_TIMEOUT:.0f} s")
