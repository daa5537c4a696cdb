"""Video that goes to the room as the publisher encoded it (no decode, no re-encode).

The publisher (relay/worker/room) sends one layer of H.264 (Annex B) or VP8 (or
a WHIP publisher's simulcast layers) in decode order as it came, packetized for
RTP. WebRTC has no B-frames: a stream whose presentation order differs from its
decode order cannot pass, and neither can a codec the room's subscribers may not
decode (HEVC, AV1, VP9 from RTMP). Such a source ends the session with an error
that says what to change.

Used by WHIP sessions (relay/worker/whip_input.py) and, behind the `rtmp_passthrough`
switch, by RTMP ingresses with enable_transcoding=false.
"""

from __future__ import annotations

import logging

import av
import trio
from livekit.protocol import models

import rtmp

from .encode import packetize_access_unit
from .room import PublishedTrack, VideoLayer
from .session import MIME, MonotonicClock, Session, SessionFailed

log = logging.getLogger("relay.worker")

ADVICE = ("turn transcoding on for this ingress (enable_transcoding: true) or set the "
          "encoder to H.264 without B-frames (x264: -bf 0; OBS: profile baseline)")


def probe_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The picture size of a keyframe, by decoding it alone (follows size changes)."""
    try:
        context = av.CodecContext.create(codec, "r")
        frames = context.decode(av.Packet(data))
    except av.FFmpegError:
        return None
    return (frames[0].width, frames[0].height) if frames else None


def annexb(data: bytes, nal_length_size: int) -> bytes:
    """Length-prefixed (AVCC) NAL units -> Annex B with 4-byte start codes."""
    out = bytearray()
    pos = 0
    while pos + nal_length_size <= len(data):
        size = int.from_bytes(data[pos:pos + nal_length_size], "big")
        pos += nal_length_size
        if size == 0 or pos + size > len(data):
            raise SessionFailed("h264 passthrough: a NAL unit overruns its access unit")
        out += b"\x00\x00\x00\x01" + data[pos:pos + size]
        pos += size
    return bytes(out)


class EncodedVideoOutput:
    """Access units -> one video track: one layer, or the publisher's simulcast layers.

    The track is published once every layer has shown a keyframe (its size comes from
    decoding it), or `LAYER_WAIT` seconds after the first one did: a layer that is
    later than that (a browser holds its upper layers back until its bandwidth
    estimate allows them) is not announced and not sent. Layers are ordered by size
    and announced as LOW / MEDIUM / HIGH.

    A keyframe request from the room cannot be served here (we do not encode): the
    input decides what to do with `keyframe_requested()` (WHIP asks its publisher
    with a PLI; RTMP has no way back and waits for the encoder's next keyframe).

    Simulcast layers above the bandwidth estimate (`RoomPublisher.layers_allowed`,
    from the room's transport-wide CC feedback, against the announced bitrates) are
    not forwarded, from the top down, so that the lower ones get through intact; a
    layer that fits again resumes at its next keyframe, which `keyframe_requested()`
    asks for.
    """

    def __init__(self, session: Session, rids: tuple[str, ...] = ("",)) -> None:
        self.session = session
        self.rids = rids
        self.sizes: dict[str, tuple[int, int]] = {}
        self.first_size_at: float | None = None
        self.layers: list[str] = []  # the published rids, LOW first
        self.track: PublishedTrack | None = None
        self.picture_ids = dict.fromkeys(rids, 0)
        self.clocks = {rid: MonotonicClock() for rid in rids}
        self.held: set[int] = set()  # layers not forwarded (over the estimate) ...
        self.keyframe_owed: set[int] = set()  # ... and those waiting for a keyframe

    @property
    def top(self) -> str | None:
        """The rid of the published top layer (None before publishing)."""
        return self.layers[-1] if self.layers else None

    async def send(self, codec: str, data: bytes, keyframe: bool, timestamp_us: int,
                   rid: str = "") -> None:
        session = self.session
        session.video_in.mime = MIME.get(codec, codec)
        if rid not in self.picture_ids:
            return
        if keyframe:
            size = await trio.to_thread.run_sync(probe_size, codec, data)
            if size is not None:
                self.sizes[rid] = size
                if self.first_size_at is None:
                    self.first_size_at = trio.current_time()
        if rid not in self.sizes:
            return  # nothing to show before the layer's first keyframe
        if self.track is None:
            assert self.first_size_at is not None
            if (len(self.sizes) < len(self.rids)
                    and trio.current_time() - self.first_size_at < LAYER_WAIT):
                return
            await self._publish(codec)
        if rid not in self.layers:
            return
        layer = self.layers.index(rid)
        if len(self.layers) > 1 and not self._forwarded(layer, keyframe):
            return
        if rid == self.top:
            session.video_in.width, session.video_in.height = self.sizes[rid]
            session.captured_video += 1
        rtp_us = self.clocks[rid](timestamp_us // 1000, trio.current_time()) * 1000 + (
            timestamp_us % 1000)
        frame = packetize_access_unit(codec, data, rtp_us * 9 // 100, keyframe,
                                      self.picture_ids[rid])
        self.picture_ids[rid] = (self.picture_ids[rid] + 1) % (1 << 15)
        session.publisher.send(self.track, layer, frame.payloads, frame.timestamp)

    async def _publish(self, codec: str) -> None:
        session = self.session
        self.layers = _layer_order(self.rids, self.sizes)
        sizes = _guess_sizes(self.layers, self.sizes)
        top_width, top_height = sizes[-1]
        top_rate = session.video_encoding.top.bitrate
        layers = []
        for (width, height), quality in zip(sizes, _QUALITIES[len(sizes)], strict=True):
            share = (width * height) / (top_width * top_height)
            layers.append(VideoLayer(quality, width, height,
                                     max(1, int(top_rate * share ** 0.75))))
        self.track = await session.publisher.publish_video(
            layers, codec=codec, name=session.info.video.name,
            source=session.info.video.source)
        await session.report_state("publishing")

    def _forwarded(self, layer: int, keyframe: bool) -> bool:
        """Whether a simulcast layer's access unit goes to the room (congestion)."""
        assert self.track is not None
        allowed = self.session.publisher.layers_allowed(self.track)
        if layer >= allowed:
            if layer not in self.held:
                log.info("holding back simulcast layer %d of %d (bandwidth estimate %s "
                         "kbit/s)", layer + 1, len(self.layers),
                         int((self.session.publisher.estimate or 0) / 1000))
            self.held.add(layer)
            return False
        if layer in self.held:
            if not keyframe:
                self.keyframe_owed.add(layer)
                return False
            log.info("forwarding simulcast layer %d of %d again", layer + 1,
                     len(self.layers))
            self.held.discard(layer)
            self.keyframe_owed.discard(layer)
        return True

    def keyframe_requested(self, layer: int = 0) -> bool:
        """Whether a keyframe of a layer is wanted since the last call: a subscriber
        asked (the SFU's PLI), or the layer resumes after being held back."""
        if self.track is None or layer >= len(self.layers):
            return False
        owed = layer in self.keyframe_owed
        self.keyframe_owed.discard(layer)
        return self.session.publisher.take_keyframe_request(self.track, layer) or owed


LAYER_WAIT = 3.0


def _layer_order(rids: tuple[str, ...], sizes: dict[str, tuple[int, int]]) -> list[str]:
    """The rids lowest first: the offer's simulcast order (low to high, as LiveKit's
    clients and OBS send it), reversed if the sizes seen so far say it runs high to low."""
    known = [sizes[rid][0] * sizes[rid][1] for rid in rids if rid in sizes]
    order = list(rids)
    if len(known) >= 2 and known == sorted(known, reverse=True) and known[0] > known[-1]:
        order.reverse()
    return order


def _guess_sizes(order: list[str], sizes: dict[str, tuple[int, int]]
                 ) -> list[tuple[int, int]]:
    """Each layer's size: as seen, or for a layer not seen yet (a browser enables its
    upper layers as its bandwidth estimate grows) twice or half its nearest seen
    neighbour's per step, the ratio browsers use between simulcast layers."""
    seen = [i for i, rid in enumerate(order) if rid in sizes]
    out = []
    for i, rid in enumerate(order):
        if rid in sizes:
            out.append(sizes[rid])
            continue
        near = min(seen, key=lambda j: abs(j - i))
        width, height = sizes[order[near]]
        factor = 2.0 ** (i - near)
        out.append((max(2, int(width * factor) // 2 * 2), max(2, int(height * factor) // 2 * 2)))
    return out
_QUALITIES = {1: (models.VideoQuality.HIGH,),
              2: (models.VideoQuality.LOW, models.VideoQuality.HIGH),
              3: (models.VideoQuality.LOW, models.VideoQuality.MEDIUM,
                  models.VideoQuality.HIGH)}


async def rtmp_passthrough_stage(session: Session, frames: trio.MemoryReceiveChannel) -> None:
    """The RTMP video stage when transcoding is off: H.264 only, no B-frames."""
    output = EncodedVideoOutput(session)
    parameter_sets = b""
    nal_length_size = 4
    async for event in frames:
        if event.codec != "h264":
            raise SessionFailed(f"{event.codec} video cannot pass through to the room: "
                                + ADVICE)
        if isinstance(event, rtmp.VideoConfig):
            parameter_sets = b"".join(b"\x00\x00\x00\x01" + p for p in event.parameter_sets)
            nal_length_size = event.nal_length_size or 4
            continue
        assert isinstance(event, rtmp.VideoFrame)
        if event.pts != event.dts:
            raise SessionFailed("the source's H.264 has B-frames, which cannot pass through "
                                "to the room: " + ADVICE)
        unit = annexb(event.data, nal_length_size)
        if event.keyframe:
            unit = parameter_sets + unit  # a new subscriber starts at any keyframe
        await output.send("h264", unit, event.keyframe, event.dts * 1000)
