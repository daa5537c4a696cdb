"""What an HTTP proxy client sends, sans-IO: request heads in, typed events out.

The egress gate (egress_gate.py) is the HTTP proxy of FFmpeg and of the urllib probe.
This is its protocol half, in the style of h11: bytes in (`receive_data()`, b"" for
the end of the input), events out (`next_event()`, NEED_DATA until a whole head is
buffered), no sockets, no clocks, one buffer bounded by HEAD_LIMIT. It accepts what a
pull sends and nothing more:

- `CONNECT host:port` (https) -> `Connect`. A tunnel follows: the bytes the client
  sent after the head are `trailing_data`, and the parser is done (PAUSED).
- `GET`/`HEAD http://host[:port]/path` (plain http) -> `Forward`, the head rewritten
  in origin form (`GET /path HTTP/1.1`) without proxy-* headers. Requests follow one
  another on a connection, and each may name another origin (after a redirect).
- the end of the input between two requests -> `ConnectionClosed`.

Anything else raises ProxyRequestError, whose `status` (400, 405) is the answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT = 16 * 1024  # bytes of a request head, its blank line not counted
_END = b"\r\n\r\n"


class ProxyRequestError(Exception):
    """The client sent something the gate does not take: answer `status` (400 or 405)
    and close. The parser stays failed: next_event() raises the error again."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Connect:
    """A tunnel to `host:port` (an IPv6 host without brackets)."""

    host: str
    port: int


@dataclass(frozen=True)
class Forward:
    """A request for the origin `host:port`; `head` is what the origin is sent: the
    request line in origin form, the client's headers but proxy-*, the blank line."""

    method: bytes  # b"GET" or b"HEAD": nothing a pull sends has a body
    host: str
    port: int
    head: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The client ended its input between two requests."""


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # no whole head buffered yet: receive_data() more
    PAUSED = "PAUSED"  # after Connect: the rest of the connection is the tunnel's


NEED_DATA = _Sentinel.NEED_DATA
PAUSED = _Sentinel.PAUSED
Event = Connect | Forward | ConnectionClosed


class ProxyRequests:
    """The requests of one client connection, in order (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no head end before this offset
        self._eof = False
        self._forwarded = False
        self._tunnel = False
        self._error: ProxyRequestError | None = None

    @property
    def trailing_data(self) -> bytes:
        """The bytes buffered after the last head: after Connect, the tunnel's first."""
        return bytes(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" is the end of its input. Call next_event() until
        it returns NEED_DATA before giving more: that keeps the buffer bounded."""
        if self._eof or self._tunnel:
            raise RuntimeError("no more data: the input ended or became a tunnel")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """The next request, ConnectionClosed, NEED_DATA or PAUSED; ProxyRequestError
        if what the client sent is not a request the gate takes."""
        if self._error is not None:
            raise self._error
        if self._tunnel:
            return PAUSED
        try:
            return self._next()
        except ProxyRequestError as exc:
            self._error = exc
            raise

    def _next(self) -> Event | _Sentinel:
        end = self._buffer.find(_END, self._scanned, HEAD_LIMIT + len(_END))
        if end < 0:
            if len(self._buffer) > HEAD_LIMIT + len(_END) - 1:
                raise ProxyRequestError(400, f"request head over {HEAD_LIMIT} bytes")
            if self._eof:
                if self._buffer:
                    raise ProxyRequestError(400, "the input ended inside a request head")
                return ConnectionClosed()
            self._scanned = max(0, len(self._buffer) - len(_END) + 1)
            return NEED_DATA
        head = bytes(self._buffer[:end])
        del self._buffer[:end + len(_END)]
        self._scanned = 0
        event = _request(head, connect_allowed=not self._forwarded)
        if isinstance(event, Connect):
            self._tunnel = True
        else:
            self._forwarded = True
        return event


def _request(head: bytes, *, connect_allowed: bool) -> Connect | Forward:
    """The event of one head (without its blank line)."""
    line, *headers = head.split(b"\r\n")
    if any(b"\r" in part or b"\n" in part or b"\0" in part for part in (line, *headers)):
        raise ProxyRequestError(400, "a bare CR, LF or NUL in the request head")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ProxyRequestError(400, "not an HTTP/1 request line")
    method, target, version = parts
    if method == b"CONNECT":
        if not connect_allowed:
            raise ProxyRequestError(405, "CONNECT after a forwarded request")
        return Connect(*_authority(target.decode("latin-1")))
    if method not in (b"GET", b"HEAD"):  # a pull sends nothing with a body
        raise ProxyRequestError(405, f"method {method[:16]!r} is not forwarded")
    kept: list[bytes] = []
    for header in headers:
        if header[:1] in (b" ", b"\t"):  # obs-fold: RFC 9112 5.2 lets a proxy refuse it
            raise ProxyRequestError(400, "a folded header line")
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length"
                                            and value.strip() != b"0"):
            raise ProxyRequestError(400, "a request with a body")
        if not name.startswith(b"proxy-"):
            kept.append(header)
    host, port, path = _absolute_url(target.decode("latin-1"))
    request_line = b" ".join([method, path.encode("latin-1"), version])
    return Forward(method, host, port, b"\r\n".join([request_line, *kept, b"", b""]))


def _authority(authority: str) -> tuple[str, int]:
    """Host and port of CONNECT's `host:port`, `[v6]:port` or, as Python 3.11's
    http.client writes it, `v6:port`."""
    host, _, port = authority.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if (not host or not (port.isascii() and port.isdigit()) or len(port) > 5
            or not 0 < int(port) < 65536):  # int() refuses over 4300 digits: ValueError
        raise ProxyRequestError(400, "CONNECT needs host:port")
    return host, int(port)


def _absolute_url(target: str) -> tuple[str, int, str]:
    """Host, port and origin-form path of a plain-http proxy request's target."""
    try:
        url = urlsplit(target)
        host, port = url.hostname, url.port
    except ValueError:
        raise ProxyRequestError(400, "an unparsable URL") from None
    if url.scheme != "http" or not host or port == 0:
        raise ProxyRequestError(400, "the target is not an absolute http URL")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return host, 80 if port is None else port, path
