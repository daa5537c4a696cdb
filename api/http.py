"""The HTTP face of the service (ASGI on hypercorn, trio flavour).

It only moves bytes: Twirp calls go to `TwirpServer.handle`, operations endpoints
read `NodeStatus`, WHIP routes join the Quart app later. Twirp calls are the hot
path, so they are served by a bare ASGI handler in front of Quart: Quart's
request/response machinery costs more per call than the whole CreateIngress.
"""

from __future__ import annotations

from typing import Any
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


class TwirpASGI:
    """ASGI app: `/twirp/...` to the TwirpServer, everything else to `fallback`."""

    def __init__(self, twirp: TwirpServer, fallback: Any) -> None:
        self._twirp = twirp
        self._fallback = fallback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/twirp/"):
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


def create_app(twirp: TwirpServer, status: NodeStatus) -> TwirpASGI:
    app = QuartTrio("ingress-relay")
    add_ops_routes(app, status)
    return TwirpASGI(twirp, app)
