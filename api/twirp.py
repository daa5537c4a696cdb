"""The Twirp binding of `livekit.Ingress`: bytes and headers in, bytes out.

No web framework in here: the HTTP layer passes the method name, headers and body,
and sends back what `TwirpServer.handle` returns. Bodies are `application/protobuf`
(livekit-api) or `application/json` (livekit-server-sdk) with protojson rules:
snake_case or lowerCamel and enum names or numbers in; snake_case, defaults
included, enum names and int64 as strings out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import ingress as pb

from .auth import Authenticator, require_ingress_admin
from .errors import TwirpError
from .service import IngressApi, WireResponse

log = logging.getLogger(__name__)

PREFIX = "/twirp/livekit.Ingress/"
MAX_BODY_BYTES = 1 << 20
PROTOBUF = "application/protobuf"
JSON = "application/json"


@dataclass(frozen=True)
class TwirpResponse:
    status: int
    content_type: str
    body: bytes


def error_response(err: TwirpError) -> TwirpResponse:
    return TwirpResponse(err.status, JSON, err.to_json())


def too_large() -> TwirpError:
    return TwirpError("malformed", f"request body too large (limit {MAX_BODY_BYTES} bytes)")


def encode(message: Message | WireResponse, content_type: str) -> bytes:
    if isinstance(message, WireResponse):
        if content_type != JSON:
            return message.data
        message = message.decode()
    if content_type == JSON:
        return json_format.MessageToJson(
            message, preserving_proto_field_name=True, indent=None,
            always_print_fields_with_no_presence=True,
        ).encode()
    return message.SerializeToString()


def decode(body: bytes, message: Message, content_type: str) -> None:
    try:
        if content_type == JSON:
            json_format.Parse(body.decode() if body else "{}", message,
                              ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise TwirpError("malformed", f"the json request could not be decoded: {exc}") from None
    except DecodeError:
        raise TwirpError("malformed", "the protobuf request could not be decoded") from None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _not_recorded(method: str, code: str, seconds: float) -> None:
    pass


class TwirpServer:
    """Routes, authenticates, decodes and dispatches one Twirp call.

    `record(method, code, seconds)` is told of every answered call (the service
    counts them in its metrics; this package knows no metrics library).
    """

    def __init__(self, service: IngressApi, auth: Authenticator,
                 record: Callable[[str, str, float], None] = _not_recorded) -> None:
        self._auth = auth
        self._record = record
        self._methods: dict[str, tuple[type[Message],
                                       Callable[..., Awaitable[Message | WireResponse]]]] = {
            "CreateIngress": (pb.CreateIngressRequest, service.create),
            "UpdateIngress": (pb.UpdateIngressRequest, service.update),
            "ListIngress": (pb.ListIngressRequest, service.list),
            "DeleteIngress": (pb.DeleteIngressRequest, service.delete),
        }

    async def handle(
        self,
        path: str,
        http_method: str,
        content_type: str | None,
        body: bytes | TwirpError,
        authorization: str | None = None,
        access_token: str | None = None,
        request_id: str = "",
    ) -> TwirpResponse:
        """One call. `body` is a TwirpError when the HTTP layer could not read it."""
        name = path[len(PREFIX):] if path.startswith(PREFIX) else path
        label = name if name in self._methods else "unknown"
        started = time.perf_counter()
        try:
            response = await self._dispatch(name, path, http_method, media_type(content_type),
                                            body, authorization, access_token, request_id)
            code = "ok"
        except TwirpError as err:
            response, code = error_response(err), err.code
            log.info("%s refused: %s %s", label, err.code, err.msg)
        except Exception:
            log.exception("%s failed", label)
            err = TwirpError("internal", "internal error")
            response, code = error_response(err), err.code
        self._record(label, code, time.perf_counter() - started)
        return response

    async def _dispatch(self, name: str, path: str, http_method: str, content_type: str,
                        body: bytes | TwirpError, authorization: str | None,
                        access_token: str | None, request_id: str) -> TwirpResponse:
        claims = self._auth.authenticate(authorization, access_token)
        if http_method != "POST":
            raise TwirpError("bad_route",
                             f'unsupported method "{http_method}" (only POST is allowed)')
        route = self._methods.get(name) if path.startswith(PREFIX) else None
        if route is None:
            raise TwirpError("bad_route", f'no handler for path "{path}"')
        if content_type not in (PROTOBUF, JSON):
            raise TwirpError("bad_route", f'unexpected Content-Type: "{content_type}"')
        if isinstance(body, TwirpError):
            raise body
        request_type, handler = route
        request = request_type()
        decode(body, request, content_type)
        require_ingress_admin(claims)
        if name == "CreateIngress":
            result = await handler(request, request_id)
        else:
            result = await handler(request)
        return TwirpResponse(200, content_type, encode(result, content_type))
