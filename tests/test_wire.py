"""Front <-> worker framing: round trips, any split, and bounded garbage handling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rtmp
from relay import wire
from relay.wire import EndOfStream, MessageReader, Start, StateReport, WireError, encode

MESSAGES = [
    Start("ws://127.0.0.1:7880", "jwt", b"\x0a\x03IN_", transcode=False),
    Start("ws://127.0.0.1:7880", "jwt", b"", offer="v=0\r\n", host_addresses=("127.0.0.1",),
          ice_ports=(50000, 50099)),
    Start("ws://127.0.0.1:7880", "jwt", b"", url="https://media.example/show.m3u8"),
    Start("ws://127.0.0.1:7880", "jwt", b"", url="http://127.0.0.1/a.mp4",
          allow_private_addresses=True),
    wire.WhipAnswer("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
    wire.RemoteCandidates((("0", "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"),),
                          end=True),
    wire.IceRestart("Ab12", "pwd-of-twenty-two-chars", (("0", "candidate:2 1 udp 1 ::1 9 "
                                                          "typ host"),)),
    wire.IceCredentials("cd34ef56", "0123456789abcdef0123456789abcdef"),
    wire.IceCredentials("", "", error="no ICE transport"),
    rtmp.VideoConfig(codec="h264", config=b"\x01\x42", dts=0, pts=0, record_type="avcC"),
    rtmp.VideoConfig(codec="h264", config=b"\x01\x42", dts=0, pts=0, record_type="avcC",
                     nal_length_size=4, parameter_sets=(b"\x67\x42", b"\x68\xce")),
    rtmp.VideoFrame(codec="h264", dts=33, pts=66, keyframe=True, data=b"\x00\x00\x00\x01\x65"),
    rtmp.AudioConfig(codec="aac", config=b"\x12\x10", dts=0, sample_rate=44100, channels=2),
    rtmp.AudioFrame(codec="aac", dts=23, data=b"\x21\x00"),
    rtmp.AudioFrame(codec="mp3", dts=2**40, data=b"\xff\xfb", sample_rate=44100, channels=1),
    StateReport("publishing", room_id="RM_1", tracks=(b"\x0a\x01x",),
                video={"width": 1280, "height": 720, "framerate": 30.0},
                drops={"video_lag": 3}),
    EndOfStream("source ended"),
    EndOfStream("ingress deleted", drain=False),
]


def test_round_trip() -> None:
    reader = MessageReader()
    reader.receive_data(b"".join(encode(m) for m in MESSAGES))
    assert list(reader) == MESSAGES


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
def test_any_split_gives_the_same_messages(sizes: list[int]) -> None:
    data = b"".join(encode(m) for m in MESSAGES)
    reader = MessageReader()
    got = []
    pos = 0
    for size in sizes * (len(data) // sum(sizes) + 1):
        reader.receive_data(data[pos:pos + size])
        pos += size
        got += list(reader)
        if pos >= len(data):
            break
    assert got == MESSAGES


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x93\x01\x02\x03", b"\x92\xa2zz\x01",
                                     b"\x91\xa1v"])
def test_garbage_is_a_wire_error(garbage: bytes) -> None:
    reader = MessageReader()
    reader.receive_data(garbage)
    with pytest.raises(WireError):
        list(reader)


def test_buffer_is_bounded() -> None:
    reader = MessageReader(max_message_bytes=1024)
    with pytest.raises(WireError):
        reader.receive_data(b"\xc6\x00\x10\x00\x00" + b"x" * 4096)
        list(reader)
