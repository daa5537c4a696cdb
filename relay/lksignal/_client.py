"""LiveKit's client signalling as a state machine: SignalResponse bytes in, events out,
SignalRequest bytes to send. One instance per WebSocket connection."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from enum import Enum
from urllib.parse import urlencode

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from ._events import (
    Answer,
    IceServer,
    Joined,
    Leave,
    Offer,
    OtherResponse,
    Pong,
    RequestResult,
    SignalEvent,
    TrackPublished,
    Trickle,
)

__all__ = [
    "MAX_MESSAGE",
    "MAX_PENDING_TRACKS",
    "PROTOCOL_VERSION",
    "RTC_PATH",
    "SDK",
    "Layer",
    "SignalClient",
    "SignalProtocolError",
    "connect_path",
]

PROTOCOL_VERSION = 17
"""livekit-server 1.13.5's ``types.CurrentProtocol`` (pkg/rtc/types/protocol_version.go);
>= 15 gets RequestResponse for refused requests, >= 16 room moves, 17 packet trailers
only with the CAP_PACKET_TRAILER capability, which we do not claim."""
RTC_PATH = "/rtc"
"""The v0 signal endpoint (pkg/service/rtcservice.go): options as query parameters.
(``/rtc/v1`` wants a base64 ``join_request`` and a single PeerConnection instead.)"""
SDK = "python"
"""``sdk`` parameter: the server maps it to ClientInfo.Sdk (pkg/service/utils.go)."""
MAX_MESSAGE = 1 << 20
"""Bytes a signal message may have, either way (our bound; the server has none of its
own, LiveKit's messages are a few KiB, an SDP offer some tens)."""
MAX_PENDING_TRACKS = 32
"""AddTrackRequests awaiting their TrackPublished at once."""

Layer = tuple[str | int, int, int, int]
"""A simulcast layer as announced: ``(quality, width, height, bitrate bps)``, quality
``"low" | "medium" | "high"`` or a ``models.VideoQuality`` value."""

_TARGETS = {"publisher": rtc.SignalTarget.PUBLISHER, "subscriber": rtc.SignalTarget.SUBSCRIBER}
_TARGET_NAMES = {v: k for k, v in _TARGETS.items()}
_TRACK_TYPES = {"audio": models.TrackType.AUDIO, "video": models.TrackType.VIDEO}
_SOURCES = {"unknown": models.TrackSource.UNKNOWN, "camera": models.TrackSource.CAMERA,
            "microphone": models.TrackSource.MICROPHONE,
            "screen_share": models.TrackSource.SCREEN_SHARE,
            "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO}
_QUALITIES = {"low": models.VideoQuality.LOW, "medium": models.VideoQuality.MEDIUM,
              "high": models.VideoQuality.HIGH}


class SignalProtocolError(ValueError):
    """A message from the server this core cannot accept: oversized, not a
    SignalResponse, or one that makes no sense now (an offer before the join, a second
    join, a TrackPublished for a cid we never asked for, a trickle that is not JSON).

    The only exception :meth:`SignalClient.receive` raises for server input; the client
    stays usable, so a transport may log it and go on, or hang up.
    """


class _State(Enum):
    JOINING = "joining"
    JOINED = "joined"
    CLOSED = "closed"


def connect_path(token: str, *, auto_subscribe: bool = False, adaptive_stream: bool = False,
                 protocol: int = PROTOCOL_VERSION, sdk: str = SDK, version: str = "",
                 reconnect_sid: str | None = None) -> str:
    """The path and query to open the signal WebSocket on (``ws(s)://host`` + this).

    Parameters as livekit-server 1.13.5 reads them (rtcservice.go ``validateInternal``,
    utils.go ``ParseClientInfo``, auth.go ``access_token``) and client-sdk-js sends them
    (``createConnectionParams``): booleans as ``1``/``0``. ``reconnect_sid`` asks to
    resume that participant.
    """
    params: list[tuple[str, str]] = [("access_token", token)]
    if reconnect_sid is not None:
        params += [("reconnect", "1"), ("sid", reconnect_sid)]
    params += [("auto_subscribe", "1" if auto_subscribe else "0"), ("sdk", sdk),
               ("version", version), ("protocol", str(protocol))]
    if adaptive_stream:
        params.append(("adaptive_stream", "1"))
    return f"{RTC_PATH}?{urlencode(params)}"


def _enum(value: str | int, names: dict[str, int], what: str) -> int:
    if isinstance(value, str):
        try:
            return names[value.lower()]
        except KeyError:
            raise ValueError(f"unknown {what} {value!r} (one of {sorted(names)})") from None
    return int(value)


class SignalClient:
    """One signal connection of a publishing participant.

    ``receive(message, now)`` takes each binary WebSocket message and returns events;
    the other methods return the binary message to send. ``now`` is seconds of one
    monotonic clock (``trio.current_time()``), used for keep-alive and RTT only.
    Sending anything but ``leave`` before :class:`Joined`, or anything after ``leave``
    (ours or the server's), is the program's bug: ``RuntimeError``.
    """

    connect_path = staticmethod(connect_path)

    def __init__(self) -> None:
        self._state = _State.JOINING
        self._joined: Joined | None = None
        self._pending: dict[str, models.TrackInfo | None] = {}  # cid -> (published later)
        self._joined_at = 0.0
        self._last_ping_sent: float | None = None
        self._last_heard: float | None = None
        self._rtt_ms = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def joined(self) -> Joined | None:
        """The join, once received."""
        return self._joined

    @property
    def closed(self) -> bool:
        """A leave was sent or received: the connection is done."""
        return self._state is _State.CLOSED

    @property
    def pending_tracks(self) -> frozenset[str]:
        """cids of AddTrackRequests still awaiting their TrackPublished."""
        return frozenset(self._pending)

    @property
    def rtt_ms(self) -> int:
        """The last measured signal round trip, ms (0 until a pong came back)."""
        return self._rtt_ms

    # -- input ---------------------------------------------------------------------------

    def receive(self, message: bytes, now: float) -> list[SignalEvent]:
        """Events in one binary WebSocket message from the server.

        Raises :class:`SignalProtocolError` for anything unacceptable (the client's
        state is then unchanged). Messages after a leave are dropped.
        """
        if len(message) > MAX_MESSAGE:
            raise SignalProtocolError(f"message of {len(message)} bytes (limit {MAX_MESSAGE})")
        response = rtc.SignalResponse()
        try:
            response.ParseFromString(message)
        except DecodeError as exc:
            raise SignalProtocolError(f"not a SignalResponse: {exc}") from None
        if self._state is _State.CLOSED:
            return []
        kind = response.WhichOneof("message")
        if kind is None:
            raise SignalProtocolError("empty SignalResponse")
        if self._state is _State.JOINING and kind not in ("join", "leave"):
            raise SignalProtocolError(f"{kind} before the join")
        event = self._interpret(kind, response, now)
        self._last_heard = now
        return [event]

    def _interpret(self, kind: str, response: rtc.SignalResponse,
                   now: float) -> SignalEvent:
        if kind == "join":
            if self._state is not _State.JOINING:
                raise SignalProtocolError("a second join")
            self._joined = _joined(response.join)
            self._joined_at = now
            self._state = _State.JOINED
            return self._joined
        if kind in ("offer", "answer"):
            sd = getattr(response, kind)
            cls = Offer if kind == "offer" else Answer
            if sd.type and sd.type != kind:
                raise SignalProtocolError(f"{kind} of type {sd.type[:20]!r}")
            return cls(sdp=sd.sdp, id=sd.id)
        if kind == "trickle":
            return _trickle(response.trickle)
        if kind == "track_published":
            return self._track_published(response.track_published)
        if kind == "leave":
            leave = response.leave
            self._state = _State.CLOSED
            return Leave(reason=_name(models.DisconnectReason, leave.reason),
                         action=_name(rtc.LeaveRequest.Action, leave.action),
                         can_reconnect=leave.can_reconnect)
        if kind == "pong_resp":
            pong = response.pong_resp
            rtt = None
            if self._last_ping_sent is not None and pong.last_ping_timestamp == _ms(
                    self._last_ping_sent):
                rtt = max(0, _ms(now) - pong.last_ping_timestamp)
                self._rtt_ms = rtt
            return Pong(last_ping=pong.last_ping_timestamp, timestamp=pong.timestamp, rtt=rtt)
        if kind == "pong":
            return Pong(last_ping=None, timestamp=response.pong)
        if kind == "request_response":
            rr = response.request_response
            return RequestResult(request_id=rr.request_id,
                                 reason=_name(rtc.RequestResponse.Reason, rr.reason),
                                 message=rr.message)
        return OtherResponse(kind=kind, response=response)

    def _track_published(self, published: rtc.TrackPublishedResponse) -> TrackPublished:
        if published.cid not in self._pending:
            raise SignalProtocolError(f"track_published for unknown cid {published.cid[:64]!r}")
        del self._pending[published.cid]
        return TrackPublished(cid=published.cid, sid=published.track.sid,
                              name=published.track.name, track=published.track)

    # -- output --------------------------------------------------------------------------

    def add_track(self, cid: str, name: str, type: str | int, *,
                  source: str | int = "unknown", width: int = 0, height: int = 0,
                  layers: Sequence[Layer] = (),
                  simulcast_codecs: Sequence[tuple[str, str]] = (),
                  muted: bool = False, disable_dtx: bool = False, stereo: bool = False,
                  disable_red: bool = False, stream: str = "") -> bytes:
        """AddTrackRequest announcing a track before it is negotiated.

        ``cid`` is our id for it (the MediaStreamTrack id in the SDP's msid, as the SDKs
        use it), echoed in :class:`TrackPublished`. ``layers`` are the simulcast layers
        the SFU may forward, ``simulcast_codecs`` ``(mime subtype, cid)`` pairs (e.g.
        ``("h264", cid)``), the codec the SFU should expect for that cid.
        """
        self._require_joined()
        if not cid:
            raise ValueError("empty cid")
        if cid in self._pending:
            raise ValueError(f"track {cid!r} is already being added")
        if len(self._pending) >= MAX_PENDING_TRACKS:
            raise RuntimeError(f"{MAX_PENDING_TRACKS} tracks already awaiting publication")
        request = rtc.AddTrackRequest(
            cid=cid, name=name, type=_enum(type, _TRACK_TYPES, "track type"),
            source=_enum(source, _SOURCES, "track source"), width=width, height=height,
            muted=muted, disable_dtx=disable_dtx, stereo=stereo, disable_red=disable_red,
            stream=stream)
        for quality, w, h, bitrate in layers:
            request.layers.add(quality=_enum(quality, _QUALITIES, "video quality"),
                               width=w, height=h, bitrate=bitrate)
        for codec, codec_cid in simulcast_codecs:
            request.simulcast_codecs.add(codec=codec, cid=codec_cid)
        data = self._encode(rtc.SignalRequest(add_track=request))
        self._pending[cid] = None
        return data

    def offer(self, sdp: str, id: int = 0) -> bytes:
        """Our publisher PeerConnection's offer."""
        self._require_joined()
        return self._encode(rtc.SignalRequest(
            offer=rtc.SessionDescription(type="offer", sdp=sdp, id=id)))

    def answer(self, sdp: str, id: int = 0) -> bytes:
        """Our answer to the server's offer (subscriber PeerConnection); ``id`` echoes
        the offer's."""
        self._require_joined()
        return self._encode(rtc.SignalRequest(
            answer=rtc.SessionDescription(type="answer", sdp=sdp, id=id)))

    def trickle(self, candidate_init: str, target: str = "publisher",
                final: bool = False) -> bytes:
        """One local ICE candidate: ``candidate_init`` the JSON of an
        RTCIceCandidateInit, ``target`` the PeerConnection it belongs to."""
        self._require_joined()
        _json_object(candidate_init, ValueError)
        return self._encode(rtc.SignalRequest(trickle=rtc.TrickleRequest(
            candidateInit=candidate_init, target=_enum(target, _TARGETS, "target"),
            final=final)))

    def ping(self, now: float) -> bytes:
        """A ``ping_req`` (timestamp ms of our clock, last RTT), answered by a
        ``pong_resp`` that echoes it (rtcservice.go). Send by :meth:`next_ping`."""
        self._require_joined()
        self._last_ping_sent = now
        return self._encode(rtc.SignalRequest(
            ping_req=rtc.Ping(timestamp=_ms(now), rtt=self._rtt_ms)))

    def next_ping(self, now: float) -> float | None:
        """When the next ping is due (the join's ``ping_interval`` after the last one,
        or after the join); ``None`` before the join, after a leave, or if the server
        asked for no pings."""
        if self._state is not _State.JOINED or self._joined is None:
            return None
        if self._joined.ping_interval <= 0:
            return None
        since = self._last_ping_sent if self._last_ping_sent is not None else self._joined_at
        return since + self._joined.ping_interval

    def timed_out(self, now: float) -> bool:
        """Nothing heard from the server for the join's ``ping_timeout``: the transport
        should treat the connection as lost (as client-sdk-js does)."""
        if self._state is not _State.JOINED or self._joined is None:
            return False
        if self._joined.ping_timeout <= 0 or self._last_heard is None:
            return False
        return now - self._last_heard > self._joined.ping_timeout

    def leave(self) -> bytes:
        """A client-initiated disconnect; the client is closed afterwards."""
        if self._state is _State.CLOSED:
            raise RuntimeError("already left")
        self._state = _State.CLOSED
        return self._encode(rtc.SignalRequest(leave=rtc.LeaveRequest(
            can_reconnect=False, reason=models.DisconnectReason.CLIENT_INITIATED,
            action=rtc.LeaveRequest.Action.DISCONNECT)))

    def _require_joined(self) -> None:
        if self._state is not _State.JOINED:
            raise RuntimeError(f"cannot send while {self._state.value}")

    @staticmethod
    def _encode(request: rtc.SignalRequest) -> bytes:
        data = request.SerializeToString()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"request of {len(data)} bytes (limit {MAX_MESSAGE})")
        return data


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _name(enum_type: object, value: int) -> str:
    try:
        return enum_type.Name(value)  # type: ignore[attr-defined, no-any-return]
    except ValueError:
        return str(value)


def _json_object(text: str, error: type[Exception]) -> None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for json
        raise error(f"candidate is not JSON: {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise error(f"candidate is not a JSON object: {text[:80]!r}")


def _trickle(trickle: rtc.TrickleRequest) -> Trickle:
    _json_object(trickle.candidateInit, SignalProtocolError)
    target = _TARGET_NAMES.get(trickle.target)
    if target is None:
        raise SignalProtocolError(f"trickle for unknown target {trickle.target}")
    return Trickle(candidate_init=trickle.candidateInit, target=target, final=trickle.final)


def _joined(join: rtc.JoinResponse) -> Joined:
    return Joined(
        room_name=join.room.name, room_sid=join.room.sid,
        participant_sid=join.participant.sid, participant_identity=join.participant.identity,
        server_version=join.server_version,
        ice_servers=tuple(IceServer(urls=tuple(s.urls), username=s.username,
                                    credential=s.credential) for s in join.ice_servers),
        subscriber_primary=join.subscriber_primary,
        # int32 on the wire: a negative one means none, like 0 (found by fuzz_lksignal)
        ping_interval=float(max(0, join.ping_interval)),
        ping_timeout=float(max(0, join.ping_timeout)), fast_publish=join.fast_publish,
        response=join)
