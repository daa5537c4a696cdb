"""FLV tag parsing: legacy AVC/HEVC/AAC/MP3/G.711, Enhanced RTMP video/audio, files."""

from __future__ import annotations

import struct

import pytest

import rtmp
from rtmp import (
    AudioConfig,
    AudioFrame,
    AudioSequenceEnd,
    FLVReader,
    RTMPProtocolError,
    UnsupportedMedia,
    VideoConfig,
    VideoFrame,
    VideoMetadata,
    VideoSequenceEnd,
    parse_aac_config,
    parse_audio_tag,
    parse_video_tag,
)

SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030300f183119600")
PPS = bytes.fromhex("68ebe3cb22c0")
AVCC = (
    bytes([1, 0x64, 0x00, 0x1F, 0xFF, 0xE1])
    + struct.pack(">H", len(SPS))
    + SPS
    + b"\x01"
    + struct.pack(">H", len(PPS))
    + PPS
)
VPS = b"\x40\x01\x0c\x01"
HVCC = (
    bytes([1, 0x01])
    + bytes(10)
    + bytes([93])
    + bytes(8)
    + bytes([0x0F, 2])
    + bytes([0x20])
    + struct.pack(">HH", 1, len(VPS))
    + VPS
    + bytes([0x21])
    + struct.pack(">HH", 1, len(SPS))
    + SPS
)
AV1C = bytes([0x81, 0x08, 0x0C, 0x00])
VPCC = bytes([1, 0, 0, 0, 0, 31, 0x80, 1, 1, 1, 0, 0])
OPUS_HEAD = b"OpusHead" + bytes([1, 6]) + struct.pack("<HIhB", 312, 48000, 0, 1) + bytes(8)
NALU = struct.pack(">I", 3) + b"\x65\x88\x84"


def si24(v: int) -> bytes:
    return (v & 0xFFFFFF).to_bytes(3, "big")


def ex_video(frame_type: int, packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    return bytes([0x80 | (frame_type << 4) | packet_type]) + fourcc + body


# -- legacy video ---------------------------------------------------------------------------


def test_legacy_avc_sequence_header() -> None:
    (ev,) = parse_video_tag(b"\x17\x00" + si24(0) + AVCC, 100, stream_id=1)
    assert ev == VideoConfig("h264", AVCC, 100, 100, "avcC", 100, 31, 4, (SPS, PPS), 0, 1)


def test_legacy_avc_frames_and_signed_composition_time() -> None:
    (key,) = parse_video_tag(b"\x17\x01" + si24(66) + NALU, 1000)
    assert key == VideoFrame("h264", 1000, 1066, True, NALU)
    (inter,) = parse_video_tag(b"\x27\x01" + si24(-33) + NALU, 1033)
    assert (inter.keyframe, inter.pts, inter.dts) == (False, 1000, 1033)


def test_legacy_avc_end_of_sequence_and_command_frame() -> None:
    assert parse_video_tag(b"\x17\x02" + si24(0), 5) == [VideoSequenceEnd("h264", 5)]
    assert parse_video_tag(b"\x57\x00", 5) == []  # video info/command frame
    assert parse_video_tag(b"", 5) == []


def test_legacy_hevc_codec_id_12() -> None:
    (cfg,) = parse_video_tag(b"\x1c\x00" + si24(0) + HVCC, 0)
    assert (cfg.codec, cfg.record_type, cfg.profile, cfg.level) == ("hevc", "hvcC", 1, 93)
    assert cfg.parameter_sets == (VPS, SPS) and cfg.nal_length_size == 4


@pytest.mark.parametrize("codec_id", [2, 3, 4, 5, 6])
def test_legacy_other_video_codecs_unsupported(codec_id: int) -> None:
    assert parse_video_tag(bytes([0x10 | codec_id, 0, 0]), 7) == [
        UnsupportedMedia("video", f"flv-video-{codec_id}", 7)
    ]


@pytest.mark.parametrize(
    "body", [b"\x17", b"\x17\x00\x00", b"\x17\x00" + si24(0) + b"\x01\x64", b"\x17\x07" + si24(0)]
)
def test_legacy_avc_malformed(body: bytes) -> None:
    with pytest.raises(RTMPProtocolError):
        parse_video_tag(body, 0)


# -- enhanced video ----------------------------------------------------------------------------


def test_enhanced_hevc_all_packet_types() -> None:
    (cfg,) = parse_video_tag(ex_video(1, 0, b"hvc1", HVCC), 0)
    assert (cfg.codec, cfg.record_type, cfg.parameter_sets) == ("hevc", "hvcC", (VPS, SPS))
    (f1,) = parse_video_tag(ex_video(1, 1, b"hvc1", si24(40) + NALU), 100)
    assert f1 == VideoFrame("hevc", 100, 140, True, NALU)
    (fx,) = parse_video_tag(ex_video(2, 3, b"hvc1", NALU), 133)
    assert fx == VideoFrame("hevc", 133, 133, False, NALU)
    assert parse_video_tag(ex_video(1, 2, b"hvc1", b""), 200) == [VideoSequenceEnd("hevc", 200)]
    meta = rtmp.amf0_encode("colorInfo", {"colorConfig": {"bitDepth": 10.0}})
    (md,) = parse_video_tag(ex_video(1, 4, b"hvc1", meta), 0)
    assert md == VideoMetadata("hevc", 0, ("colorInfo", {"colorConfig": {"bitDepth": 10.0}}))


def test_enhanced_av1_vp9_avc() -> None:
    (av1,) = parse_video_tag(ex_video(1, 0, b"av01", AV1C), 0)
    assert (av1.codec, av1.record_type, av1.profile, av1.level) == ("av1", "av1C", 0, 8)
    (ts,) = parse_video_tag(ex_video(1, 5, b"av01", b"\x80\x01"), 0)
    assert (ts.codec, ts.record_type) == ("av1", "av1-mpeg2ts")
    (frame,) = parse_video_tag(ex_video(1, 1, b"av01", b"\x12\x00\x0a"), 33)
    assert frame == VideoFrame("av1", 33, 33, True, b"\x12\x00\x0a")  # no composition time
    (vp9,) = parse_video_tag(ex_video(1, 0, b"vp09", VPCC), 0)
    assert (vp9.codec, vp9.record_type, vp9.level) == ("vp9", "vpcC", 31)
    (avc,) = parse_video_tag(ex_video(1, 0, b"avc1", AVCC), 0)
    assert avc.parameter_sets == (SPS, PPS)
    (avcf,) = parse_video_tag(ex_video(2, 1, b"avc1", si24(-10) + NALU), 50)
    assert (avcf.pts, avcf.keyframe) == (40, False)


def test_enhanced_modex_is_skipped() -> None:
    # ModEx (7) with 3 bytes of TimestampOffsetNano, then CodedFramesX (3)
    body = bytes([0x80 | 0x10 | 7, 2, 0, 0, 5, 0x03]) + b"hvc1" + NALU
    (f,) = parse_video_tag(body, 10)
    assert f == VideoFrame("hevc", 10, 10, True, NALU)


def test_enhanced_video_command_frame_has_no_picture() -> None:
    assert parse_video_tag(bytes([0x80 | 0x50 | 1, 0]), 0) == []


def test_enhanced_unknown_fourcc_and_packet_type() -> None:
    assert parse_video_tag(ex_video(1, 1, b"xyz1", b""), 3) == [
        UnsupportedMedia("video", "xyz1", 3)
    ]
    with pytest.raises(RTMPProtocolError):
        parse_video_tag(ex_video(1, 9, b"hvc1", b""), 0)


def test_multitrack_one_track() -> None:
    body = bytes([0x80 | 0x10 | 6, (0 << 4) | 3]) + b"hvc1" + b"\x02" + NALU
    assert parse_video_tag(body, 0) == [VideoFrame("hevc", 0, 0, True, NALU, track_id=2)]


def test_multitrack_many_tracks_same_codec() -> None:
    t0 = si24(0) + NALU
    t1 = si24(33) + NALU + b"\x00"
    body = (
        bytes([0x80 | 0x10 | 6, (1 << 4) | 1])
        + b"avc1"
        + b"\x00"
        + len(t0).to_bytes(3, "big")
        + t0
        + b"\x01"
        + len(t1).to_bytes(3, "big")
        + t1
    )
    assert parse_video_tag(body, 0) == [
        VideoFrame("h264", 0, 0, True, NALU, track_id=0),
        VideoFrame("h264", 0, 33, True, NALU + b"\x00", track_id=1),
    ]


def test_multitrack_many_codecs() -> None:
    body = (
        bytes([0x80 | 0x10 | 6, (2 << 4) | 0])
        + b"hvc1"
        + b"\x00"
        + len(HVCC).to_bytes(3, "big")
        + HVCC
        + b"av01"
        + b"\x01"
        + len(AV1C).to_bytes(3, "big")
        + AV1C
    )
    evs = parse_video_tag(body, 0)
    assert [(e.codec, e.track_id) for e in evs] == [("hevc", 0), ("av1", 1)]


@pytest.mark.parametrize(
    "body",
    [
        bytes([0x80 | 0x10 | 6, (0 << 4) | 6]) + b"hvc1\x00",  # nested multitrack
        bytes([0x80 | 0x10 | 6, (5 << 4) | 1]) + b"hvc1\x00",  # unknown multitrack type
        bytes([0x80 | 0x10 | 6, (1 << 4) | 1]) + b"hvc1\x00\x00\x00\x09ab",  # short track
        bytes([0x80 | 0x10 | 1]) + b"hv",  # truncated FourCC
        bytes([0x80 | 0x10 | 7, 255]),  # truncated ModEx
    ],
)
def test_enhanced_malformed(body: bytes) -> None:
    with pytest.raises(RTMPProtocolError):
        parse_video_tag(body, 0)


# -- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asc", "expected"),
    [
        (bytes([0x12, 0x10]), (2, 44100, 2)),  # AAC-LC 44.1k stereo
        (bytes([0x11, 0x88]), (2, 48000, 1)),
        (bytes([0x13, 0x90]), (2, 22050, 2)),
        (bytes([0x2B, 0x92, 0x08, 0x00]), (5, 44100, 2)),  # HE-AAC explicit SBR 22.05 -> 44.1
        (bytes([0x17, 0x80, 0x3E, 0x80, 0x10]), (2, 32000, 2)),  # explicit 24-bit rate
        (bytes([0xF8, 0x26, 0x20]), (33, 48000, 1)),  # escaped object type (31 + 6 bits)
        (bytes([0x11, 0xB8]), (2, 48000, 8)),  # channel config 7 = 7.1
    ],
)
def test_aac_audio_specific_config(asc: bytes, expected: tuple[int, int, int]) -> None:
    cfg = parse_aac_config(asc)
    assert (cfg.object_type, cfg.sample_rate, cfg.channels) == expected


@pytest.mark.parametrize("asc", [b"", b"\x12", bytes([0x16, 0x80])])
def test_aac_bad_config(asc: bytes) -> None:
    with pytest.raises(RTMPProtocolError):
        parse_aac_config(asc)


def test_legacy_aac_tags() -> None:
    (cfg,) = parse_audio_tag(b"\xaf\x00\x12\x10", 0, stream_id=1)
    assert cfg == AudioConfig("aac", b"\x12\x10", 0, 44100, 2, 2, 0, 1)
    (fr,) = parse_audio_tag(b"\xaf\x01\x21\x00", 23)
    assert fr == AudioFrame("aac", 23, b"\x21\x00")
    assert parse_audio_tag(b"", 0) == []  # legacy silence message
    with pytest.raises(RTMPProtocolError):
        parse_audio_tag(b"\xaf\x05", 0)


def test_legacy_mp3_and_g711() -> None:
    mp3 = b"\xff\xfb\x94\x64" + bytes(10)  # MPEG-1 layer 3, 48 kHz, joint stereo
    (fr,) = parse_audio_tag(b"\x2f" + mp3, 0)
    assert (fr.codec, fr.sample_rate, fr.channels, fr.data) == ("mp3", 48000, 2, mp3)
    (mono,) = parse_audio_tag(b"\x2f\xff\xf3\x44\xc4" + bytes(4), 0)  # MPEG-2, 22.05k? mono
    assert (mono.sample_rate, mono.channels) == (24000, 1)
    (alaw,) = parse_audio_tag(b"\x72\x01\x02", 0)
    assert (alaw.codec, alaw.sample_rate, alaw.channels) == ("pcma", 8000, 1)
    (ulaw,) = parse_audio_tag(b"\x83\x01", 0)
    assert (ulaw.codec, ulaw.channels) == ("pcmu", 2)


@pytest.mark.parametrize("fmt", [0, 1, 3, 4, 5, 6, 11, 15])
def test_legacy_audio_unsupported(fmt: int) -> None:
    assert parse_audio_tag(bytes([fmt << 4, 0]), 1) == [
        UnsupportedMedia("audio", f"flv-audio-{fmt}", 1)
    ]


def test_enhanced_audio() -> None:
    (opus,) = parse_audio_tag(b"\x90Opus" + OPUS_HEAD, 0)
    assert (opus.codec, opus.sample_rate, opus.channels) == ("opus", 48000, 6)
    (frame,) = parse_audio_tag(b"\x91Opus\xfc\x01", 20)
    assert frame == AudioFrame("opus", 20, b"\xfc\x01")
    (aac,) = parse_audio_tag(b"\x90mp4a\x11\x90", 0)
    assert (aac.codec, aac.sample_rate, aac.channels, aac.object_type) == ("aac", 48000, 2, 2)
    assert parse_audio_tag(b"\x92Opus", 9) == [AudioSequenceEnd("opus", 9)]
    assert parse_audio_tag(b"\x94Opus\x01\x02\x00\x00\x00\x03", 0) == []  # multichannel cfg
    (flac,) = parse_audio_tag(
        b"\x90fLaC"
        + b"fLaC"
        + b"\x80\x00\x00\x22"
        + bytes(10)
        + bytes([0x0A, 0xC4, 0x42, 0xF0])
        + bytes(4),
        0,
    )
    assert (flac.codec, flac.sample_rate, flac.channels) == ("flac", 44100, 2)
    (ac3,) = parse_audio_tag(b"\x90ac-3", 0)
    assert (ac3.codec, ac3.sample_rate) == ("ac3", 0)
    assert parse_audio_tag(b"\x91zzzz", 0) == [UnsupportedMedia("audio", "zzzz", 0)]


def test_enhanced_audio_multitrack_and_modex() -> None:
    t0, t1 = b"\x01\x02", b"\x03"
    body = (
        bytes([0x95, (1 << 4) | 1])
        + b"Opus"
        + b"\x00"
        + len(t0).to_bytes(3, "big")
        + t0
        + b"\x05"
        + len(t1).to_bytes(3, "big")
        + t1
    )
    assert parse_audio_tag(body, 0) == [
        AudioFrame("opus", 0, t0, track_id=0),
        AudioFrame("opus", 0, t1, track_id=5),
    ]
    modex = bytes([0x97, 2, 0, 0, 1, 0x01]) + b"Opus\xaa"
    assert parse_audio_tag(modex, 0) == [AudioFrame("opus", 0, b"\xaa")]


# -- FLV files -----------------------------------------------------------------------------


def flv_tag(tag_type: int, ts: int, body: bytes) -> bytes:
    head = bytes([tag_type]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
    head += bytes([(ts >> 24) & 0xFF]) + b"\x00\x00\x00"
    return head + body + struct.pack(">I", 11 + len(body))


def test_flv_reader_file_incremental_with_wrap() -> None:
    meta = rtmp.amf0_encode("onMetaData", rtmp.ECMAArray(width=320.0))
    data = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    data += flv_tag(18, 0xC0000000, meta)
    data += flv_tag(9, 0xC0000000, b"\x17\x00" + si24(0) + AVCC)
    data += flv_tag(9, 0xFFFFFFF0, b"\x17\x01" + si24(0) + NALU)
    data += flv_tag(9, 0x10, b"\x27\x01" + si24(0) + NALU)
    data += flv_tag(8, 0x20, b"\xaf\x01\x21")
    for step in (1, 5, len(data)):
        reader = FLVReader()
        events = []
        for i in range(0, len(data), step):
            reader.feed(data[i : i + step])
            while (tag := reader.next_tag()) is not None:
                events.extend(rtmp.parse_tag(tag))
        assert reader.has_audio and reader.has_video
        assert events[0] == rtmp.Metadata(0xC0000000, {"width": 320.0})
        assert isinstance(events[1], VideoConfig)
        assert [e.dts for e in events[2:]] == [0xFFFFFFF0, 0x100000010, 0x100000020]


def test_flv_reader_rejects_garbage_and_huge_tags() -> None:
    reader = FLVReader()
    reader.feed(b"NOTFLV\x00\x00\x00\x09")
    with pytest.raises(RTMPProtocolError):
        reader.next_tag()
    reader = FLVReader(max_tag_size=100)
    reader.feed(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00" + flv_tag(9, 0, bytes(101)))
    with pytest.raises(RTMPProtocolError):
        reader.next_tag()


def test_empty_script_tag_yields_nothing_like_the_session() -> None:
    # found by fuzz/fuzz_flv.py: parse_tag gave DataMessage('') where a live RTMP
    # publish (ServerSession) drops the empty data message; the boundary must agree
    assert rtmp.parse_tag(rtmp.FLVTag(18, 5, 0, b"")) == []
