"""Our outgoing RTP streams, on aiortc's DTLS transport.

aiortc's RTCRtpSender sends one stream per track and encodes itself; a simulcast
layer needs its own SSRC and an rtp-stream-id header extension, and a
pre-encoded frame only needs packetizing. So each stream here is ours: RTP
headers (mid, rid, abs-send-time), a sender report every second, and the
feedback the SFU sends back for its SSRC:

* PLI / FIR: ``keyframe_wanted`` is set; the encoder of that layer reads it;
* NACK: the packet is sent again from a short history (no RTX: the offer has none);
* receiver reports: the last ``fraction_lost``, for the congestion controller.

Frames are sent by the thread that has them (``send_frame``, from any thread,
through the transport's :class:`PacketSender`, ``_sender.py``); the feedback and
the sender reports run on the asyncio loop. aiortc's DTLS transport routes RTCP
by SSRC to whatever is registered in its ``_rtp_router``: that is the one other
private name of aiortc's used here.

Packets are written here (`rtp_header`), not with aiortc's RtpPacket: a
publisher sends ~300 a second per session, and RtpPacket's generic header
extension map and datetime-based NTP clock cost ~60 us a packet in Python
(bench/sessions.py, py-spy), against ~10 for a struct and a cached extension block.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from ._offer import ABS_SEND_TIME_URI, MID_URI, RID_URI, TWCC_URI

log = logging.getLogger(__name__)

HISTORY = 1024  # packets kept for NACKs: ~1 s of a 1080p layer
SR_INTERVAL = 1.0


NTP_EPOCH = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_ONE_BYTE_PROFILE = 0xBEDE


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (32.32 fixed point)."""
    return int((time.time() + NTP_EPOCH) * (1 << 32))


def one_byte_element(ext_id: int, value: bytes) -> bytes:
    """An RFC 8285 one-byte header extension element (id 1-14, 1-16 bytes)."""
    if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError(f"extension {ext_id} of {len(value)} bytes has no one-byte form")
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def rtp_header(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int,
               elements: bytes) -> bytes:
    """An RTP header (no CSRCs) with one-byte header extension `elements`, padded."""
    if not elements:
        return _FIXED_HEADER.pack(0x80, (marker << 7) | payload_type, sequence, timestamp,
                                  ssrc)
    elements += b"\0" * (-len(elements) % 4)
    return (_FIXED_HEADER.pack(0x90, (marker << 7) | payload_type, sequence, timestamp,
                               ssrc)
            + _EXTENSION_HEADER.pack(_ONE_BYTE_PROFILE, len(elements) // 4) + elements)


class RtpStream:
    """One outgoing stream: a simulcast layer, a single-layer video track, or audio."""

    def __init__(self, transport: Any, sender: Any, *, ssrc: int, payload_type: int,
                 clock_rate: int, mid: str, rid: str = "", extension_ids: dict[str, int],
                 cname: str, congestion: Any = None) -> None:
        self.transport = transport  # aiortc's DTLS transport: its RTCP router
        self.sender = sender  # PacketSender (_sender.py): protects and sends
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.mid = mid
        self.rid = rid
        self.cname = cname
        # mid and rid never change: their elements are made once
        self._fixed_elements = b"".join(
            one_byte_element(extension_ids[uri], value.encode())
            for uri, value in ((MID_URI, mid), (RID_URI, rid))
            if value and uri in extension_ids)
        self._abs_send_time_id = extension_ids.get(ABS_SEND_TIME_URI, 0)
        self._twcc_id = extension_ids.get(TWCC_URI, 0)
        self._sequence = random.randrange(1 << 15)
        self._timestamp_origin = random.randrange(1 << 32)
        self._history: dict[int, bytes] = {}
        self._last_ntp = 0
        self._last_rtp = 0
        self.packets = 0
        self.octets = 0
        self.keyframe_wanted = False
        self.fraction_lost = 0.0
        self.retransmitted = 0
        self._rtcp_task: asyncio.Task[None] | None = None
        # the PeerConnection's transport-wide CC (sequence numbers, send records), if
        # the answer took it
        self.congestion = congestion

    # -- sending (from any thread: the sender's lock orders them) -----------------------

    def send_frame(self, payloads: Sequence[bytes], timestamp: int,
                   marker_last: bool = True) -> None:
        """One frame's payloads; ``timestamp`` in the stream's clock, from any origin."""
        rtp_timestamp = (self._timestamp_origin + timestamp) & 0xFFFFFFFF
        now = ntp_now()  # a frame's packets leave together: one send time for all
        elements = self._fixed_elements
        if self._abs_send_time_id:
            elements += one_byte_element(self._abs_send_time_id,
                                         ((now >> 14) & 0xFFFFFF).to_bytes(3, "big"))
        congestion = self.congestion if self._twcc_id else None
        last = len(payloads) - 1
        sender = self.sender
        with sender.lock:
            for index, payload in enumerate(payloads):
                sequence = self._sequence
                transport_element = b""
                if congestion is not None:
                    transport_sequence = congestion.next_sequence()
                    transport_element = one_byte_element(
                        self._twcc_id, transport_sequence.to_bytes(2, "big"))
                data = rtp_header(self.payload_type, marker_last and index == last,
                                  sequence, rtp_timestamp, self.ssrc,
                                  elements + transport_element) + payload
                if congestion is not None:
                    congestion.sent(transport_sequence, len(data))
                self._history[sequence % HISTORY] = data
                self._sequence = (sequence + 1) & 0xFFFF
                sender.send_rtp(data)
                self.packets += 1
                self.octets += len(payload)
            self._last_ntp = now
            self._last_rtp = rtp_timestamp

    # -- feedback (aiortc's router calls this for RTCP naming our SSRC) -----------------

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self.ssrc:
                    self.fraction_lost = report.fraction_lost / 256
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI,
                                                                   RTCP_PSFB_FIR):
            self.keyframe_wanted = True
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            with self.sender.lock:
                for sequence in packet.lost:
                    data = self._history.get(sequence % HISTORY)
                    if data is not None and int.from_bytes(data[2:4], "big") == sequence:
                        self.retransmitted += 1
                        self.sender.send_rtp(data)

    def take_keyframe_request(self) -> bool:
        wanted, self.keyframe_wanted = self.keyframe_wanted, False
        return wanted

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        self.transport._rtp_router.register_sender(self, self.ssrc)
        self._rtcp_task = asyncio.ensure_future(self._run_rtcp())

    async def stop(self) -> None:
        self.transport._rtp_router.unregister_sender(self)
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
            await asyncio.gather(self._rtcp_task, return_exceptions=True)
        self._send_rtcp([RtcpByePacket(sources=[self.ssrc])])

    async def _run_rtcp(self) -> None:
        while True:
            await asyncio.sleep(SR_INTERVAL * (0.5 + random.random()))
            if not self.packets:
                continue
            with self.sender.lock:  # the last frame's times and counts, together
                info = RtcpSenderInfo(ntp_timestamp=self._last_ntp,
                                      rtp_timestamp=self._last_rtp,
                                      packet_count=self.packets & 0xFFFFFFFF,
                                      octet_count=self.octets & 0xFFFFFFFF)
            self._send_rtcp([
                RtcpSrPacket(ssrc=self.ssrc, sender_info=info),
                RtcpSdesPacket(chunks=[RtcpSourceInfo(
                    ssrc=self.ssrc, items=[(1, self.cname.encode())])]),
            ])

    def _send_rtcp(self, packets: list[Any]) -> None:
        compound = b"".join(bytes(p) for p in packets)
        with self.sender.lock:
            self.sender.send_rtcp(compound)
