"""Video that goes to the room as the publisher encoded it (no decode, no re-encode).

The publisher (relay/worker/room) sends one layer of H.264 (Annex B) or VP8 in
decode order as it came, packetized for RTP. WebRTC has no B-frames: a stream whose presentation
order differs from its decode order cannot pass, and neither can a codec the
room's subscribers may not decode (HEVC, AV1, VP9 from RTMP). Such a source ends
the session with an error that says what to change.

Used by WHIP sessions (relay/worker/whip_input.py) and, behind the `rtmp_passthrough`
switch, by RTMP ingresses with enable_transcoding=false.
"""

from __future__ import annotations

import av
import trio
from livekit.protocol import models

import rtmp

from .encode import packetize_access_unit
from .room import PublishedTrack, VideoLayer
from .session import MIME, Session, SessionFailed

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
    """Access units -> one-layer video track (published at the first keyframe).

    A keyframe request from the room cannot be served here (we do not encode): the
    input decides what to do with `keyframe_requested()` (WHIP asks its publisher
    with a PLI; RTMP has no way back and waits for the encoder's next keyframe).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.size: tuple[int, int] | None = None
        self.track: PublishedTrack | None = None
        self.picture_id = 0

    async def send(self, codec: str, data: bytes, keyframe: bool, timestamp_us: int) -> None:
        session = self.session
        session.video_in.mime = MIME.get(codec, codec)
        if keyframe:
            self.size = await trio.to_thread.run_sync(probe_size, codec, data) or self.size
        if self.size is None:
            return  # nothing to show before the first keyframe
        session.video_in.width, session.video_in.height = self.size
        if self.track is None:
            width, height = self.size
            self.track = await session.publisher.publish_video(
                [VideoLayer(models.VideoQuality.HIGH, width, height,
                            session.video_encoding.top.bitrate)],
                codec=codec, name=session.info.video.name, source=session.info.video.source)
            await session.report_state("publishing")
        frame = packetize_access_unit(codec, data, timestamp_us * 9 // 100, keyframe,
                                      self.picture_id)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        session.publisher.send(self.track, 0, frame.payloads, frame.timestamp)
        session.captured_video += 1

    def keyframe_requested(self) -> bool:
        """Whether a subscriber asked for a keyframe (the SFU's PLI) since the last call."""
        if self.track is None:
            return False
        return self.session.publisher.take_keyframe_request(self.track, 0)


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
