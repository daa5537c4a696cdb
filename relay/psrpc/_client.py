"""The client side of psrpc calls, sans-IO: a request out, claims and responses in.

Follows pkg/client/rpc.go, multi.go and options.go of livekit/psrpc (default options,
as livekit-server's and livekit/ingress's clients use them):

* the request carries ``expiry = now + timeout`` (3 s by default);
* a method that requires a claim selects a server first (``selectServer``): without
  affinity the first claim wins at once; with affinity claims are collected until 200 ms
  after the first one or 1 s after the request (the earlier; never past the expiry) and
  the highest affinity above 0 wins (ties: the earlier). The winner is named in a
  ClaimResponse on the method's RCLAIM channel. No winner: ``unavailable`` "no response
  from servers" (no claim at all) or "no servers available (received N responses)", or
  the error a server answered meanwhile (a malformed request);
* the first response after that ends the call; none by the expiry: ``deadline_exceeded``
  "request timed out";
* a multi request (no claims) reports every response until its expiry, then is done.

Left out: psrpc's optional selection settings (minimum/maximum affinity, a selection
function) and its retry middleware (livekit/protocol retries ``unavailable`` and
``deadline_exceeded`` up to 3 attempts, 3 s then 5 s then 7 s): a caller retries by
making a new request.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from . import _proto as pb
from ._channels import (
    claim_request_channel,
    claim_response_channel,
    new_id,
    request_channel,
    response_channel,
)
from ._envelope import PsrpcProtocolError, decode, decode_payload, encode
from ._events import MultiDone, MultiReply, Publish, Result, RpcError, Subscribe
from ._methods import Method

__all__ = [
    "AFFINITY_SHORT_CIRCUIT_NS",
    "CLIENT_TIMEOUT_NS",
    "MAX_REQUESTS",
    "SELECTION_TIMEOUT_NS",
    "ClientEvent",
    "RpcClient",
]

CLIENT_TIMEOUT_NS = 3_000_000_000  # psrpc.DefaultClientTimeout
SELECTION_TIMEOUT_NS = 1_000_000_000  # psrpc.DefaultAffinityTimeout
AFFINITY_SHORT_CIRCUIT_NS = 200_000_000  # psrpc.DefaultAffinityShortCircuit
MAX_REQUESTS = 1000
"""Requests a client keeps in flight; one more fails at once with ``resource_exhausted``."""

ClientEvent = Publish | Result | MultiReply | MultiDone


class _Stage(enum.Enum):
    SELECTING = "selecting a server"
    WAITING = "waiting for the response"
    MULTI = "collecting responses"


@dataclass
class _Outgoing:
    method: Method
    topic: tuple[str, ...]
    expiry: int
    stage: _Stage
    select_until: int  # SELECTING: the affinity timeout
    short_until: int | None = None  # SELECTING: 200 ms after the first claim
    claims: int = 0
    best_server: str = ""
    best_affinity: float = 0.0
    error: RpcError | None = None  # SELECTING: what a server answered meanwhile

    def selection_end(self) -> int:
        return self.select_until if self.short_until is None \
            else min(self.select_until, self.short_until)


def _error(response: Message) -> RpcError:
    details = tuple(any_pb2.Any(type_url=d.type_url, value=d.value)
                    for d in response.error_details)
    return RpcError(response.code or "unknown", response.error, details)


class RpcClient:
    """The psrpc client of one service (``IOInfo``...), with its id (``CLI_...``).

    Subscribe to :meth:`subscriptions` first; :meth:`request` gives the request id and
    the publish to perform; feed what arrives to :meth:`receive`, call :meth:`tick` by
    :meth:`next_deadline`. Every request ends in exactly one :class:`Result` (single) or
    :class:`MultiDone` (multi), unless :meth:`cancel` ends it first. Times are unix
    nanoseconds.
    """

    def __init__(self, service: str, client_id: str, *, timeout_ns: int = CLIENT_TIMEOUT_NS,
                 selection_timeout_ns: int = SELECTION_TIMEOUT_NS,
                 max_requests: int = MAX_REQUESTS,
                 request_ids: Callable[[], str] | None = None) -> None:
        self.service = service
        self.client_id = client_id
        self.timeout_ns = timeout_ns
        self.selection_timeout_ns = selection_timeout_ns
        self.max_requests = max_requests
        self._request_ids = request_ids or (lambda: new_id("REQ_"))
        self._claims = claim_request_channel(service, client_id)
        self._responses = response_channel(service, client_id)
        self._requests: dict[str, _Outgoing] = {}

    def subscriptions(self) -> list[Subscribe]:
        """The client's own channels: its RES and CLAIM channels of the service."""
        return [Subscribe(self._responses), Subscribe(self._claims)]

    def request(self, method: Method, request: Message, now: int, *,
                topic: str | Sequence[str] = (), timeout_ns: int | None = None,
                metadata: Mapping[str, str] | None = None) -> tuple[str, list[ClientEvent]]:
        """Start a call of ``method``: its request id and what to do (publish the request,
        or a :class:`Result` error at once when ``max_requests`` are in flight)."""
        if method.service != self.service:
            raise ValueError(f"{method.service}.{method.name} is not of {self.service}")
        if not isinstance(request, method.request_type):
            raise TypeError(f"{method.name} takes {method.request_type.__name__}")
        request_id = self._request_ids()
        if len(self._requests) >= self.max_requests or request_id in self._requests:
            return request_id, [Result(request_id, error=RpcError(
                "resource_exhausted", "too many requests in flight"))]
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        expiry = now + (self.timeout_ns if timeout_ns is None else timeout_ns)
        message = pb.Request(request_id=request_id, client_id=self.client_id, sent_at=now,
                             expiry=expiry, multi=method.multi,
                             raw_request=request.SerializeToString(), metadata=metadata or {})
        if method.multi:
            stage = _Stage.MULTI
        elif method.claim:
            stage = _Stage.SELECTING
        else:
            stage = _Stage.WAITING
        self._requests[request_id] = _Outgoing(
            method, topics, expiry, stage, min(now + self.selection_timeout_ns, expiry))
        channel = request_channel(self.service, method.name, topics)
        return request_id, [Publish(channel, encode(message))]

    def cancel(self, request_id: str) -> None:
        """Forget a request (psrpc: its context was cancelled); late messages are ignored."""
        self._requests.pop(request_id, None)

    # -- input --------------------------------------------------------------------------

    def receive(self, channel: str, payload: bytes, now: int) -> list[ClientEvent]:
        """A message from the client's CLAIM or RES channel. Raises only
        :class:`PsrpcProtocolError` (not an envelope of the channel's type); messages for
        requests that are over, or on other channels, are ignored."""
        if channel == self._claims:
            return self._on_claim(decode(payload, pb.ClaimRequest), now)
        if channel == self._responses:
            return self._on_response(decode(payload, pb.Response))
        return []

    def _on_claim(self, claim: Message, now: int) -> list[ClientEvent]:
        out = self._requests.get(claim.request_id)
        if out is None or out.stage is not _Stage.SELECTING:
            return []
        out.claims += 1
        if not out.method.affinity:  # AcceptFirstAvailable
            return self._choose(claim.request_id, out, claim.server_id)
        if claim.affinity > out.best_affinity:
            out.best_server, out.best_affinity = claim.server_id, claim.affinity
        if out.short_until is None:
            out.short_until = now + AFFINITY_SHORT_CIRCUIT_NS
        return []

    def _on_response(self, response: Message) -> list[ClientEvent]:
        request_id = response.request_id
        out = self._requests.get(request_id)
        if out is None:
            return []
        if out.stage is _Stage.SELECTING:
            if response.error:  # only a malformed request is answered before a claim
                out.error = _error(response)
            return []
        if out.stage is _Stage.MULTI:
            value, error = self._value(out.method, response)
            return [MultiReply(request_id, response.server_id, value, error)]
        del self._requests[request_id]
        value, error = self._value(out.method, response)
        return [Result(request_id, value, error)]

    @staticmethod
    def _value(method: Method, response: Message) -> tuple[Message | None, RpcError | None]:
        if response.error:
            return None, _error(response)
        try:
            return decode_payload(response.raw_response, method.response_type), None
        except PsrpcProtocolError as exc:
            return None, RpcError("malformed_result", str(exc))

    # -- time ---------------------------------------------------------------------------

    def tick(self, now: int) -> list[ClientEvent]:
        """End server selections and requests whose time has come."""
        events: list[ClientEvent] = []
        for request_id, out in list(self._requests.items()):
            if out.stage is _Stage.SELECTING and now >= out.selection_end():
                events += self._end_selection(request_id, out)
            if request_id not in self._requests or now < out.expiry:
                continue
            del self._requests[request_id]
            if out.stage is _Stage.MULTI:
                events.append(MultiDone(request_id))
            else:
                events.append(Result(request_id, error=RpcError("deadline_exceeded",
                                                                "request timed out")))
        return events

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do (unix ns), or None."""
        return min((out.selection_end() if out.stage is _Stage.SELECTING else out.expiry
                    for out in self._requests.values()), default=None)

    @property
    def pending(self) -> int:
        """Requests in flight."""
        return len(self._requests)

    # -- selection ------------------------------------------------------------------------

    def _end_selection(self, request_id: str, out: _Outgoing) -> list[ClientEvent]:
        if out.best_server:
            return self._choose(request_id, out, out.best_server)
        del self._requests[request_id]
        if out.error is not None:
            error = out.error
        elif out.claims:
            error = RpcError("unavailable",
                             f"no servers available (received {out.claims} responses)")
        else:
            error = RpcError("unavailable", "no response from servers")
        return [Result(request_id, error=error)]

    def _choose(self, request_id: str, out: _Outgoing, server_id: str) -> list[ClientEvent]:
        out.stage = _Stage.WAITING
        answer = pb.ClaimResponse(request_id=request_id, server_id=server_id)
        channel = claim_response_channel(self.service, out.method.name, out.topic)
        return [Publish(channel, encode(answer))]
