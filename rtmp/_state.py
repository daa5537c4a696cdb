"""What :meth:`ServerSession.next_event` returns besides events, and the session's states.

Two sentinels, in the style of h11's ``NEED_DATA``/``PAUSED``: classes whose ``repr`` is
their name and whose type is themselves, compared with ``is``. Neither is an
:data:`rtmp.Event`, so ``isinstance(x, rtmp.Event)`` tells events from them.

* :data:`NEED_DATA`: nothing more can be parsed until :meth:`receive_data` gets bytes.
* :data:`PAUSED`: a :class:`PublishRequested` awaits ``accept_publish`` /
  ``reject_publish``; nothing is parsed until then, however many bytes are buffered.

The states of a connection (:class:`ConnState`, the handshake included) and of each
message stream (:class:`StreamState`) move only through :data:`TRANSITIONS`, the one
table of which trigger takes which state where. A trigger the table does not allow
in the current state is the peer's fault (:class:`RTMPProtocolError`) unless the
trigger is a call of ours (:data:`CALLER_TRIGGERS`): then it is a local bug
(``RuntimeError``).
"""

from __future__ import annotations

import enum
from typing import Any, Final, overload

from ._errors import RTMPProtocolError

__all__ = [
    "CALLER_TRIGGERS",
    "NEED_DATA",
    "PAUSED",
    "TRANSITIONS",
    "ConnState",
    "Sentinel",
    "StreamState",
    "Trigger",
    "allowed",
    "transition",
]


class Sentinel(type):
    """Metaclass of the sentinels: each is a class that is an instance of itself (h11)."""

    def __new__(
        cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwds: Any
    ) -> Sentinel:
        assert bases == (Sentinel,)
        v = super().__new__(cls, name, bases, namespace, **kwds)
        v.__class__ = v  # type: ignore[assignment]
        return v

    def __repr__(self) -> str:
        return self.__name__


class NEED_DATA(Sentinel, metaclass=Sentinel):
    """``next_event()``: no event until more bytes are received."""


class PAUSED(Sentinel, metaclass=Sentinel):
    """``next_event()``: a publish awaits ``accept_publish``/``reject_publish``."""


class ConnState(enum.Enum):
    """Where a connection is: the handshake, then ``connect``, or failed for good."""

    AWAIT_C0C1 = "awaiting C0+C1"
    AWAIT_C2 = "awaiting C2"
    AWAIT_CONNECT = "awaiting connect"
    CONNECTED = "connected"
    FAILED = "failed"


class StreamState(enum.Enum):
    """A message stream made by createStream, as seen by the publish decision."""

    IDLE = "idle"  # created, no publish yet
    PENDING = "pending"  # publish asked, caller not answered yet (session paused)
    PUBLISHING = "publishing"  # accepted: its media becomes events
    REJECTED = "rejected"  # refused (by the caller, or for a missing stream key)
    ENDED = "ended"  # FCUnpublish / closeStream / deleteStream after publishing


class Trigger(enum.Enum):
    """What moves a state: something the peer sent, or a call of the session's user."""

    C0C1 = "C0+C1"
    C2 = "C2"
    CONNECT = "connect"
    FAIL = "a protocol error"
    PUBLISH = "publish"
    PUBLISH_WITHOUT_KEY = "publish without a stream key"
    ACCEPT = "accept_publish()"
    REJECT = "reject_publish()"
    UNPUBLISH = "FCUnpublish/closeStream/deleteStream"


_C, _S, _T = ConnState, StreamState, Trigger

TRANSITIONS: Final[dict[tuple[ConnState | StreamState, Trigger], ConnState | StreamState]] = {
    # connection
    (_C.AWAIT_C0C1, _T.C0C1): _C.AWAIT_C2,
    (_C.AWAIT_C2, _T.C2): _C.AWAIT_CONNECT,
    (_C.AWAIT_CONNECT, _T.CONNECT): _C.CONNECTED,
    **{(s, _T.FAIL): _C.FAILED for s in ConnState if s is not _C.FAILED},
    # message streams: a stream may publish again once its last publish is over
    **{(s, _T.PUBLISH): _S.PENDING for s in (_S.IDLE, _S.REJECTED, _S.ENDED)},
    **{(s, _T.PUBLISH_WITHOUT_KEY): _S.REJECTED for s in (_S.IDLE, _S.REJECTED, _S.ENDED)},
    (_S.PENDING, _T.ACCEPT): _S.PUBLISHING,
    (_S.PENDING, _T.REJECT): _S.REJECTED,
    (_S.PUBLISHING, _T.UNPUBLISH): _S.ENDED,
}
"""``(state, trigger) -> new state``; a pair that is not here is not allowed."""

CALLER_TRIGGERS: Final = frozenset({Trigger.ACCEPT, Trigger.REJECT})
"""Triggers that are calls of the session's user: disallowed, they are local bugs."""


def allowed(state: ConnState | StreamState, trigger: Trigger) -> bool:
    """Whether :data:`TRANSITIONS` lets ``trigger`` happen in ``state``."""
    return (state, trigger) in TRANSITIONS


@overload
def transition(state: ConnState, trigger: Trigger, what: str = "") -> ConnState: ...
@overload
def transition(state: StreamState, trigger: Trigger, what: str = "") -> StreamState: ...
def transition(
    state: ConnState | StreamState, trigger: Trigger, what: str = ""
) -> ConnState | StreamState:
    """The state ``trigger`` leads to from ``state``, or raise.

    Raises ``RuntimeError`` for a caller's trigger (a local bug), else
    :class:`RTMPProtocolError` (the peer's). ``what`` names the machine in the message.
    """
    new = TRANSITIONS.get((state, trigger))
    if new is None:
        where = f"{what} " if what else ""
        message = f"{trigger.value} not allowed: {where}is {state.value}"
        if trigger in CALLER_TRIGGERS:
            raise RuntimeError(message)
        raise RTMPProtocolError(message)
    return new
