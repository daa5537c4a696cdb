"""next_event()'s sentinels (NEED_DATA, PAUSED) and the session's state table."""

from __future__ import annotations

import struct

from _rtmp_client import FakeClient
from _rtmp_peer import det_random

import rtmp
from rtmp._handshake import client_hello

AVC_SEQ = b"\x17\x00\x00\x00\x00" + bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE0, 0x00])
KEYFRAME = b"\x17\x01\x00\x00\x00" + struct.pack(">I", 2) + b"\x65\x88"


def test_sentinels_are_distinct_named_and_not_events() -> None:
    assert rtmp.NEED_DATA is not rtmp.PAUSED
    for sentinel, name in ((rtmp.NEED_DATA, "NEED_DATA"), (rtmp.PAUSED, "PAUSED")):
        assert sentinel is not None and sentinel
        assert repr(sentinel) == name
        assert type(sentinel) is sentinel  # h11's trick: a class that is its own type
        assert not isinstance(sentinel, rtmp.Event)
        assert sentinel.__doc__
    assert isinstance(rtmp.HandshakeComplete(True), rtmp.Event)
    assert isinstance(rtmp.VideoFrame("h264", 0, 0, True, b""), rtmp.Event)


def test_need_data_on_a_partial_handshake() -> None:
    session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=det_random()))
    assert session.next_event() is rtmp.NEED_DATA
    session.receive_data(client_hello(det_random(b"c"))[:100])
    assert session.next_event() is rtmp.NEED_DATA
    assert session.data_to_send() == b""  # no S0/S1/S2 before the whole C1


def test_need_data_on_a_partial_chunk() -> None:
    c = FakeClient()
    c.session.receive_data(b"\x03\x00\x00")  # three bytes of a type-0 chunk header
    assert c.session.next_event() is rtmp.NEED_DATA


def test_paused_while_a_publish_is_pending_then_events_again() -> None:
    c = FakeClient(auto_accept=False)
    sid = c.publish_flow()
    assert isinstance(c.events[-1], rtmp.PublishRequested)
    session = c.session
    assert session.next_event() is rtmp.PAUSED
    c.video(sid, 0, AVC_SEQ)  # buffered, not parsed: still paused
    c.video(sid, 33, KEYFRAME)
    assert session.next_event() is rtmp.PAUSED
    assert not c.of_type(rtmp.VideoConfig)
    session.accept_publish()
    got = []
    while isinstance(event := session.next_event(), rtmp.Event):
        got.append(event)
    assert event is rtmp.NEED_DATA
    assert [type(e) for e in got] == [rtmp.VideoConfig, rtmp.VideoFrame]


def test_paused_after_reject_too_until_answered() -> None:
    c = FakeClient(auto_accept=False)
    c.publish_flow()
    assert c.session.next_event() is rtmp.PAUSED
    c.session.reject_publish("no")
    assert c.session.next_event() is rtmp.NEED_DATA
