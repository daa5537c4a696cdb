"""The server side of psrpc calls, sans-IO: requests in, claims and responses out.

Follows pkg/server/rpc.go of livekit/psrpc: a request past its expiry is dropped; a body
that does not parse is answered ``malformed_request`` at once; a method that requires a
claim publishes a ClaimRequest (affinity 1, or the program's, negative declining) on the
client's CLAIM channel and handles the request only when the client's ClaimResponse on
RCLAIM names this server (another name, or the expiry, drops it); the answer goes to the
client's RES channel.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from . import _proto as pb
from ._channels import (
    claim_request_channel,
    claim_response_channel,
    request_channel,
    response_channel,
)
from ._envelope import PsrpcProtocolError, decode, decode_payload, encode
from ._events import (
    AffinityWanted,
    Call,
    CallTimedOut,
    HandleRequest,
    Publish,
    RpcError,
    Subscribe,
    Unsubscribe,
)
from ._methods import Method

__all__ = ["MAX_CALLS", "RpcServer", "ServerEvent"]

MAX_CALLS = 1000
"""Requests a server holds at once (awaiting affinity, a claim answer or the handler);
more are dropped, as a full psrpc subscription channel would hold them back."""

ServerEvent = Publish | AffinityWanted | HandleRequest | CallTimedOut


class _Stage(enum.Enum):
    AFFINITY = "awaiting the program's affinity"
    CLAIMED = "claimed, awaiting the client's choice"
    HANDLING = "with the handler"


@dataclass(frozen=True)
class _Registration:
    method: Method
    topic: tuple[str, ...]
    affinity: bool
    requests: str  # the REQ channel
    claims: str | None  # the RCLAIM channel, for methods that require a claim


@dataclass
class _Pending:
    call: Call
    registration: _Registration
    stage: _Stage


class RpcServer:
    """The psrpc server of one service (``IngressInternal``, ``IngressHandler``...).

    ``register`` a method (and topic) to serve it: it returns the subscriptions to make.
    Feed what arrives on them to :meth:`receive`, call :meth:`tick` by
    :meth:`next_deadline`; perform the returned :class:`Publish` actions and answer
    :class:`AffinityWanted` with :meth:`claim` and :class:`HandleRequest` with
    :meth:`respond`. Times are unix nanoseconds (psrpc's expiry is the client's wall clock).
    """

    def __init__(self, service: str, server_id: str, *, max_calls: int = MAX_CALLS) -> None:
        self.service = service
        self.server_id = server_id
        self.max_calls = max_calls
        self.dropped = 0  # requests dropped: expired, duplicate or over max_calls
        self._by_requests: dict[str, _Registration] = {}
        self._by_claims: dict[str, _Registration] = {}
        self._calls: dict[str, _Pending] = {}

    # -- registration ---------------------------------------------------------------------

    def register(self, method: Method, topic: str | Sequence[str] = (), *,
                 affinity: bool | None = None) -> list[Subscribe]:
        """Serve ``method`` on ``topic``; returns the channels to subscribe to.

        ``affinity`` (default: the method's flag) makes each request of a claim method
        wait for :meth:`claim`; without it the server claims with affinity 1.
        Registering the same channel twice is a ``ValueError`` (psrpc: "handler already
        exists").
        """
        if method.service != self.service:
            raise ValueError(f"{method.service}.{method.name} is not of {self.service}")
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        requests = request_channel(method.service, method.name, topics)
        if requests in self._by_requests:
            raise ValueError(f"{requests} is already registered")
        claims = claim_response_channel(method.service, method.name, topics) if method.claim \
            else None
        registration = _Registration(method, topics, method.affinity if affinity is None
                                     else affinity, requests, claims)
        self._by_requests[requests] = registration
        actions = [Subscribe(requests, queue=method.queue)]
        if claims is not None:
            self._by_claims[claims] = registration
            actions.append(Subscribe(claims))
        return actions

    def unregister(self, method: Method, topic: str | Sequence[str] = ()) -> list[Unsubscribe]:
        """Stop serving ``method`` on ``topic``: the channels to unsubscribe from.

        Requests not yet with the handler are forgotten; those with it may still be
        answered (psrpc's graceful close lets running handlers finish).
        """
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        registration = self._by_requests.pop(request_channel(method.service, method.name,
                                                             topics), None)
        if registration is None:
            return []
        for request_id, pending in list(self._calls.items()):
            if pending.registration is registration and pending.stage is not _Stage.HANDLING:
                del self._calls[request_id]
        actions = [Unsubscribe(registration.requests)]
        if registration.claims is not None:
            del self._by_claims[registration.claims]
            actions.append(Unsubscribe(registration.claims))
        return actions

    # -- input --------------------------------------------------------------------------

    def receive(self, channel: str, payload: bytes, now: int) -> list[ServerEvent]:
        """A message from ``channel``. Raises only :class:`PsrpcProtocolError`, for a
        message that is not a psrpc envelope of the channel's type; a message on a channel
        not (or no longer) registered is ignored."""
        registration = self._by_requests.get(channel)
        if registration is not None:
            request = decode(payload, pb.Request)
            return self._on_request(registration, request, now)
        registration = self._by_claims.get(channel)
        if registration is not None:
            answer = decode(payload, pb.ClaimResponse)
            return self._on_claim_response(registration, answer)
        return []

    def _on_request(self, registration: _Registration, request: Message,
                    now: int) -> list[ServerEvent]:
        method = registration.method
        if now >= request.expiry or request.request_id in self._calls \
                or len(self._calls) >= self.max_calls:
            self.dropped += 1
            return []
        try:
            body = decode_payload(request.raw_request, method.request_type)
        except PsrpcProtocolError as exc:
            error = RpcError("malformed_request", str(exc))
            return [self._response(method, request.client_id, request.request_id, error, now)]
        call = Call(request.request_id, request.client_id, method, registration.topic, body,
                    request.sent_at, request.expiry, dict(request.metadata))
        if not method.claim:
            self._calls[call.request_id] = _Pending(call, registration, _Stage.HANDLING)
            return [HandleRequest(call)]
        if registration.affinity:
            self._calls[call.request_id] = _Pending(call, registration, _Stage.AFFINITY)
            return [AffinityWanted(call)]
        self._calls[call.request_id] = _Pending(call, registration, _Stage.CLAIMED)
        return [self._claim_request(call, 1.0)]

    def _on_claim_response(self, registration: _Registration,
                           answer: Message) -> list[ServerEvent]:
        pending = self._calls.get(answer.request_id)
        if pending is None or pending.registration is not registration \
                or pending.stage is not _Stage.CLAIMED:
            return []
        if answer.server_id != self.server_id:
            del self._calls[answer.request_id]  # the client chose another server
            return []
        pending.stage = _Stage.HANDLING
        return [HandleRequest(pending.call)]

    # -- the program's answers --------------------------------------------------------------

    def claim(self, request_id: str, affinity: float, now: int) -> list[ServerEvent]:
        """The affinity for an :class:`AffinityWanted` request: a claim is published, or
        with a negative (or NaN) affinity the request is declined. A request that is gone
        (expired, unregistered) gives nothing."""
        pending = self._calls.get(request_id)
        if pending is None or pending.stage is not _Stage.AFFINITY:
            return []
        if math.isnan(affinity) or affinity < 0 or now >= pending.call.expiry:
            del self._calls[request_id]
            return []
        pending.stage = _Stage.CLAIMED
        return [self._claim_request(pending.call, affinity)]

    def respond(self, request_id: str, result: Message | RpcError | None,
                now: int) -> list[ServerEvent]:
        """Answer a :class:`HandleRequest`: a response of the method's type (``None``: an
        empty one) or an :class:`RpcError`. A request that timed out gives nothing.
        Answering a request not given to the handler is a ``RuntimeError``."""
        pending = self._calls.get(request_id)
        if pending is None:
            return []
        if pending.stage is not _Stage.HANDLING:
            raise RuntimeError(f"{request_id} is {pending.stage.value}, not with the handler")
        call = pending.call
        if result is not None and not isinstance(result, RpcError | call.method.response_type):
            raise TypeError(f"{call.method.name} answers {call.method.response_type.__name__},"
                            f" not {type(result).__name__}")
        del self._calls[request_id]
        return [self._response(call.method, call.client_id, request_id, result, now)]

    # -- time ---------------------------------------------------------------------------

    def tick(self, now: int) -> list[ServerEvent]:
        """Forget requests past their expiry; those with the handler are reported as
        :class:`CallTimedOut`."""
        events: list[ServerEvent] = []
        for request_id, pending in list(self._calls.items()):
            if now >= pending.call.expiry:
                del self._calls[request_id]
                if pending.stage is _Stage.HANDLING:
                    events.append(CallTimedOut(pending.call))
        return events

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do (unix ns), or None."""
        return min((p.call.expiry for p in self._calls.values()), default=None)

    @property
    def pending(self) -> int:
        """Requests held (any stage)."""
        return len(self._calls)

    # -- output -------------------------------------------------------------------------

    def _claim_request(self, call: Call, affinity: float) -> Publish:
        claim = pb.ClaimRequest(request_id=call.request_id, server_id=self.server_id,
                                affinity=affinity)
        return Publish(claim_request_channel(self.service, call.client_id), encode(claim))

    def _response(self, method: Method, client_id: str, request_id: str,
                  result: Message | RpcError | None, now: int) -> Publish:
        response = pb.Response(request_id=request_id, server_id=self.server_id, sent_at=now)
        if isinstance(result, RpcError):
            # a Response is an error when its text is not empty (pkg/client/rpc.go)
            response.error = result.message or result.code or "unknown"
            response.code = result.code
            response.error_details.extend(result.details)
        elif result is not None:
            response.raw_response = result.SerializeToString()
        return Publish(response_channel(method.service, client_id), encode(response))
