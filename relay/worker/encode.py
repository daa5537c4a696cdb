"""Our encoders: one per simulcast layer (libx264 / libvpx), and Opus for audio.

Settings are those of a live ingest (the reference's GStreamer pipeline: x264enc
``speed-preset=veryfast tune=zerolatency``, no B-frames, a keyframe every 2 s,
CBR-like rate control): every picture comes out at once, and a layer's rate stays
near its bitrate so the SFU can forward it without surprises. H.264 is
constrained baseline (what every browser decodes) with SPS/PPS before every IDR,
so a subscriber can start at any keyframe. A keyframe request from the room
forces an IDR on that layer only.

Every method is synchronous and meant for a worker thread (PyAV releases the GIL
while libx264/libvpx/libopus work); one encoder is used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
KEYFRAME_SECONDS = 2.0
X264_PRESET = "veryfast"
ENCODER_THREADS = 1  # per layer: a picture's layers are encoded one after the other
# in one worker thread while the next picture decodes (relay/worker/session.py)
OPUS_FRAME = 960  # samples: 20 ms at 48 kHz
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)  # made once: a Fraction costs ~3 us
AUDIO_TIME_BASE = Fraction(1, AUDIO_CLOCK)


class EncodeError(Exception):
    """An encoder could not be opened or refused a picture."""


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded picture, packetized for RTP: the payloads of one frame."""

    payloads: tuple[bytes, ...]
    timestamp: int  # 90 kHz
    keyframe: bool
    size: int  # bytes of the encoded picture


def _x264_options(fps: float) -> dict[str, str]:
    keyint = max(1, round(fps * KEYFRAME_SECONDS))
    return {"preset": X264_PRESET, "tune": "zerolatency", "profile": "baseline",
            "forced-idr": "1",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0"}


class LayerEncoder:
    """Scales a decoded picture to one layer and encodes it (H.264 or VP8)."""

    def __init__(self, codec: str, width: int, height: int, bitrate: int,
                 fps: float) -> None:
        if codec not in ("h264", "vp8"):
            raise EncodeError(f"no encoder for {codec}")
        self.codec, self.width, self.height, self.bitrate = codec, width, height, bitrate
        try:
            context = av.CodecContext.create("libx264" if codec == "h264" else "libvpx", "w")
        except av.FFmpegError as exc:
            raise EncodeError(f"cannot open the {codec} encoder: {exc}") from exc
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = VIDEO_TIME_BASE
        context.framerate = Fraction(round(fps * 1000), 1000)
        context.bit_rate = bitrate
        context.thread_count = ENCODER_THREADS
        context.max_b_frames = 0
        # one second of buffer at the layer's rate: CBR-like, as a live SFU layer needs
        rate = {"maxrate": str(bitrate), "bufsize": str(bitrate)}
        if codec == "h264":
            context.options = rate | _x264_options(fps)
        else:
            context.gop_size = max(1, round(fps * KEYFRAME_SECONDS))
            context.options = rate | {"minrate": str(bitrate), "deadline": "realtime",
                                      "cpu-used": "8", "lag-in-frames": "0",
                                      "error-resilient": "1", "static-thresh": "0"}
        self._context = context
        self._reformatter = VideoReformatter()
        self._picture_id = 0
        self.frames = 0

    def scaled(self, picture: av.VideoFrame) -> av.VideoFrame:
        """The picture at this layer's size in yuv420p (itself if it already is).

        Scaling from the next larger layer's picture instead of the source reads a
        quarter of the pixels for each halving: 360p and 180p from a 720p picture
        took 0.49 ms instead of 0.71 (swscale bilinear, measured here)."""
        if (picture.width, picture.height, picture.format.name) == (
                self.width, self.height, "yuv420p"):
            return picture
        # threads=1: in this thread. PyAV's default (0) gives swscale a pool of a
        # thread per core, woken for every picture (~40 wake-ups a second each) for
        # work that takes ~0.2 ms; the session's own threads already use the cores.
        return self._reformatter.reformat(picture, width=self.width, height=self.height,
                                          format="yuv420p",
                                          interpolation=Interpolation.BILINEAR, threads=1)

    def encode(self, picture: av.VideoFrame, timestamp: int,
               keyframe: bool = False) -> list[EncodedFrame]:
        """Frames for one decoded picture (any size and format); ``timestamp`` 90 kHz."""
        picture = self.scaled(picture)
        picture.pts = timestamp
        picture.time_base = VIDEO_TIME_BASE
        picture.pict_type = PictureType.I if keyframe else PictureType.NONE
        try:
            packets = self._context.encode(picture)
        except av.FFmpegError as exc:
            raise EncodeError(f"{self.codec} encoding failed: {exc}") from exc
        return [self._packetize(packet) for packet in packets]

    def _packetize(self, packet: av.Packet) -> EncodedFrame:
        data = bytes(packet)
        if self.codec == "h264":
            payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
        else:
            payloads = Vp8Encoder._packetize(data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
        self.frames += 1
        return EncodedFrame(tuple(payloads), int(packet.pts or 0), packet.is_keyframe,
                            len(data))


def packetize_access_unit(codec: str, data: bytes, timestamp: int, keyframe: bool,
                          picture_id: int = 0) -> EncodedFrame:
    """A publisher's own encoded picture (passthrough: H.264 Annex B or VP8) for RTP."""
    if codec == "h264":
        payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
    else:
        payloads = Vp8Encoder._packetize(data, picture_id)
    return EncodedFrame(tuple(payloads), timestamp, keyframe, len(data))


class OpusEncoder:
    """PCM in any layout and rate -> 20 ms Opus packets at the ingress' bitrate."""

    def __init__(self, channels: int, bitrate: int, dtx: bool) -> None:
        layout = "stereo" if channels == 2 else "mono"
        try:
            context = av.CodecContext.create("libopus", "w")
        except av.FFmpegError as exc:
            raise EncodeError(f"cannot open the Opus encoder: {exc}") from exc
        context.sample_rate = AUDIO_CLOCK
        context.layout = layout
        context.format = "s16"
        context.bit_rate = bitrate
        context.time_base = AUDIO_TIME_BASE
        context.options = {"application": "audio", "frame_duration": "20",
                           "dtx": "1" if dtx else "0"}
        self._context = context
        self._resampler = av.AudioResampler(format="s16", layout=layout, rate=AUDIO_CLOCK)
        self._fifo = av.AudioFifo()
        self._samples = 0

    def encode(self, frame: av.AudioFrame) -> list[tuple[bytes, int]]:
        """``(packet, timestamp 48 kHz)`` for each 20 ms complete so far."""
        out: list[tuple[bytes, int]] = []
        for resampled in self._resampler.resample(frame):
            resampled.pts = None
            self._fifo.write(resampled)
        while self._fifo.samples >= OPUS_FRAME:
            chunk = self._fifo.read(OPUS_FRAME)
            chunk.pts = self._samples
            chunk.time_base = AUDIO_TIME_BASE
            self._samples += OPUS_FRAME
            try:
                packets = self._context.encode(chunk)
            except av.FFmpegError as exc:
                raise EncodeError(f"Opus encoding failed: {exc}") from exc
            out += [(bytes(p), int(p.pts or 0)) for p in packets if p.size]
        return out
