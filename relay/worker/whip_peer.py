"""The WHIP publisher's peer connection (aiortc), inside a session worker.

aiortc is asyncio-only; like the LiveKit SDK it runs on the worker's asyncio thread
and is reached only from here (callers run inside `aio_thread.open_asyncio_thread()`).
RTP, RTCP, ICE and DTLS stay on that thread; what comes out is plain data on trio
channels:

* passthrough: every complete encoded video frame (`EncodedPicture`, H.264 Annex B
  or VP8) as aiortc's jitter buffer assembles it, without decoding;
* transcoding: decoded `av.VideoFrame`s from aiortc's own decoder;
* audio: in passthrough every Opus packet as sent (`OpusPacket`, never decoded);
  when transcoding, decoded `av.AudioFrame`s for our own Opus encoder.

Passthrough taps aiortc's video receiver between its jitter buffer and its decoder
thread, and takes audio packets before the audio jitter buffer; aiortc has no
public hook there (checked against aiortc 1.16, pinned in pyproject.toml, and
covered by the WHIP end-to-end tests).
"""

from __future__ import annotations

import logging
import queue
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import trio
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.sdp import candidate_from_sdp

import whip

from . import aio_thread
from .whip_simulcast import SimulcastReceiver

log = logging.getLogger(__name__)

VIDEO_QUEUE = 120
AUDIO_QUEUE = 100
RTP_VIDEO_CLOCK = 90_000


class PeerFailed(Exception):
    """The WHIP publisher's peer connection could not be set up or has failed."""


@dataclass(frozen=True)
class EncodedPicture:
    """One complete encoded video frame from the publisher, as sent."""

    codec: str  # "h264" | "vp8"
    data: bytes
    keyframe: bool
    timestamp_us: int
    rid: str = ""  # the simulcast layer it belongs to ("" without simulcast)


@dataclass(frozen=True)
class OpusPacket:
    """One Opus packet from the publisher, as sent (passthrough)."""

    data: bytes
    timestamp: int  # RTP 48 kHz ticks, unwrapped (RtpClock)


class RtpClock:
    """A stream's 32-bit RTP timestamps as a count that never wraps.

    A publisher's timestamps start anywhere and wrap every 2^32 ticks: 13.3 hours at
    90 kHz, 24.9 at 48 kHz, so a long stream wraps for sure. Downstream (encoders,
    input statistics) wants time to go on, so each value is placed in the 2^32 cycle
    nearest the one before it: a packet reordered across the wrap stays before it.
    The count starts one cycle up, so a packet just before the first stays positive.
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp + (1 << 32)
            return self._last
        step = (timestamp - self._last) & 0xFFFFFFFF
        self._last += step - (1 << 32) if step >= 1 << 31 else step
        return self._last


def is_keyframe(codec: str, data: bytes) -> bool:
    """H.264: an IDR NAL unit in the Annex B access unit; VP8: the frame tag's P bit."""
    if codec == "vp8":
        return bool(data) and not data[0] & 1
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        if data[i + 3] & 0x1F == 5:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


class _DecoderTap:
    """Stands in for aiortc's decoder queue: complete frames come to us instead.

    The receiver's decoder thread still waits on the original queue; the end
    marker (None) is passed on so that it exits when the receiver stops.
    """

    def __init__(self, original: queue.Queue, on_frame: Callable[[Any, Any], None]) -> None:
        self.original = original
        self.on_frame = on_frame

    def put(self, item: Any) -> None:
        if item is None:
            self.original.put(None)
        else:
            self.on_frame(*item)

    def get(self) -> Any:
        """The decoder thread, if it starts after the tap, waits here for its end."""
        return self.original.get()


_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


def tap_receiver(receiver: RTCRtpReceiver, on_frame: Callable[[Any, Any], None]) -> None:
    original = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(original, queue.Queue):
        raise PeerFailed("this aiortc version cannot pass video through (no decoder queue)")
    setattr(receiver, _QUEUE_ATTR, _DecoderTap(original, on_frame))


class WhipPeer:
    """One publisher's peer connection; `answer()` first, then read the channels."""

    def __init__(self, *, passthrough: bool) -> None:
        self.passthrough = passthrough
        self._video_send, self.video = trio.open_memory_channel[Any](VIDEO_QUEUE)
        self._audio_send, self.audio = trio.open_memory_channel[av.AudioFrame | OpusPacket](
            AUDIO_QUEUE)
        self.stereo = False  # the offer's Opus fmtp says stereo=1
        self.video_codec = ""
        self.has_video = self.has_audio = False
        self.ended = trio.Event()
        self.end_reason = ""
        self.dropped_video = 0
        self._pc: RTCPeerConnection | None = None
        self._video_receiver: RTCRtpReceiver | None = None
        self.simulcast: SimulcastReceiver | None = None
        self.rids: tuple[str, ...] = ()  # the offer's simulcast layers, if any
        self._video_ssrc = 0
        self._tracks: list[Any] = []
        self._edge = aio_thread.current()
        # one per RTP stream: the video, each simulcast layer (by rid), the audio
        self._clocks: dict[str, RtpClock] = {}

    # -- signalling ----------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Take the publisher's offer; the answer with our ICE candidates in it."""
        try:
            return await aio_thread.call(self._answer, offer_sdp)
        except PeerFailed:
            raise
        except Exception as exc:
            raise PeerFailed(f"cannot answer the offer: {exc}") from exc

    async def _answer(self, offer_sdp: str) -> str:
        pc = self._pc = RTCPeerConnection()
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        # the front has checked the offer; here it only says which layers it sends
        video = whip.inspect_offer(offer_sdp, transcoding=not self.passthrough).video
        answer = pc.localDescription.sdp
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video" and transceiver.receiver.track is not None:
                # negotiated, in the offer's order: the publisher sends the first one
                names = [c.name.lower() for c in transceiver._codecs if c.name.lower() != "rtx"]
                self.video_codec = names[0] if names else ""
                self._video_receiver = transceiver.receiver
                if video is not None and video.rids and video.rid_extension is not None:
                    self.rids = video.rids
                    self.simulcast = SimulcastReceiver(
                        transceiver.receiver, transceiver._codecs, video.rids,
                        video.rid_extension, self._on_layer)
                    answer = whip.simulcast_answer(answer, video)
                elif self.passthrough:
                    tap_receiver(transceiver.receiver, self._on_encoded)
            if transceiver.kind == "audio" and self.passthrough:
                self._forward_opus(transceiver.receiver, transceiver._codecs)
        self.stereo = "stereo=1" in offer_sdp
        return answer

    def _on_track(self, track: Any) -> None:
        self._tracks.append(track)
        if track.kind == "video":
            self.has_video = True
        elif track.kind == "audio":
            self.has_audio = True

    def _on_state(self) -> None:
        if self._pc is None:  # aiortc reports "closed" after close() too
            return
        state = self._pc.connectionState
        log.info("WHIP peer connection %s", state)
        if state in ("failed", "closed"):
            self._edge.to_trio(self._end, f"peer connection {state}")

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    # -- media ---------------------------------------------------------------------

    def _on_encoded(self, codec: Any, frame: Any) -> None:
        name = codec.name.lower()
        picture = EncodedPicture(name, bytes(frame.data), is_keyframe(name, frame.data),
                                 self._time_us("video", frame.timestamp))
        self._edge.to_trio(self._deliver, "video", picture)

    def _on_layer(self, rid: str, codec: str, frame: Any) -> None:
        picture = EncodedPicture(codec, bytes(frame.data), is_keyframe(codec, frame.data),
                                 self._time_us(f"video {rid}", frame.timestamp), rid)
        self._edge.to_trio(self._deliver, "video", picture)

    def _time_us(self, stream: str, timestamp: int) -> int:
        """A video frame's RTP timestamp (90 kHz) as microseconds that never wrap."""
        clock = self._clocks.get(stream) or self._clocks.setdefault(stream, RtpClock())
        return clock.unwrap(timestamp) * 1_000_000 // RTP_VIDEO_CLOCK

    def _forward_opus(self, receiver: RTCRtpReceiver, codecs: list[Any]) -> None:
        """Passthrough audio: each Opus packet goes on as it arrives, before aiortc's
        audio jitter buffer (which waits for 4 packets: 80 ms on every packet, and
        audio that late behind the video). The receiver still sees the packet for its
        statistics and receiver reports; its decoder gets nothing (a tap that drops)."""
        opus = {c.payloadType for c in codecs if c.name.lower() == "opus"}
        original = receiver._handle_rtp_packet
        clock = self._clocks.setdefault("audio", RtpClock())

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type in opus and packet.payload:
                self._edge.to_trio(self._deliver, "audio",
                                   OpusPacket(bytes(packet.payload),
                                              clock.unwrap(packet.timestamp)))
            await original(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
        tap_receiver(receiver, lambda codec, frame: None)

    def _deliver(self, kind: str, frame: Any) -> None:
        """In trio: one frame onto its channel, dropped if the consumer is that far behind."""
        send = self._audio_send if kind == "audio" else self._video_send
        try:
            send.send_nowait(frame)
        except trio.WouldBlock:
            if kind == "video":
                self.dropped_video += 1
            else:  # the consumer is seconds behind: drop rather than block
                log.warning("WHIP audio queue full: dropping a frame")
        except trio.ClosedResourceError:
            pass  # the session is ending

    async def pump(self) -> None:
        """Move decoded frames from aiortc's tracks to the channels until they end."""
        tracks = [] if self.passthrough else self._tracks  # passthrough: taps deliver
        async with trio.open_nursery() as nursery:
            for track in tracks:
                nursery.start_soon(aio_thread.call, self._pump_track, track)
            await self.ended.wait()
            nursery.cancel_scope.cancel()

    async def _pump_track(self, track: Any) -> None:
        """On the asyncio thread: each decoded frame of one track to trio."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._edge.to_trio(self._end, f"{track.kind} track ended")
                return
            self._edge.to_trio(self._deliver, track.kind, frame)

    async def add_remote_candidates(self, candidates: tuple[tuple[str, str], ...]) -> int:
        """Candidates the publisher trickled after its offer; how many were taken."""
        return await aio_thread.call(self._add_candidates, candidates)

    async def _add_candidates(self, candidates: tuple[tuple[str, str], ...]) -> int:
        if self._pc is None:
            return 0
        added = 0
        for mid, line in candidates:
            try:
                candidate = candidate_from_sdp(line.split(":", 1)[1])
                candidate.sdpMid = mid or None
                await self._pc.addIceCandidate(candidate)
                added += 1
            # e.g. an mDNS name aioice cannot use; aiortc checks lines with `assert`
            except (ValueError, IndexError, AssertionError) as exc:
                log.info("ICE candidate %r not added: %s", line, exc)
        return added

    async def restart_ice(self, ufrag: str, pwd: str) -> tuple[str, str]:
        """The publisher's new ICE credentials in; our new ones (ufrag, pwd) out."""
        return await aio_thread.call(self._restart_ice, ufrag, pwd)

    async def _restart_ice(self, ufrag: str, pwd: str) -> tuple[str, str]:
        """An ICE restart in place (RFC 8445 section 9, RFC 9725 section 4.3.2).

        aiortc has no ICE restart; its agent, aioice, checks every STUN request
        against the current credentials and signs its own checks and consent
        requests with them, so swapping both sides' credentials restarts ICE without
        a new DTLS handshake: the publisher's checks with the new ones succeed and
        nominate a pair again (the old pair carries media meanwhile; a pair on new
        addresses is learned as peer-reflexive, as after the first offer)."""
        connection = self._ice_connection()
        new_ufrag, new_pwd = secrets.token_hex(4), secrets.token_hex(16)
        connection._local_username, connection._local_password = new_ufrag, new_pwd
        connection.remote_username, connection.remote_password = ufrag, pwd
        log.info("ICE restart: local ufrag %s, the publisher's %s", new_ufrag, ufrag)
        return new_ufrag, new_pwd

    def _ice_connection(self) -> Any:
        """aioice's connection under the (bundled) transport, checked to be one it knows."""
        for transceiver in self._pc.getTransceivers() if self._pc is not None else ():
            dtls = transceiver.receiver.transport
            connection = getattr(getattr(dtls, "transport", None), "_connection", None)
            if connection is not None:
                if not all(hasattr(connection, name) for name in (
                        "_local_username", "_local_password", "remote_username",
                        "remote_password")):
                    raise PeerFailed("this aioice version cannot restart ICE")
                return connection
        raise PeerFailed("no ICE transport to restart")

    async def request_keyframe(self, rid: str = "") -> None:
        """Ask the publisher for a keyframe (RTCP PLI), e.g. for a new subscriber; with
        simulcast, for one layer."""
        if self.simulcast is not None:
            sent = await aio_thread.call(self.simulcast.request_keyframe, rid)
            log.info("keyframe request: PLI for layer %r%s", rid,
                     "" if sent else " (its SSRC is not known yet)")
            return
        receiver = self._video_receiver
        ssrc = self._remote_video_ssrc()
        log.info("keyframe request: PLI to ssrc %s", ssrc or "(none known yet)")
        if receiver is not None and ssrc:
            await aio_thread.call(receiver._send_rtcp_pli, ssrc)

    def _remote_video_ssrc(self) -> int:
        """The publisher's video SSRC, not its RTX one: a PLI naming the RTX stream is
        ignored (Chromium sends bandwidth-probe padding on RTX before any media, and
        aiortc lists sources before unwrapping RTX)."""
        receiver = self._video_receiver
        if receiver is None:
            return 0
        rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})  # RTX SSRC -> media SSRC
        for source in receiver.getSynchronizationSources():
            if source.source not in rtx:
                return int(source.source)
        return 0

    async def close(self) -> None:
        if self._pc is not None:
            pc, self._pc = self._pc, None
            await aio_thread.call(pc.close)
        self._end("closed")
