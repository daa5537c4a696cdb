"""A WHIP publisher's simulcast layers, received apart (asyncio thread only).

aiortc receives one RTP stream per m-line: the layers of a simulcast offer (one
SSRC each, named by the rtp-stream-id header extension in their first packets)
would all land in one jitter buffer. So for a simulcast offer the video
receiver's packet handler is replaced by :class:`SimulcastReceiver`, which tells
the layers apart by rid (then by the SSRC it learnt), assembles each layer's
frames in a jitter buffer of its own and hands them on as they are (passthrough
only: simulcast with transcoding is refused at the offer). It also keeps the
publisher's bandwidth estimate fed: a REMB over all layers (aiortc's estimator,
from abs-send-time), without which a browser never enables its upper layers.
A layer that loses a packet asks for a keyframe on its own SSRC (no NACKs).

Uses aiortc's receiver internals (its ``_handle_rtp_packet`` and ``_send_rtcp``,
the transport's header-extension map), as the video and audio taps in
whip_peer.py do; checked against aiortc 1.16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc.codecs import depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, pack_remb_fci

log = logging.getLogger(__name__)

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
MAX_SSRCS = 8  # SSRCs learnt per m-line: the layers (and a changed encoder or two)


class _Extensions:
    def __init__(self, ids: dict[str, int]) -> None:
        self.headerExtensions = [RTCRtpHeaderExtensionParameters(id=i, uri=u)
                                 for u, i in ids.items()]


class SimulcastReceiver:
    """Stands in for one video receiver's packet handler; frames go to ``on_frame``
    as ``(rid, codec name, frame)`` (an aiortc JitterFrame: ``data``, ``timestamp``)."""

    def __init__(self, receiver: Any, codecs: list[Any], rids: tuple[str, ...],
                 rid_extension: int,
                 on_frame: Callable[[str, str, Any], None]) -> None:
        self.receiver = receiver
        self.codecs = {c.payloadType: c for c in codecs if c.name.lower() in ("h264", "vp8")}
        self.rids = rids
        self.on_frame = on_frame
        self.ssrc_rid: dict[int, str] = {}
        self.rid_ssrc: dict[str, int] = {}
        self.buffers = {rid: JitterBuffer(capacity=512, is_video=True) for rid in rids}
        self.estimator = RemoteBitrateEstimator()
        self.frames = dict.fromkeys(rids, 0)
        receiver.transport._rtp_header_extensions_map.configure(
            _Extensions({RID_URI: rid_extension}))
        receiver._handle_rtp_packet = self._handle_rtp_packet

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        # every packet counts for the estimate, the browser's padding probes (on its RTX
        # SSRCs) above all: they are how it finds room for its upper layers
        if packet.extensions.abs_send_time is not None:
            remb = self.estimator.add(arrival_time_ms=arrival_time_ms,
                                      abs_send_time=packet.extensions.abs_send_time,
                                      payload_size=len(packet.payload) + packet.padding_size,
                                      ssrc=packet.ssrc)
            if remb is not None:
                bitrate, _ = remb
                await self._send_rtcp(RTCP_PSFB_APP, 0,
                                      pack_remb_fci(bitrate, list(self.rid_ssrc.values())))
        rid = packet.extensions.rtp_stream_id or self.ssrc_rid.get(packet.ssrc)
        if rid not in self.buffers:
            return  # RTX, padding probes or an unknown layer: nothing to pass on
        if packet.ssrc not in self.ssrc_rid:
            if len(self.ssrc_rid) >= MAX_SSRCS:
                return
            self.ssrc_rid[packet.ssrc] = rid
            self.rid_ssrc[rid] = packet.ssrc
            log.info("simulcast layer %r is SSRC %d", rid, packet.ssrc)
        codec = self.codecs.get(packet.payload_type)
        if codec is None or not packet.payload:
            return
        try:
            packet._data = depayload(codec, packet.payload)
        except ValueError:
            return
        lost, frame = self.buffers[rid].add(packet)
        if lost:
            await self.request_keyframe(rid)
        if frame is not None:
            self.frames[rid] += 1
            self.on_frame(rid, codec.name.lower(), frame)

    async def request_keyframe(self, rid: str) -> bool:
        """A PLI to one layer's SSRC; False while that SSRC is not known yet."""
        ssrc = self.rid_ssrc.get(rid)
        if ssrc is None:
            return False
        await self._send_rtcp(RTCP_PSFB_PLI, ssrc, b"")
        return True

    async def _send_rtcp(self, fmt: int, media_ssrc: int, fci: bytes) -> None:
        sender = getattr(self.receiver, "_RTCRtpReceiver__rtcp_ssrc", None) or 1
        await self.receiver._send_rtcp(RtcpPsfbPacket(fmt=fmt, ssrc=sender,
                                                      media_ssrc=media_ssrc, fci=fci))
