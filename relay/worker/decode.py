"""PyAV decoders fed by the demuxers' media events.

A decoder is built from the stream's configuration event (avcC, hvcC, av1C,
AudioSpecificConfig, OpusHead...) and turns coded frames into `av.VideoFrame` /
`av.AudioFrame` with millisecond timestamps. Decoding is blocking C code that
releases the GIL: callers run a video `decode()` in a worker thread, never on the
event loop; an audio frame decodes in ~20 us (AAC, Opus, MP3), less than a
thread's round trip, and is decoded on the loop.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.error

import rtmp

MS = Fraction(1, 1000)

VIDEO_DECODERS = {"h264": "h264", "hevc": "hevc", "av1": "libdav1d", "vp8": "vp8", "vp9": "vp9"}
AUDIO_DECODERS = {"aac": "aac", "mp3": "mp3float", "opus": "opus"}


class DecodeError(Exception):
    """The stream cannot be decoded: unsupported codec, or broken data."""


def _open(name: str, fallback: str, extradata: bytes | None) -> av.CodecContext:
    try:
        ctx = av.CodecContext.create(name, "r")
    except (av.error.FFmpegError, ValueError):
        ctx = av.CodecContext.create(fallback, "r")
    if extradata:
        ctx.extradata = extradata
    # Slice threads only: frame threading delays output by one frame per thread
    # (latency), and some FFmpeg frame-thread paths hang on hostile input.
    ctx.thread_type = "SLICE"
    return ctx


class _Decoder:
    """What video and audio decoders share: opening by codec, packet in, frames out."""

    KIND = ""
    DECODERS: dict[str, str] = {}

    def __init__(self, config: rtmp.VideoConfig | rtmp.AudioConfig | None,
                 codec: str | None = None) -> None:
        codec = config.codec if config is not None else codec
        if codec not in self.DECODERS:
            raise DecodeError(f"unsupported {self.KIND} codec {codec}")
        self.codec = codec
        try:
            self._ctx = _open(self.DECODERS[codec], codec, self._extradata(config))
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecodeError(f"cannot open the {codec} decoder: {exc}") from exc
        self.errors = 0

    @staticmethod
    def _extradata(config: rtmp.VideoConfig | rtmp.AudioConfig | None) -> bytes | None:
        return config.config if config is not None and config.config else None

    def _decode(self, packet: av.Packet) -> list:
        packet.time_base = MS
        try:
            out = self._ctx.decode(packet)
        except av.error.FFmpegError as exc:
            self.errors += 1
            raise DecodeError(f"{self.codec} decoding failed: {exc}") from exc
        for decoded in out:
            decoded.time_base = MS
        return list(out)


class VideoDecoder(_Decoder):
    """One video stream: codec config in, `av.VideoFrame`s with `pts` in ms out."""

    KIND = "video"
    DECODERS = VIDEO_DECODERS

    @staticmethod
    def _extradata(config: rtmp.VideoConfig | rtmp.AudioConfig | None) -> bytes | None:
        if not isinstance(config, rtmp.VideoConfig) or not config.config:
            return None
        # an AV1 config that is not an av1C record (e.g. from MPEG-TS) is not extradata
        if config.codec == "av1" and config.record_type != "av1C":
            return None
        return config.config

    def decode(self, frame: rtmp.VideoFrame) -> list[av.VideoFrame]:
        packet = av.Packet(frame.data)
        packet.pts, packet.dts = frame.pts, frame.dts
        if frame.keyframe:
            packet.is_keyframe = True
        return self._decode(packet)

    def flush(self) -> list[av.VideoFrame]:
        try:
            return list(self._ctx.decode(None))
        except av.error.FFmpegError:
            return []


class AudioDecoder(_Decoder):
    """One audio stream: codec config in, `av.AudioFrame`s with `pts` in ms out."""

    KIND = "audio"
    DECODERS = AUDIO_DECODERS

    def __init__(self, config: rtmp.AudioConfig | None, codec: str | None = None) -> None:
        super().__init__(config, codec)
        if config is not None and config.sample_rate:
            self._ctx.sample_rate = config.sample_rate

    def decode(self, frame: rtmp.AudioFrame) -> list[av.AudioFrame]:
        packet = av.Packet(frame.data)
        packet.pts, packet.dts = frame.dts, frame.dts
        return self._decode(packet)
