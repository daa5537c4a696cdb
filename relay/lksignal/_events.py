"""What :class:`~relay.lksignal.SignalClient` hands the program: frozen, compared by value.

Each event is the part of a ``SignalResponse`` a publisher acts on; the protobuf it came
from rides along (``compare=False``) for anything not summarised here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit.protocol import models, rtc

__all__ = [
    "Answer",
    "IceServer",
    "Joined",
    "Leave",
    "Offer",
    "OtherResponse",
    "Pong",
    "RequestResult",
    "SignalEvent",
    "TrackPublished",
    "Trickle",
]


@dataclass(frozen=True)
class IceServer:
    """A STUN/TURN server the room offers (JoinResponse ``ice_servers``), for aiortc's
    ``RTCIceServer``."""

    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""


@dataclass(frozen=True)
class Joined:
    """The JoinResponse: we are in the room. Intervals in seconds, 0 for none (a
    negative one on the wire reads as 0). ``subscriber_primary``
    says which PeerConnection carries the session: true iff the token grants
    ``can_subscribe`` (livekit-server rtc/participant.go); then the server offers the
    subscriber PC at once, else our publisher PC's offer starts it."""

    room_name: str
    room_sid: str
    participant_sid: str
    participant_identity: str
    server_version: str
    ice_servers: tuple[IceServer, ...]
    subscriber_primary: bool
    ping_interval: float
    ping_timeout: float
    fast_publish: bool = False
    response: rtc.JoinResponse | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Offer:
    """The server's SDP offer (for our subscriber PC, or after renegotiation)."""

    sdp: str
    type: str = "offer"
    id: int = 0


@dataclass(frozen=True)
class Answer:
    """The server's SDP answer to our publisher PC's offer."""

    sdp: str
    type: str = "answer"
    id: int = 0


@dataclass(frozen=True)
class Trickle:
    """An ICE candidate from the server: ``candidate_init`` is the JSON of an
    ``RTCIceCandidateInit`` (``candidate``, ``sdpMid``, ``sdpMLineIndex``...), ``target``
    ``"publisher"`` or ``"subscriber"``; ``final``: end of candidates."""

    candidate_init: str
    target: str
    final: bool = False


@dataclass(frozen=True)
class TrackPublished:
    """The server accepted the AddTrackRequest with our ``cid``: the track's sid is now
    known and the track may be negotiated (offered) on the publisher PC."""

    cid: str
    sid: str
    name: str
    track: models.TrackInfo | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Leave:
    """The server ends (or moves) the session. ``reason`` is a DisconnectReason name,
    ``action`` a LeaveRequest.Action name (``DISCONNECT``, ``RESUME``, ``RECONNECT``)."""

    reason: str
    action: str
    can_reconnect: bool = False


@dataclass(frozen=True)
class Pong:
    """Answer to a ping. Times in ms of the clocks that stamped them: ``last_ping`` is
    our own ``ping_req`` timestamp echoed (``None`` for a legacy ``pong``), ``timestamp``
    the server's unix ms; ``rtt`` ms by our clock, when ``last_ping`` is ours."""

    last_ping: int | None
    timestamp: int
    rtt: int | None = None


@dataclass(frozen=True)
class RequestResult:
    """The server's verdict on a request (protocol >= 15: e.g. an AddTrackRequest
    refused). ``reason`` is a RequestResponse.Reason name (``OK``, ``NOT_ALLOWED``...)."""

    request_id: int
    reason: str
    message: str


@dataclass(frozen=True)
class OtherResponse:
    """A SignalResponse this core does not interpret (``update``, ``room_update``,
    ``subscribed_quality_update``...): ``kind`` is its oneof field name."""

    kind: str
    response: rtc.SignalResponse | None = field(default=None, compare=False, repr=False)


SignalEvent = (Joined | Offer | Answer | Trickle | TrackPublished | Leave | Pong
               | RequestResult | OtherResponse)
"""Every event :meth:`SignalClient.receive` returns."""
