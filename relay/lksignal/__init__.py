"""Sans-IO core of LiveKit's client signalling, for a publisher of our own.

Binary WebSocket messages in, typed events out, the messages to send returned as bytes;
no sockets, no clocks (``now`` is passed in: seconds of one monotonic clock). The
messages are livekit-protocol's ``livekit.protocol.rtc`` SignalRequest / SignalResponse,
one protobuf per binary message. A transport opens ``ws(s)://host`` +
:func:`connect_path`, then::

    client = lksignal.SignalClient()
    for event in client.receive(message, now):   # every binary message received
        if isinstance(event, lksignal.Joined):
            send(client.add_track("v0", "video", "video", source="camera",
                                  width=1280, height=720,
                                  layers=[("low", 640, 360, 500_000),
                                          ("high", 1280, 720, 2_000_000)],
                                  simulcast_codecs=[("h264", "v0")]))
        elif isinstance(event, lksignal.TrackPublished):
            send(client.offer(pc_offer_sdp))     # publisher PC's offer
        elif isinstance(event, lksignal.Answer): ...      # set remote description
        elif isinstance(event, lksignal.Trickle): ...     # add remote candidate
    # and by client.next_ping(now): send(client.ping(now)); if client.timed_out(now): hang up

Errors: a message that is oversized (:data:`MAX_MESSAGE`), not a SignalResponse, or
unexpected now (anything but a join or leave before the join, a second join, a
TrackPublished for a cid never added, a trickle that is not a JSON object) raises
:class:`SignalProtocolError` (a ``ValueError``) from ``receive``, nothing else does for
server input, and the client stays usable. Sending before the join or after a leave is
the program's bug (``RuntimeError``); bad arguments raise ``ValueError``.

Wire facts, verified in livekit-server v1.13.5's source (the Go module the tests run):

* Endpoint (pkg/service/rtcservice.go): ``/rtc`` with options in the query (``/rtc/v1``
  wants a ``join_request`` and single-PeerConnection mode); the token as
  ``access_token`` (auth.go) or an ``Authorization: Bearer`` header.
* Query (rtcservice.go ``validateInternal``, utils.go ``ParseClientInfo``; the same
  names client-sdk-js's ``createConnectionParams`` sends): ``auto_subscribe``
  (default true on the server, so we send ``0``), ``sdk`` (``python``), ``version``,
  ``protocol``, ``adaptive_stream``, ``reconnect`` + ``sid``.
* Protocol version: :data:`PROTOCOL_VERSION` = 17, the server's ``CurrentProtocol``
  (pkg/rtc/types/protocol_version.go; client-sdk-js sends 16). Packet trailers (17) are
  gated on a ClientInfo capability we never claim.
* Framing (wsprotocol.go): binary messages are protobuf and answered in protobuf (a text
  message would switch the server to JSON; we never send one).
* Keep-alive (rtcservice.go, rtc/participant.go): the server answers ``ping_req`` with
  ``pong_resp{last_ping_timestamp: echoed, timestamp: unix ms}`` and legacy ``ping``
  with ``pong``; its JoinResponse asks for pings every 5 s, timeout 15 s.

The WebSocket, the PeerConnection and the RTP streams are relay/worker/room's. Left
out: reconnect/resume, mute/update requests, subscriptions, data channels'
signalling, ``/rtc/v1``.
"""

from __future__ import annotations

from ._client import (
    MAX_MESSAGE,
    MAX_PENDING_TRACKS,
    PROTOCOL_VERSION,
    RTC_PATH,
    SDK,
    Layer,
    SignalClient,
    SignalProtocolError,
    connect_path,
)
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
    "Answer",
    "IceServer",
    "Joined",
    "Layer",
    "Leave",
    "Offer",
    "OtherResponse",
    "Pong",
    "RequestResult",
    "SignalClient",
    "SignalEvent",
    "SignalProtocolError",
    "TrackPublished",
    "Trickle",
    "connect_path",
]
