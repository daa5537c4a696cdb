"""The LiveKit server's own Ingress API (Twirp), as a worker node's console calls it.

A worker node has no API of its own: the ingresses are the server's. The console
lists, creates, updates and deletes them through the server's
``/twirp/livekit.Ingress/*`` with a short-lived ``ingressAdmin`` token signed by the
node's key pair, exactly as livekit-api would. HTTP/1.1 is h11 (sans-IO) over a trio
stream: one connection per call, bounded in time and in the size of the answer.
"""

from __future__ import annotations

import json
import ssl
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import h11
import trio
from google.protobuf.message import Message
from livekit import api as lkapi
from livekit.protocol import ingress as pb

from api.errors import TWIRP_STATUS, TwirpError

CALL_TIMEOUT = 10.0
MAX_ANSWER = 16 << 20  # a ListIngress of many thousands of ingresses fits
TOKEN_TTL = timedelta(minutes=5)

M = TypeVar("M", bound=Message)


class ServerIngressApi:
    """IngressApi (api/service.py) over the LiveKit server at `ws_url`; every refusal is
    the server's TwirpError (code and message), an unreachable server ``unavailable``."""

    def __init__(self, ws_url: str, api_key: str, api_secret: str, *,
                 timeout: float = CALL_TIMEOUT) -> None:
        parts = urlsplit(ws_url)
        self._tls = parts.scheme in ("wss", "https")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        self._authority = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._key, self._secret = api_key, api_secret
        self._timeout = timeout

    async def create(self, req: pb.CreateIngressRequest, request_id: str = ""
                     ) -> pb.IngressInfo:
        return await self._call("CreateIngress", req, pb.IngressInfo)

    async def update(self, req: pb.UpdateIngressRequest) -> pb.IngressInfo:
        return await self._call("UpdateIngress", req, pb.IngressInfo)

    async def list(self, req: pb.ListIngressRequest) -> pb.ListIngressResponse:
        return await self._call("ListIngress", req, pb.ListIngressResponse)

    async def delete(self, req: pb.DeleteIngressRequest) -> pb.IngressInfo:
        return await self._call("DeleteIngress", req, pb.IngressInfo)

    async def _call(self, method: str, req: Message, answer: type[M]) -> M:
        token = (lkapi.AccessToken(self._key, self._secret)
                 .with_grants(lkapi.VideoGrants(ingress_admin=True))
                 .with_ttl(TOKEN_TTL).to_jwt())
        target = f"{self._prefix}/twirp/livekit.Ingress/{method}"
        try:
            with trio.fail_after(self._timeout):
                status, body = await self._post(target, req.SerializeToString(), token)
        except (OSError, trio.TooSlowError, h11.ProtocolError, ssl.SSLError) as exc:
            raise TwirpError("unavailable", f"the LiveKit server at {self._authority} did "
                             f"not answer: {type(exc).__name__} {exc}".strip()) from None
        if status != 200:
            raise _refusal(status, body)
        return answer.FromString(body)

    async def _post(self, target: str, body: bytes, token: str) -> tuple[int, bytes]:
        if self._tls:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                self._host, self._port, https_compatible=True)
        else:
            stream = await trio.open_tcp_stream(self._host, self._port)
        async with stream:
            http = h11.Connection(h11.CLIENT)
            request = h11.Request(method="POST", target=target, headers=[
                ("host", self._authority), ("content-type", "application/protobuf"),
                ("authorization", f"Bearer {token}"), ("content-length", str(len(body))),
                ("connection", "close")])
            await stream.send_all(http.send(request) + http.send(h11.Data(data=body))
                                  + http.send(h11.EndOfMessage()))
            status, chunks, size = 0, [], 0
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_ANSWER:
                        raise h11.RemoteProtocolError(f"an answer over {MAX_ANSWER} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, b"".join(chunks)


def _refusal(status: int, body: bytes) -> TwirpError:
    """The server's Twirp error; a code we do not know, or no JSON, as `unknown`."""
    try:
        error = json.loads(body)
        code, msg = str(error.get("code", "")), str(error.get("msg", ""))
    except (ValueError, AttributeError):
        code, msg = "", body[:200].decode("utf-8", "replace")
    if code not in TWIRP_STATUS:
        code, msg = "unknown", msg or f"HTTP {status} from the LiveKit server"
    return TwirpError(code, msg)
