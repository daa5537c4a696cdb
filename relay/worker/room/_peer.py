"""The publisher PeerConnection to the SFU (asyncio thread, but for `send`).

aiortc does ICE, DTLS and SRTP and writes the SDP; each track gets a send-only
transceiver with an idle track (aiortc's own sender never sends: it is stopped
once negotiated), and our RtpStreams (``_rtp.py``) send on the bundle's
transport instead, through its PacketSender (``_sender.py``) from whichever
thread has the frame. The offer LiveKit sees is aiortc's, rewritten by
``_offer.py`` to describe our streams (one SSRC, or rid simulcast).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from ._offer import (
    ABS_SEND_TIME_URI,
    MID_URI,
    RID_EXTENSION_ID,
    RID_URI,
    TWCC_EXTENSION_ID,
    TWCC_URI,
    SectionStreams,
    answered_extension_ids,
    answered_payload_type,
    publish_offer,
    rids_for,
)
from ._rtp import RtpStream
from ._sender import PacketSender
from ._twcc import (
    FMT_TWCC,
    HEADROOM,
    FeedbackError,
    SendSideEstimator,
    layers_within,
)

log = logging.getLogger(__name__)

_CODECS = {"h264": ("video/H264", 90_000), "vp8": ("video/VP8", 90_000),
           "opus": ("audio/opus", 48_000)}


class _IdleTrack(MediaStreamTrack):
    """A track that never yields: aiortc's sender waits on it until stopped."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


class Congestion:
    """The PeerConnection's transport-wide CC: one sequence shared by every stream, the
    send records, the estimate (``_twcc.py``), fed by the transport's RTCP. Used
    under the transport's send lock (``PacketSender.lock``)."""

    def __init__(self, ceiling: int) -> None:
        self.estimator = SendSideEstimator(ceiling)
        self._sequence = random.randrange(1 << 16)
        self.malformed = 0

    def next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFF
        return self._sequence

    def sent(self, sequence: int, size: int) -> None:
        self.estimator.on_sent(sequence, size, time.monotonic() * 1000)

    def feedback(self, fci: bytes) -> None:
        try:
            self.estimator.on_feedback(fci, time.monotonic() * 1000)
        except FeedbackError:
            self.malformed += 1


def _twcc_feedback(data: bytes) -> list[bytes]:
    """The FCIs of the transport-wide CC feedback in a compound RTCP packet (aiortc
    parses RTPFB as NACKs, so they are read here first)."""
    out = []
    pos = 0
    while pos + 4 <= len(data):
        fmt, packet_type = data[pos] & 0x1F, data[pos + 1]
        length = (int.from_bytes(data[pos + 2:pos + 4], "big") + 1) * 4
        if pos + length > len(data):
            break
        if packet_type == 205 and fmt == FMT_TWCC and length >= 12:
            out.append(data[pos + 12:pos + length])
        pos += length
    return out


@dataclass
class _Track:
    cid: str
    codec: str
    rids: tuple[str, ...]
    transceiver: Any
    ssrcs: tuple[int, ...]
    streams: list[RtpStream] = field(default_factory=list)
    mid: str = ""
    bitrates: tuple[int, ...] = ()  # per layer, lowest first (video)
    allowed: int = 0  # layers sent at the last look (0: all, before any estimate)

    def allowed_layers(self, estimate: float) -> int:
        self.allowed = layers_within(list(self.bitrates), estimate,
                                     self.allowed or len(self.bitrates))
        return self.allowed


class PublisherPeer:
    """Tracks added, offers made, answers applied; frames queued for sending."""

    def __init__(self, ice_servers: list[tuple[tuple[str, ...], str, str]],
                 on_failed: Callable[[str], None]) -> None:
        servers = [RTCIceServer(urls=list(urls), username=user or None,
                                credential=password or None)
                   for urls, user, password in ice_servers if urls]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        self.tracks: dict[str, _Track] = {}
        self._cname = str(uuid.uuid4())
        self._remote_candidates: list[str] = []
        self._answered = False
        self._senders: dict[int, PacketSender] = {}  # by id of the DTLS transport
        self.congestion: Congestion | None = None

        @self.pc.on("connectionstatechange")
        def changed() -> None:
            if self.pc.connectionState == "failed":
                on_failed("the connection to the room failed (ICE/DTLS)")

    def add_track(self, kind: str, codec: str, layers: int,
                  bitrates: tuple[int, ...] = ()) -> str:
        """A send-only transceiver for a new track; its cid (the msid track id)."""
        track = _IdleTrack(kind)
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        mime, _ = _CODECS[codec]
        capabilities = RTCRtpSender.getCapabilities(kind).codecs
        chosen = [c for c in capabilities if c.mimeType.lower() == mime.lower()]
        if codec == "h264":  # packetization-mode 1 (FU-A): what the packetizer makes
            chosen = [c for c in chosen
                      if (c.parameters or {}).get("packetization-mode") == "1"][:1]
        transceiver.setCodecPreferences(chosen[:1])
        rids = rids_for(layers) if kind == "video" else ()
        ssrcs = tuple(random.randrange(1, 1 << 32) for _ in range(max(1, len(rids))))
        self.tracks[track.id] = _Track(track.id, codec, rids, transceiver, ssrcs,
                                       bitrates=bitrates)
        return track.id

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sections = []
        for track in self.tracks.values():
            track.mid = track.transceiver.mid
            sections.append(SectionStreams(track.mid, track.ssrcs, track.rids, self._cname))
        return publish_offer(self.pc.localDescription.sdp, sections)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._answered = True
        transport = None
        for track in self.tracks.values():
            if track.streams:
                continue
            transceiver = track.transceiver
            await transceiver.sender.stop()  # aiortc's: ours send instead
            transport = transceiver.sender.transport
            mime, clock = _CODECS[track.codec]
            payload_type = answered_payload_type(sdp, track.mid, mime.split("/")[1])
            ids = {MID_URI: 1, ABS_SEND_TIME_URI: 3}  # aiortc's offer, echoed
            if track.rids:
                ids[RID_URI] = RID_EXTENSION_ID
            if track.codec == "opus":
                ids = {MID_URI: 1}
            sender = self._sender_of(transport)
            if answered_extension_ids(sdp, track.mid).get(TWCC_URI) == TWCC_EXTENSION_ID:
                ids[TWCC_URI] = TWCC_EXTENSION_ID
                self._start_congestion(transport, sender)
            for index, ssrc in enumerate(track.ssrcs):
                stream = RtpStream(transport, sender, ssrc=ssrc, payload_type=payload_type,
                                   clock_rate=clock, mid=track.mid,
                                   rid=track.rids[index] if track.rids else "",
                                   extension_ids=ids, cname=self._cname,
                                   congestion=self.congestion if TWCC_URI in ids else None)
                stream.start()
                track.streams.append(stream)
        if self.congestion is not None:  # every track counts towards the ceiling
            estimator = self.congestion.estimator
            estimator.ceiling = max(estimator.ceiling, self._ceiling())
            if estimator.feedbacks == 0:  # nothing measured yet: start at the top
                estimator.estimate = estimator.ceiling
        for candidate in self._remote_candidates:
            await self.add_candidate(candidate)
        self._remote_candidates.clear()

    def _sender_of(self, transport: Any) -> PacketSender:
        sender = self._senders.get(id(transport))
        if sender is None:
            sender = self._senders[id(transport)] = PacketSender(
                transport, asyncio.get_running_loop())
        return sender

    def _start_congestion(self, transport: Any, sender: PacketSender) -> None:
        """Transport-wide CC once the answer took it: feedback is read off the DTLS
        transport's RTCP before aiortc parses it."""
        if self.congestion is not None:
            return
        self.congestion = congestion = Congestion(self._ceiling())
        original = transport._handle_rtcp_data

        async def handle_rtcp_data(data: bytes) -> None:
            for fci in _twcc_feedback(data):
                with sender.lock:  # the send records are written under it
                    congestion.feedback(fci)
            await original(data)

        transport._handle_rtcp_data = handle_rtcp_data

    def _ceiling(self) -> int:
        return int(HEADROOM * sum(sum(t.bitrates) for t in self.tracks.values()))

    def layers_allowed(self, cid: str) -> int:
        """How many of a video track's layers fit the estimate (all, without CC)."""
        track = self.tracks.get(cid)
        if track is None or not track.bitrates:
            return len(track.streams) if track is not None else 0
        if self.congestion is None:
            return len(track.bitrates)
        return track.allowed_layers(self.congestion.estimator.estimate)

    async def add_candidate(self, candidate_init: str) -> None:
        """A server candidate (RTCIceCandidateInit JSON); kept until the answer."""
        if not self._answered:
            self._remote_candidates.append(candidate_init)
            return
        init = json.loads(candidate_init)  # a JSON object: relay/lksignal checked it
        text = init.get("candidate") or ""
        if not isinstance(text, str) or not text:
            return  # end of candidates
        try:
            candidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith(
                "candidate:") else text)
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)
        # aiortc checks a candidate line with `assert`: AssertionError is its "malformed"
        except (ValueError, IndexError, TypeError, AssertionError) as exc:
            log.info("server candidate %r not added: %s", text[:120], exc)

    def send(self, cid: str, layer: int, payloads: tuple[bytes, ...], timestamp: int,
             marker: bool = True) -> None:
        """One frame for a track's layer, sent now; from any thread (before the
        answer, or for a layer the answer has no stream for, it is dropped)."""
        stream = self.stream(cid, layer)
        if stream is not None:
            stream.send_frame(payloads, timestamp, marker)

    @property
    def dropped(self) -> int:
        """Packets the sockets refused (a full send buffer, the network unreachable)."""
        return sum(sender.dropped for sender in self._senders.values())

    def stream(self, cid: str, layer: int) -> RtpStream | None:
        track = self.tracks.get(cid)
        if track is None or layer >= len(track.streams):
            return None
        return track.streams[layer]

    async def close(self) -> None:
        for track in self.tracks.values():
            for stream in track.streams:
                await stream.stop()
        for sender in self._senders.values():
            sender.close()
        await self.pc.close()
