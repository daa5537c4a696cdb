"""FLV tag parsing (legacy FLV 10 and Enhanced RTMP v1/v2), usable on its own.

The same tag bodies travel as RTMP audio/video messages and as FLV file tags, so this
module serves both :class:`rtmp.ServerSession` and :class:`FLVReader` (files, aggregate
messages). Parsers are stateless functions: ``parse_video_tag(body, dts)`` returns a
list of media events (a multitrack tag yields one per track).

Supported: legacy AVC (7) and the widespread non-standard legacy HEVC id (12); E-RTMP
video FourCCs avc1, hvc1, av01, vp09, vp08, vvc1 with SequenceStart, CodedFrames,
CodedFramesX, SequenceEnd, Metadata, MPEG2TSSequenceStart, ModEx (skipped) and
Multitrack (one event per track, ``track_id`` set). Legacy AAC, MP3, G.711 audio;
E-RTMP audio FourCCs mp4a, Opus, .mp3, fLaC, ac-3, ec-3 (multitrack too).
Anything else becomes :class:`UnsupportedMedia`; malformed bodies raise
:class:`RTMPProtocolError`. Lengths are checked before bytes are read; as a safety net,
``parse_video_tag``/``parse_audio_tag`` also turn an ``IndexError`` (reading a body past
its end: a missed check) into :class:`RTMPProtocolError`. Nothing else is caught.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ._amf import amf0_decode_all
from ._errors import RTMPProtocolError
from ._events import (
    AudioConfig,
    AudioFrame,
    AudioSequenceEnd,
    DataMessage,
    MediaEvent,
    Metadata,
    UnsupportedMedia,
    VideoConfig,
    VideoFrame,
    VideoMetadata,
    VideoSequenceEnd,
)

__all__ = [
    "AACConfig",
    "FLVReader",
    "FLVTag",
    "iter_tags",
    "parse_aac_config",
    "parse_audio_tag",
    "parse_tag",
    "parse_video_tag",
    "script_event",
]

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

_VIDEO_FOURCC = {
    b"avc1": "h264",
    b"hvc1": "hevc",
    b"av01": "av1",
    b"vp09": "vp9",
    b"vp08": "vp8",
    b"vvc1": "vvc",
}
_RECORD = {
    "h264": "avcC",
    "hevc": "hvcC",
    "av1": "av1C",
    "vp9": "vpcC",
    "vp8": "vpcC",
    "vvc": "vvcC",
}
_CTS_CODECS = {"h264", "hevc", "vvc"}
_AUDIO_FOURCC = {
    b"mp4a": "aac",
    b"Opus": "opus",
    b".mp3": "mp3",
    b"fLaC": "flac",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
}
_AAC_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
_AAC_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 13: 24, 14: 8}

# packet types (E-RTMP)
_SEQ_START, _CODED, _SEQ_END, _CODED_X, _METADATA, _TS_SEQ_START, _MULTITRACK, _MODEX = range(8)
_AUDIO_MULTICHANNEL_CONFIG = 4
_AUDIO_MULTITRACK = 5
_ONE_TRACK, _MANY_TRACKS, _MANY_TRACKS_MANY_CODECS = 0, 1, 2


class _Bits:
    """MSB-first bit reader that raises RTMPProtocolError when running out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise RTMPProtocolError("truncated codec configuration")
            v = (v << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v


@dataclass(frozen=True)
class AACConfig:
    """The fields of an AudioSpecificConfig that a pipeline needs."""

    object_type: int
    sample_rate: int
    channels: int


def parse_aac_config(asc: bytes) -> AACConfig:
    """Parse an AAC AudioSpecificConfig (ISO 14496-3 1.6.2.1), including SBR/PS forms."""
    bits = _Bits(asc)

    def object_type() -> int:
        aot = bits.read(5)
        return 32 + bits.read(6) if aot == 31 else aot

    def rate() -> int:
        index = bits.read(4)
        if index == 15:
            return bits.read(24)
        if index >= len(_AAC_RATES):
            raise RTMPProtocolError(f"AAC: reserved sampling frequency index {index}")
        return _AAC_RATES[index]

    aot = object_type()
    sample_rate = rate()
    channel_config = bits.read(4)
    if aot in (5, 29):  # explicit SBR / PS: the output rate is the extension rate
        sample_rate = rate()
        object_type()
    return AACConfig(aot, sample_rate, _AAC_CHANNELS.get(channel_config, 0))


def _mp3_info(frame: bytes) -> tuple[int | None, int | None]:
    """Sample rate and channel count from an MPEG audio frame header, if it has one."""
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return None, None
    version = (frame[1] >> 3) & 3
    index = (frame[2] >> 2) & 3
    if version == 1 or index == 3:
        return None, None
    base = (44100, 48000, 32000)[index]
    rate = {3: base, 2: base // 2, 0: base // 4}[version]
    return rate, 1 if (frame[3] >> 6) == 3 else 2


def _si24(b: bytes, off: int) -> int:
    v = (b[off] << 16) | (b[off + 1] << 8) | b[off + 2]
    return v - (1 << 24) if v & 0x800000 else v


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise RTMPProtocolError(f"truncated {what}")


def _nal_arrays_avc(rec: bytes) -> tuple[int, int, int, tuple[bytes, ...]]:
    """profile, level, NAL length size and SPS/PPS of an AVCDecoderConfigurationRecord."""
    _need(rec, 7, "avcC")
    if rec[0] != 1:
        raise RTMPProtocolError(f"avcC: unknown version {rec[0]}")
    profile, level = rec[1], rec[3]
    nal_len = (rec[4] & 3) + 1
    sets: list[bytes] = []
    pos = 5
    for count_mask in (0x1F, 0xFF):
        _need(rec, pos + 1, "avcC")
        count = rec[pos] & count_mask
        pos += 1
        for _ in range(count):
            _need(rec, pos + 2, "avcC")
            n = (rec[pos] << 8) | rec[pos + 1]
            _need(rec, pos + 2 + n, "avcC")
            sets.append(bytes(rec[pos + 2 : pos + 2 + n]))
            pos += 2 + n
    return profile, level, nal_len, tuple(sets)


def _nal_arrays_hevc(rec: bytes) -> tuple[int, int, int, tuple[bytes, ...]]:
    """profile, level, NAL length size and VPS/SPS/PPS of an HEVCDecoderConfigurationRecord."""
    _need(rec, 23, "hvcC")
    profile = rec[1] & 0x1F
    level = rec[12]
    nal_len = (rec[21] & 3) + 1
    sets: list[bytes] = []
    pos = 23
    for _ in range(rec[22]):
        _need(rec, pos + 3, "hvcC")
        count = (rec[pos + 1] << 8) | rec[pos + 2]
        pos += 3
        for _ in range(count):
            _need(rec, pos + 2, "hvcC")
            n = (rec[pos] << 8) | rec[pos + 1]
            _need(rec, pos + 2 + n, "hvcC")
            sets.append(bytes(rec[pos + 2 : pos + 2 + n]))
            pos += 2 + n
    return profile, level, nal_len, tuple(sets)


def _video_config(
    codec: str, record: bytes, dts: int, cts: int, track: int, sid: int, record_type: str
) -> VideoConfig:
    profile = level = nal_len = None
    sets: tuple[bytes, ...] = ()
    if record_type == "avcC":
        profile, level, nal_len, sets = _nal_arrays_avc(record)
    elif record_type == "hvcC":
        profile, level, nal_len, sets = _nal_arrays_hevc(record)
    elif record_type == "av1C":
        _need(record, 4, "av1C")
        if record[0] & 0x80 == 0:
            raise RTMPProtocolError("av1C: marker bit not set")
        profile, level = record[1] >> 5, record[1] & 0x1F
    elif record_type == "vpcC":
        _need(record, 6, "vpcC")
        profile, level = record[4], record[5]
    return VideoConfig(
        codec, bytes(record), dts, dts + cts, record_type, profile, level, nal_len, sets, track, sid
    )


def _legacy_video(body: bytes, dts: int, sid: int) -> list[MediaEvent]:
    frame_type = body[0] >> 4
    codec_id = body[0] & 0x0F
    if frame_type == 5:
        return []  # video info / command frame: no picture
    if codec_id == 7:
        codec, rtype = "h264", "avcC"
    elif codec_id == 12:
        codec, rtype = "hevc", "hvcC"
    else:
        return [UnsupportedMedia("video", f"flv-video-{codec_id}", dts, 0, sid)]
    _need(body, 5, "AVC video tag")
    packet_type = body[1]
    cts = _si24(body, 2)
    payload = body[5:]
    if packet_type == 0:
        return [_video_config(codec, payload, dts, cts, 0, sid, rtype)]
    if packet_type == 1:
        return [VideoFrame(codec, dts, dts + cts, frame_type == 1, bytes(payload), 0, sid)]
    if packet_type == 2:
        return [VideoSequenceEnd(codec, dts, 0, sid)]
    raise RTMPProtocolError(f"unknown AVC packet type {packet_type}")


def _skip_modex(body: bytes, pos: int, packet_type: int) -> tuple[int, int]:
    """Skip ModEx blocks (E-RTMP v2); return the real packet type and new offset."""
    while packet_type == _MODEX:
        _need(body, pos + 1, "ModEx")
        size = body[pos] + 1
        pos += 1
        if size == 256:
            _need(body, pos + 2, "ModEx")
            size = ((body[pos] << 8) | body[pos + 1]) + 1
            pos += 2
        _need(body, pos + size + 1, "ModEx")
        pos += size
        packet_type = body[pos] & 0x0F
        pos += 1
    return packet_type, pos


def _tracks(
    body: bytes, pos: int, packet_type: int, kind: str
) -> tuple[int, list[tuple[bytes, int, bytes]]]:
    """Split a (possibly multitrack) E-RTMP body into ``(fourcc, track_id, payload)``."""
    if packet_type != (_MULTITRACK if kind == "video" else _AUDIO_MULTITRACK):
        _need(body, pos + 4, f"{kind} FourCC")
        return packet_type, [(bytes(body[pos : pos + 4]), 0, bytes(body[pos + 4 :]))]
    _need(body, pos + 1, f"{kind} multitrack header")
    mt_type = body[pos] >> 4
    packet_type = body[pos] & 0x0F
    pos += 1
    if packet_type == (_MULTITRACK if kind == "video" else _AUDIO_MULTITRACK):
        raise RTMPProtocolError(f"{kind} multitrack packet nested in multitrack")
    if mt_type > _MANY_TRACKS_MANY_CODECS:
        raise RTMPProtocolError(f"unknown {kind} multitrack type {mt_type}")
    fourcc = b""
    if mt_type != _MANY_TRACKS_MANY_CODECS:
        _need(body, pos + 4, f"{kind} FourCC")
        fourcc = bytes(body[pos : pos + 4])
        pos += 4
    out: list[tuple[bytes, int, bytes]] = []
    while True:
        if mt_type == _MANY_TRACKS_MANY_CODECS:
            _need(body, pos + 4, f"{kind} FourCC")
            fourcc = bytes(body[pos : pos + 4])
            pos += 4
        _need(body, pos + 1, f"{kind} track id")
        track = body[pos]
        pos += 1
        if mt_type == _ONE_TRACK:
            out.append((fourcc, track, bytes(body[pos:])))
            return packet_type, out
        _need(body, pos + 3, f"{kind} track size")
        size = (body[pos] << 16) | (body[pos + 1] << 8) | body[pos + 2]
        pos += 3
        _need(body, pos + size, f"{kind} track")
        out.append((fourcc, track, bytes(body[pos : pos + size])))
        pos += size
        if pos >= len(body):
            return packet_type, out


def _enhanced_video(body: bytes, dts: int, sid: int) -> list[MediaEvent]:
    frame_type = (body[0] >> 4) & 0x07
    packet_type, pos = _skip_modex(body, 1, body[0] & 0x0F)
    if frame_type == 5 and packet_type != _METADATA:
        return []  # video command (e.g. seek start/end): no picture
    packet_type, tracks = _tracks(body, pos, packet_type, "video")
    out: list[MediaEvent] = []
    for fourcc, track, data in tracks:
        codec = _VIDEO_FOURCC.get(fourcc)
        if codec is None:
            out.append(UnsupportedMedia("video", fourcc.decode("latin-1"), dts, track, sid))
            continue
        if packet_type == _SEQ_START:
            out.append(_video_config(codec, data, dts, 0, track, sid, _RECORD[codec]))
        elif packet_type == _TS_SEQ_START:
            out.append(_video_config(codec, data, dts, 0, track, sid, f"{codec}-mpeg2ts"))
        elif packet_type == _SEQ_END:
            out.append(VideoSequenceEnd(codec, dts, track, sid))
        elif packet_type == _METADATA:
            out.append(VideoMetadata(codec, dts, tuple(amf0_decode_all(data)), track, sid))
        elif packet_type in (_CODED, _CODED_X):
            cts = 0
            if packet_type == _CODED and codec in _CTS_CODECS:
                _need(data, 3, "composition time")
                cts = _si24(data, 0)
                data = data[3:]
            out.append(VideoFrame(codec, dts, dts + cts, frame_type == 1, data, track, sid))
        else:
            raise RTMPProtocolError(f"unknown video packet type {packet_type}")
    return out


def parse_video_tag(body: bytes, dts: int, *, stream_id: int = 0) -> list[MediaEvent]:
    """Parse an FLV/RTMP video tag body received at ``dts`` (ms) into media events."""
    if not body:
        return []
    try:
        if body[0] & 0x80:
            return _enhanced_video(body, dts, stream_id)
        return _legacy_video(body, dts, stream_id)
    except IndexError as exc:  # pragma: no cover - a missed length check (fuzz finding)
        raise RTMPProtocolError(f"malformed video tag ({exc})") from None


def _audio_config(codec: str, data: bytes, dts: int, track: int, sid: int) -> AudioConfig:
    if codec == "aac":
        cfg = parse_aac_config(data)
        return AudioConfig(
            codec, bytes(data), dts, cfg.sample_rate, cfg.channels, cfg.object_type, track, sid
        )
    if codec == "opus":
        # OpusHead (RFC 7845 5.1); Opus always decodes at 48 kHz. An empty head means
        # mono/stereo per the spec: report 2 channels.
        channels = data[9] if len(data) >= 19 and data[:8] == b"OpusHead" else 2
        return AudioConfig(codec, bytes(data), dts, 48000, channels, None, track, sid)
    if codec == "flac" and len(data) >= 8 + 18 and data[:4] == b"fLaC":
        info = data[8:]
        rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
        return AudioConfig(
            codec, bytes(data), dts, rate, ((info[12] >> 1) & 7) + 1, None, track, sid
        )
    return AudioConfig(codec, bytes(data), dts, 0, 0, None, track, sid)


def _enhanced_audio(body: bytes, dts: int, sid: int) -> list[MediaEvent]:
    packet_type, pos = _skip_modex(body, 1, body[0] & 0x0F)
    packet_type, tracks = _tracks(body, pos, packet_type, "audio")
    out: list[MediaEvent] = []
    for fourcc, track, data in tracks:
        codec = _AUDIO_FOURCC.get(fourcc)
        if codec is None:
            out.append(UnsupportedMedia("audio", fourcc.decode("latin-1"), dts, track, sid))
        elif packet_type == _SEQ_START:
            out.append(_audio_config(codec, data, dts, track, sid))
        elif packet_type == _CODED:
            rate, channels = _mp3_info(data) if codec == "mp3" else (None, None)
            out.append(AudioFrame(codec, dts, data, rate, channels, track, sid))
        elif packet_type == _SEQ_END:
            out.append(AudioSequenceEnd(codec, dts, track, sid))
        elif packet_type == _AUDIO_MULTICHANNEL_CONFIG:
            continue  # channel layout only; codec configs carry the channel count
        else:
            raise RTMPProtocolError(f"unknown audio packet type {packet_type}")
    return out


def parse_audio_tag(body: bytes, dts: int, *, stream_id: int = 0) -> list[MediaEvent]:
    """Parse an FLV/RTMP audio tag body received at ``dts`` (ms) into media events.

    An empty body is the legacy "silence" message and yields nothing.
    """
    if not body:
        return []
    fmt = body[0] >> 4
    try:
        if fmt == 9:
            return _enhanced_audio(body, dts, stream_id)
        if fmt == 10:
            _need(body, 2, "AAC audio tag")
            if body[1] == 0:
                return [_audio_config("aac", body[2:], dts, 0, stream_id)]
            if body[1] == 1:
                return [AudioFrame("aac", dts, bytes(body[2:]), None, None, 0, stream_id)]
            raise RTMPProtocolError(f"unknown AAC packet type {body[1]}")
        if fmt in (2, 14):
            data = bytes(body[1:])
            rate, channels = _mp3_info(data)
            if rate is None:
                rate, channels = (8000 if fmt == 14 else None), None
            return [AudioFrame("mp3", dts, data, rate, channels, 0, stream_id)]
        if fmt in (7, 8):
            channels = 2 if body[0] & 1 else 1
            codec = "pcma" if fmt == 7 else "pcmu"
            return [AudioFrame(codec, dts, bytes(body[1:]), 8000, channels, 0, stream_id)]
        return [UnsupportedMedia("audio", f"flv-audio-{fmt}", dts, 0, stream_id)]
    except IndexError as exc:  # pragma: no cover - a missed length check (fuzz finding)
        raise RTMPProtocolError(f"malformed audio tag ({exc})") from None


# -- FLV tags (files and aggregate messages) -----------------------------------------------


@dataclass(frozen=True)
class FLVTag:
    """One FLV tag: type 8 audio, 9 video, 18 script data; ``timestamp`` in ms (64-bit)."""

    tag_type: int
    timestamp: int
    stream_id: int
    data: bytes


def iter_tags(data: bytes, *, max_tags: int | None = None) -> list[FLVTag]:
    """Split a run of FLV tags (each followed by its 4-byte size), as in aggregate messages.

    Timestamps are the raw 32-bit tag timestamps (callers rebase them). More than
    ``max_tags`` tags is a protocol error: the work per message stays bounded however
    small the tags are (empty tags cost a loop each and yield nothing).
    """
    out: list[FLVTag] = []
    pos = 0
    n = len(data)
    while pos < n:
        if max_tags is not None and len(out) >= max_tags:
            raise RTMPProtocolError(f"aggregate message of more than {max_tags} tags")
        if pos + 11 > n:
            raise RTMPProtocolError("truncated FLV tag header")
        tag_type = data[pos] & 0x1F
        size = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
        ts = (data[pos + 7] << 24) | (data[pos + 4] << 16) | (data[pos + 5] << 8) | data[pos + 6]
        sid = (data[pos + 8] << 16) | (data[pos + 9] << 8) | data[pos + 10]
        pos += 11
        if pos + size > n:
            raise RTMPProtocolError("truncated FLV tag body")
        out.append(FLVTag(tag_type, ts, sid, bytes(data[pos : pos + size])))
        pos += size + 4  # back pointer (not trusted)
    return out


class FLVReader:
    """Incremental FLV file reader: ``feed(bytes)`` then ``next_tag()`` until None.

    Timestamps are extended to 64 bits like RTMP ones. ``max_tag_size`` bounds memory.
    """

    def __init__(self, *, max_tag_size: int = 16 * 1024 * 1024) -> None:
        self.max_tag_size = max_tag_size
        self.has_audio = False
        self.has_video = False
        self._buf = bytearray()
        self._header_done = False
        self._clock: int | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_tag(self) -> FLVTag | None:
        buf = self._buf
        if not self._header_done:
            if len(buf) < 9:
                return None
            if buf[:3] != b"FLV":
                raise RTMPProtocolError("not an FLV file")
            offset = struct.unpack_from(">I", buf, 5)[0]
            if offset < 9 or offset > 1024:
                raise RTMPProtocolError("bad FLV header size")
            if len(buf) < offset + 4:
                return None
            self.has_audio = bool(buf[4] & 4)
            self.has_video = bool(buf[4] & 1)
            del buf[: offset + 4]
            self._header_done = True
        if len(buf) < 11:
            return None
        size = (buf[1] << 16) | (buf[2] << 8) | buf[3]
        if size > self.max_tag_size:
            raise RTMPProtocolError("FLV tag above the size cap")
        if len(buf) < 11 + size + 4:
            return None
        (tag,) = iter_tags(bytes(buf[: 11 + size + 4]))
        del buf[: 11 + size + 4]
        t32 = tag.timestamp
        if self._clock is None:
            ts = t32
        else:
            diff = (t32 - self._clock) & 0xFFFFFFFF
            ts = self._clock + (diff - (1 << 32) if diff >= 1 << 31 else diff)
        self._clock = ts
        return FLVTag(tag.tag_type, ts, tag.stream_id, tag.data)


def script_event(values: list[Any], timestamp: int, stream_id: int = 0) -> Metadata | DataMessage:
    """Turn a decoded data message / script tag into :class:`Metadata` or :class:`DataMessage`.

    ``@setDataFrame`` (the RTMP wrapper FFmpeg/OBS use) is unwrapped.
    """
    name = values[0] if values and isinstance(values[0], str) else ""
    args = list(values[1:])
    if name == "@setDataFrame" and args and isinstance(args[0], str):
        name = args.pop(0)
    if name == "onMetaData":
        first = args[0] if args else None
        props = first if isinstance(first, dict) else {}
        return Metadata(timestamp, props, stream_id)
    return DataMessage(timestamp, name, tuple(args), stream_id)


def parse_tag(
    tag: FLVTag, *, stream_id: int = 0, max_depth: int = 32, max_nodes: int = 20_000
) -> list[MediaEvent | Metadata | DataMessage]:
    """Parse any FLV tag (file or aggregate sub-message) into events."""
    if tag.tag_type == TAG_VIDEO:
        return list(parse_video_tag(tag.data, tag.timestamp, stream_id=stream_id))
    if tag.tag_type == TAG_AUDIO:
        return list(parse_audio_tag(tag.data, tag.timestamp, stream_id=stream_id))
    if tag.tag_type == TAG_SCRIPT:
        values = amf0_decode_all(tag.data, max_depth=max_depth, max_nodes=max_nodes)
        # an empty script tag carries nothing, as the session drops an empty data message
        return [script_event(values, tag.timestamp, stream_id)] if values else []
    return []
