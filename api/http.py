"""The HTTP face of the service: one ASGI app (relay/h11_server.py serves it).

It only moves bytes: Twirp calls go to `TwirpServer.handle`, operations endpoints
read `NodeStatus`, `/w...` goes to the WHIP ingest (relay/whip_ingest.py) with
CORS on every answer, so a page on another origin can publish. Twirp calls are
the hot path, so they are served by a bare ASGI handler in front of Quart:
Quart's request/response machinery costs more per call than the whole
CreateIngress.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response
from quart_trio import QuartTrio

from relay.ops import NodeStatus

from .errors import TwirpError
from .twirp import MAX_BODY_BYTES, TwirpServer, too_large


def add_ops_routes(app: QuartTrio, status: NodeStatus) -> None:
    """`/` and `/availability` for health checks, `/metrics` for Prometheus."""

    @app.route("/")
    async def healthy() -> Response:
        return Response("Healthy", content_type="text/plain")

    @app.route("/availability")
    async def availability() -> Response:
        if status.available:
            return Response("Available", content_type="text/plain")
        return Response("Not available", status=503, content_type="text/plain")

    @app.route("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def create_ops_app(status: NodeStatus) -> QuartTrio:
    app = QuartTrio("ingress-relay-ops")
    add_ops_routes(app, status)
    return app


DISCARD_LIMIT = 64 << 20  # oversized bodies up to this size are read and dropped
_UNREAD = too_large()  # answered without reading the body, then the connection closes


class WhipReply(Protocol):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    content_type: str


class WhipHandler(Protocol):
    """What the WHIP ingest offers the HTTP layer (relay.whip_ingest.WhipIngest)."""

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> WhipReply: ...


WHIP_MAX_BODY = 64 * 1024  # an SDP offer or a trickle fragment
WHIP_CORS = [(b"access-control-allow-origin", b"*"),
             (b"access-control-allow-methods", b"OPTIONS, POST, PATCH, DELETE"),
             (b"access-control-allow-headers", b"authorization, content-type, if-match"),
             (b"access-control-expose-headers", b"location, etag, link, accept-post")]


class TwirpASGI:
    """ASGI app: `/twirp/...` to the TwirpServer, `/w...` to WHIP, the rest to `fallback`."""

    def __init__(self, twirp: TwirpServer, fallback: Any, whip: WhipHandler | None = None
                 ) -> None:
        self._twirp = twirp
        self._fallback = fallback
        self._whip = whip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/w" or path.startswith("/w/")):
            await self._serve_whip(scope, receive, send)
            return
        if scope["type"] != "http" or not path.startswith("/twirp/"):
            await self._fallback(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        body = await self._read_body(headers, receive)
        token = parse_qs(scope["query_string"].decode("latin-1")).get("access_token", [""])[0]
        result = await self._twirp.handle(
            scope["path"],
            scope["method"],
            _text(headers.get(b"content-type")),
            body,
            authorization=_text(headers.get(b"authorization")),
            access_token=token or None,
            request_id=_text(headers.get(b"x-livekit-request-id")) or "",
        )
        response_headers = [(b"content-type", result.content_type.encode()),
                            (b"content-length", str(len(result.body)).encode())]
        if body is _UNREAD:
            response_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": result.status,
                    "headers": response_headers})
        await send({"type": "http.response.body", "body": result.body})

    async def _serve_whip(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        body = bytearray()
        too_big = False
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            if len(body) + len(message.get("body", b"")) > WHIP_MAX_BODY:
                too_big = True
            else:
                body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if self._whip is None:
            status, out, extra, ctype = 503, b"WHIP is not enabled on this node\n", (), "text/plain"
        elif too_big:
            status, out, extra, ctype = 413, b"body too large\n", (), "text/plain"
        else:
            reply = await self._whip.handle(scope["method"], scope["path"], headers,
                                            bytes(body))
            status, out, extra, ctype = (reply.status, reply.body, reply.headers,
                                         reply.content_type)
        response_headers = [(b"content-type", ctype.encode()),
                            (b"content-length", str(len(out)).encode()), *WHIP_CORS]
        response_headers += [(k.encode(), v.encode()) for k, v in extra]
        await send({"type": "http.response.start", "status": status,
                    "headers": response_headers})
        await send({"type": "http.response.body", "body": out})

    @staticmethod
    async def _read_body(headers: dict[bytes, bytes], receive: Any) -> bytes | TwirpError:
        """The body, or the error to answer with.

        An oversized body is read and thrown away (up to DISCARD_LIMIT) before the
        answer: closing on a client still uploading makes it see a broken pipe
        instead of our error. Past the limit the answer goes out with the body
        unread and the connection closes.
        """
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return TwirpError("malformed", "invalid Content-Length")
        chunks: list[bytes] = []
        size = 0
        too_big = declared > MAX_BODY_BYTES
        if declared > DISCARD_LIMIT:
            return _UNREAD
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return TwirpError("canceled", "client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                too_big = True
                chunks.clear()
                if size > DISCARD_LIMIT:
                    return _UNREAD
            elif not too_big:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return too_large() if too_big else b"".join(chunks)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def create_app(twirp: TwirpServer, status: NodeStatus, whip: WhipHandler | None = None
               ) -> TwirpASGI:
    app = QuartTrio("ingress-relay")
    add_ops_routes(app, status)
    return TwirpASGI(twirp, app, whip)
