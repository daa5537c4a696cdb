"""SRTP-protect and send the publisher's packets from whichever thread made them.

The frames of a session come from three threads: the layer encoders' (video),
trio's (audio, passthrough) and asyncio's (sender reports, answers to NACKs).
Hopping every frame onto the asyncio loop to send it there cost a
``call_soon_threadsafe``, a loop wake-up and four coroutine levels per packet
(aiortc's ``_send_rtp`` -> the ICE transport -> aioice -> asyncio's transport);
here a frame is protected and sent by the thread that has it, in one call.

* libsrtp's session (and pylibsrtp's one buffer per session) is not thread-safe,
  and the transport-wide CC sequence must follow the order packets leave: every
  send, and the congestion controller's reading of feedback, holds :attr:`lock`.
* The datagram goes to the nominated ICE pair's socket, through a duplicate of
  aioice's file descriptor (non-blocking, like the original: a full send buffer
  drops the packet, as a router would, and NACKs recover it). A relayed (TURN)
  pair has no socket of its own to the server: its packets go through aioice on
  the asyncio loop, as before.

aiortc's names used here: ``RTCDtlsTransport._state``, ``._tx_srtp`` and
``.transport`` (the ICE transport), whose ``._connection`` is aioice's
``Connection`` with ``._nominated`` (aiortc 1.16 / aioice 0.10, pinned in
pyproject.toml; the publisher's real-server tests cover them).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

from aiortc.rtcdtlstransport import State

RTP_COMPONENT = 1


class PacketSender:
    """The protected send path of one DTLS transport (a bundle: every track's)."""

    def __init__(self, dtls: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.lock = threading.Lock()
        self.dropped = 0  # packets the socket refused (buffer full, unreachable)
        self._dtls = dtls
        self._loop = loop
        self._protocol: Any = None  # the pair's protocol the socket below belongs to
        self._socket: socket.socket | None = None
        self._closed = False

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet; the caller holds :attr:`lock`."""
        if self._connected():
            self._send(self._dtls._tx_srtp.protect(packet))

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet; the caller holds :attr:`lock`."""
        if self._connected():
            self._send(self._dtls._tx_srtp.protect_rtcp(packet))

    def close(self) -> None:
        with self.lock:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _connected(self) -> bool:
        return not self._closed and self._dtls._state == State.CONNECTED

    def _send(self, datagram: bytes) -> None:
        pair = self._dtls.transport._connection._nominated.get(RTP_COMPONENT)
        if pair is None:
            return
        if pair.protocol is not self._protocol:
            self._use(pair.protocol)
        if self._socket is None:  # relayed: aioice wraps it for the TURN server
            self._loop.call_soon_threadsafe(pair.protocol.transport.sendto, datagram,
                                            pair.remote_addr)
            return
        try:
            self._socket.sendto(datagram, pair.remote_addr)
        except OSError:  # EAGAIN (send buffer full), ENETUNREACH, ...: lost, as on a wire
            self.dropped += 1

    def _use(self, protocol: Any) -> None:
        """Take the socket of a newly nominated pair (a duplicate of its descriptor)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._protocol = protocol
        transport = getattr(protocol, "transport", None)
        # asyncio's gives its socket; aioice's TurnTransport (relayed) has none
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or raw.type != socket.SOCK_DGRAM:
            return
        self._socket = socket.socket(raw.family, raw.type, fileno=os.dup(raw.fileno()))
