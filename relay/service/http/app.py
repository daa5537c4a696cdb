"""The node's HTTP face: one quart-trio app (Twirp, WHIP, console, health, metrics).

hypercorn serves it (server.py). Quart routes serve WHIP (`/w...`, with CORS on every
answer so a page on another origin can publish) and the operations endpoints. The
Twirp API is the app's one hot path, so `/twirp/` is answered by an ASGI middleware
wrapped around Quart's `asgi_app` (the pattern Quart documents for middleware):
bytes and headers go straight to `TwirpServer.handle` (api/twirp.py), skipping
Quart's request/response objects, which cost more than a whole CreateIngress
(measured, docs/PERFORMANCE.md).
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api.errors import TwirpError
from api.twirp import MAX_BODY_BYTES, TwirpServer, too_large

from .. import metrics
from ..status import NodeStatus
from ..trio_util import sole_exception

DISCARD_LIMIT = 64 << 20  # oversized Twirp bodies up to this size are read and dropped
_UNREAD = too_large()  # answered without reading the body, then the connection closes
WHIP_MAX_BODY = 64 * 1024  # an SDP offer or a trickle fragment
WHIP_METHODS = ["OPTIONS", "POST", "PATCH", "DELETE", "GET", "PUT"]
WHIP_CORS = {"access-control-allow-origin": "*",
             "access-control-allow-methods": "OPTIONS, POST, PATCH, DELETE",
             "access-control-allow-headers": "authorization, content-type, if-match",
             "access-control-expose-headers": "location, etag, link, accept-post"}
NO_API = ("this node has no Twirp API of its own: call the Ingress API of the LiveKit "
          "server it works for")


class WhipReply(Protocol):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    content_type: str


class WhipHandler(Protocol):
    """What the WHIP front offers the HTTP layer (relay.service.ingest.whip_front)."""

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> WhipReply: ...


def record_call(method: str, code: str, seconds: float) -> None:
    """Count one answered Twirp call in the node's metrics."""
    metrics.API_REQUESTS.labels(method, code).inc()
    metrics.API_LATENCY.labels(method).observe(seconds)


def create_app(status: NodeStatus, twirp: TwirpServer | None = None,
               whip: WhipHandler | None = None, console: Blueprint | None = None
               ) -> QuartTrio:
    """The app of the HTTP listener; `twirp` None: the API lives elsewhere (503);
    `console`: the web console's pages (relay.service.console)."""
    app = QuartTrio("ingress-relay")
    app.config["MAX_CONTENT_LENGTH"] = WHIP_MAX_BODY  # Quart's routes: WHIP, console, ops
    add_ops_routes(app, status)
    add_whip_routes(app, whip)
    if console is not None:
        app.register_blueprint(console)
    app.asgi_app = TwirpMiddleware(app.asgi_app, twirp)  # type: ignore[method-assign]
    return app


def create_ops_app(status: NodeStatus) -> QuartTrio:
    """The app of the separate health_port / prometheus_port listeners."""
    app = QuartTrio("ingress-relay-ops")
    add_ops_routes(app, status)
    return app


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


def add_whip_routes(app: QuartTrio, whip: WhipHandler | None) -> None:
    """`/w`, `/w/<key>`, `/w/<key>/<resource>` to the WHIP front (it routes by method)."""

    @app.route("/w", methods=WHIP_METHODS)
    @app.route("/w/<path:rest>", methods=WHIP_METHODS)
    async def whip_resource(rest: str = "") -> Response:
        if whip is None:
            return Response("WHIP is not enabled on this node\n", status=503,
                            content_type="text/plain")
        body = await request.get_data(as_text=False)
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await whip.handle(request.method, request.path, headers, body)
        response = Response(reply.body, status=reply.status, content_type=reply.content_type)
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    @app.after_request
    async def whip_cors(response: Response) -> Response:
        if request.path == "/w" or request.path.startswith("/w/"):
            response.headers.update(WHIP_CORS)
        return response


class TwirpMiddleware:
    """ASGI: `/twirp/...` to the TwirpServer (or 503 without one), the rest to Quart
    (a request target without a path is answered 400 before Quart sees it)."""

    def __init__(self, quart_app: Any, twirp: TwirpServer | None) -> None:
        self._quart = quart_app
        self._twirp = twirp

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("path"):
            # a target with no path ("?x"): Quart 0.22 fails on it with IndexError (a
            # 500 and an error log for any client; found by fuzz/fuzz_http.py)
            await _respond(send, 400, "text/plain", b"bad request target\n", close=True)
            return
        if scope["type"] != "http" or not scope["path"].startswith("/twirp/"):
            await self._to_quart(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if self._twirp is None:
            await _respond(send, 503, "application/json",
                           TwirpError("unavailable", NO_API).to_json(), close=False)
            return
        body = await _read_body(headers, receive)
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
        await _respond(send, result.status, result.content_type, result.body,
                       close=body is _UNREAD)


    async def _to_quart(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Quart, with its refusals of a request (a werkzeug HTTPException such as
        BadHost for a malformed Host header) answered as what they are: quart-trio
        0.12 lets them out wrapped in an ExceptionGroup, which hypercorn turns into a
        500 and an error log (found by fuzz/fuzz_http.py)."""
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._quart(scope, receive, tracking_send)
        except Exception as exc:
            refusal = _client_error(exc)
            if refusal is None or started:
                raise
            await _respond(send, refusal.code or 400, "text/plain",
                           f"{refusal.name}\n".encode(), close=True)


def _client_error(exc: BaseException) -> HTTPException | None:
    """The werkzeug 4xx in `exc` or in its exception group, if that is all it holds."""
    exc = sole_exception(exc)
    return exc if isinstance(exc, HTTPException) and (exc.code or 500) < 500 else None


async def _respond(send: Any, status: int, content_type: str, body: bytes, *,
                   close: bool) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(headers: dict[bytes, bytes], receive: Any) -> bytes | TwirpError:
    """The body, or the error to answer with.

    An oversized body is read and thrown away (up to DISCARD_LIMIT) before the
    answer: closing on a client still uploading makes it see a broken pipe instead
    of our error. Past the limit the answer goes out with the body unread and the
    connection closes.
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
