"""The HTTP face of the service (Quart on hypercorn, trio flavour).

It only moves bytes: Twirp calls go to `TwirpServer.handle`, operations endpoints
read `NodeStatus`. WHIP routes join the same app later.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from relay.ops import NodeStatus

from .errors import TwirpError
from .twirp import MAX_BODY_BYTES, TwirpResponse, TwirpServer, too_large

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _send(result: TwirpResponse) -> Response:
    return Response(result.body, status=result.status, content_type=result.content_type)


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


def create_app(twirp: TwirpServer, status: NodeStatus) -> QuartTrio:
    app = QuartTrio("ingress-relay")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    add_ops_routes(app, status)

    @app.route("/twirp/<path:rest>", methods=ALL_METHODS)
    async def twirp_call(rest: str) -> Response:
        body: bytes | TwirpError
        if (request.content_length or 0) > MAX_BODY_BYTES:
            body = too_large()
        else:
            try:
                body = await request.get_data(cache=False, as_text=False)
            except RequestEntityTooLarge:
                body = too_large()
        result = await twirp.handle(
            request.path,
            request.method,
            request.headers.get("Content-Type"),
            body,
            authorization=request.headers.get("Authorization"),
            access_token=request.args.get("access_token"),
            request_id=request.headers.get("X-Livekit-Request-Id", ""),
        )
        return _send(result)

    return app
