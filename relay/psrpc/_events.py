"""What the psrpc state machines return: actions for the transport, events for the program.

Frozen dataclasses compared by value. Actions (:class:`Publish`, :class:`Subscribe`,
:class:`Unsubscribe`) are for the Redis edge to perform in order; the others tell the
program what happened on the bus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from ._methods import Method

__all__ = [
    "AffinityWanted",
    "Call",
    "CallTimedOut",
    "HandleRequest",
    "MultiDone",
    "MultiReply",
    "Publish",
    "Result",
    "RpcError",
    "Subscribe",
    "Unsubscribe",
]

# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """PUBLISH ``payload`` (an envelope) on ``channel``."""

    channel: str
    payload: bytes


@dataclass(frozen=True)
class Subscribe:
    """SUBSCRIBE to ``channel``. ``queue``: only one subscriber of the cluster may take a
    message: the transport feeds it to ``receive`` only after it won
    ``SET queue_lock_key(payload) <any> NX PX QUEUE_LOCK_TTL`` (psrpc's Redis bus)."""

    channel: str
    queue: bool = False


@dataclass(frozen=True)
class Unsubscribe:
    """UNSUBSCRIBE from ``channel``."""

    channel: str


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcError:
    """A psrpc error as a Response carries it: ``code`` is psrpc's ErrorCode string
    (``unavailable``, ``deadline_exceeded``, ``not_found``, ``malformed_request``...)."""

    code: str
    message: str
    details: tuple[any_pb2.Any, ...] = ()


@dataclass(frozen=True)
class Call:
    """A request a server may handle. Times are unix nanoseconds (the client's clock)."""

    request_id: str
    client_id: str
    method: Method
    topic: tuple[str, ...]
    request: Message
    sent_at: int
    expiry: int
    metadata: Mapping[str, str] = field(default_factory=dict)


# -- server events ------------------------------------------------------------------------


@dataclass(frozen=True)
class AffinityWanted:
    """A request of a method registered with affinity: answer with
    ``server.claim(call.request_id, affinity, now)`` (negative: decline)."""

    call: Call


@dataclass(frozen=True)
class HandleRequest:
    """Run the handler; answer with ``server.respond(call.request_id, result, now)``."""

    call: Call


@dataclass(frozen=True)
class CallTimedOut:
    """A request given to the handler has passed its expiry: the client no longer waits,
    and a later ``respond`` publishes nothing (psrpc's handler context ends then)."""

    call: Call


# -- client events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """The end of a single request: ``response`` (of the method's response type) or
    ``error``."""

    request_id: str
    response: Message | None = None
    error: RpcError | None = None


@dataclass(frozen=True)
class MultiReply:
    """One server's answer to a multi request (more may follow until :class:`MultiDone`)."""

    request_id: str
    server_id: str
    response: Message | None = None
    error: RpcError | None = None


@dataclass(frozen=True)
class MultiDone:
    """A multi request's timeout passed: no more replies."""

    request_id: str
