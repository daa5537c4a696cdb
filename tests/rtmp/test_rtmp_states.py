"""next_event()'s sentinels (NEED_DATA, PAUSED), the state table, and whose fault an error is."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import Any

import pytest
from _rtmp_client import FakeClient
from _rtmp_peer import det_random

import rtmp
from rtmp._handshake import client_hello
from rtmp._state import (
    CALLER_TRIGGERS,
    TRANSITIONS,
    ConnState,
    StreamState,
    Trigger,
    allowed,
    transition,
)

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


# -- the state table ----------------------------------------------------------------------


def test_table_is_closed_over_each_machine() -> None:
    for (state, trigger), new in TRANSITIONS.items():
        assert type(state) is type(new), (state, trigger, new)
    assert not any(state is ConnState.FAILED for state, _ in TRANSITIONS)  # terminal
    assert all(allowed(s, Trigger.FAIL) for s in ConnState if s is not ConnState.FAILED)
    assert {Trigger.ACCEPT, Trigger.REJECT} == CALLER_TRIGGERS


def test_disallowed_transition_raises_by_whose_fault_it_is() -> None:
    with pytest.raises(RuntimeError, match=r"accept_publish\(\) not allowed: stream 1 is publi"):
        transition(StreamState.PUBLISHING, Trigger.ACCEPT, "stream 1")
    with pytest.raises(RuntimeError, match="reject_publish"):
        transition(StreamState.IDLE, Trigger.REJECT)
    with pytest.raises(rtmp.RTMPProtocolError, match="publish not allowed: is pending"):
        transition(StreamState.PENDING, Trigger.PUBLISH)
    with pytest.raises(rtmp.RTMPProtocolError, match="connect not allowed"):
        transition(ConnState.AWAIT_C2, Trigger.CONNECT)
    assert transition(StreamState.ENDED, Trigger.PUBLISH) is StreamState.PENDING


def test_caller_answering_twice_is_a_local_bug() -> None:
    c = FakeClient(auto_accept=False)
    c.publish_flow()
    c.session.accept_publish()
    with pytest.raises(RuntimeError, match="no such publish"):
        c.session.accept_publish()
    with pytest.raises(RuntimeError, match="no such publish"):
        c.session.reject_publish("late")
    assert c.session.next_event() is rtmp.NEED_DATA  # the session itself is fine


def test_publish_twice_on_one_stream_is_the_peers_error() -> None:
    c = FakeClient()
    sid = c.publish_flow()
    with pytest.raises(rtmp.RTMPProtocolError, match=f"publish not allowed: stream {sid} is pub"):
        c.command("publish", 6.0, None, "KEY2", "live", stream_id=sid)


def test_publish_again_after_close_stream() -> None:
    c = FakeClient()
    sid = c.publish_flow()
    c.command("closeStream", 0.0, None, stream_id=sid)
    c.command("closeStream", 0.0, None, stream_id=sid)  # not publishing: ignored
    assert [e.reason for e in c.of_type(rtmp.StreamEnded)] == ["closeStream"]
    c.command("publish", 7.0, None, "KEY", "live", stream_id=sid)
    assert len(c.of_type(rtmp.PublishRequested)) == 2
    assert c.session.publishing_streams == (sid,)


def test_states_change_only_through_the_table() -> None:
    """Every assignment of a state in the session goes through transition() (or _to)."""
    source = Path(rtmp._session.__file__).read_text()
    initial = {"ConnState.AWAIT_C0C1", "StreamState.IDLE"}
    seen = 0
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Attribute) and target.attr in ("state", "_state"):
                seen += 1
                value = ast.unparse(node.value)
                assert value in initial or value.startswith("transition("), value
    assert seen >= 5


# -- whose fault: bad input is RTMPProtocolError, a bug of ours is itself ------------------


def test_a_bug_in_a_handler_escapes_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, *args: Any) -> None:
        raise TypeError("bug in _on_connect")

    monkeypatch.setattr(rtmp.ServerSession, "_on_connect", broken)
    c = FakeClient()
    with pytest.raises(TypeError, match="bug in _on_connect"):
        c.connect()
    # the session is unusable afterwards, and says it was not the peer
    with pytest.raises(RuntimeError, match=r"already failed: internal error \(TypeError"):
        c.session.next_event()
    with pytest.raises(RuntimeError, match="already failed"):
        c.session.receive_data(b"x")


def test_a_bug_in_a_media_parser_escapes_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[Any]:
        raise KeyError("our table")

    c = FakeClient()
    sid = c.publish_flow()
    monkeypatch.setattr(rtmp._session, "parse_video_tag", broken)
    with pytest.raises(KeyError, match="our table"):
        c.video(sid, 0, AVC_SEQ)


def test_amf_maps_only_stack_exhaustion(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = b"\x0a\x00\x00\x00\x01" * 5000 + b"\x05"  # strict arrays, 5000 deep
    with pytest.raises(rtmp.RTMPProtocolError, match="too deep") as info:
        rtmp.amf0_decode(deep)  # max_depth stops it first
    assert info.value.__context__ is None
    with pytest.raises(rtmp.RTMPProtocolError, match="for the stack") as info:
        rtmp.amf0_decode(deep, max_depth=10**6, max_nodes=10**6)
    assert isinstance(info.value.__context__, RecursionError)

    def broken(self: Any, depth: int) -> Any:
        raise AttributeError("bug in value0")

    monkeypatch.setattr(rtmp._amf._Decoder, "value0", broken)
    with pytest.raises(AttributeError, match="bug in value0"):
        rtmp.amf0_decode_all(b"\x05")


def test_tag_parsers_map_only_index_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def reads_past_the_end(body: bytes, *args: Any) -> Any:
        return body[len(body)]

    monkeypatch.setattr(rtmp._flv, "_legacy_video", reads_past_the_end)
    with pytest.raises(rtmp.RTMPProtocolError, match="malformed video tag") as info:
        rtmp.parse_video_tag(b"\x17", 0)
    assert isinstance(info.value.__context__, IndexError)  # the fuzz oracle flags this

    def broken(*args: Any) -> Any:
        raise TypeError("bug in _legacy_video")

    monkeypatch.setattr(rtmp._flv, "_legacy_video", broken)
    with pytest.raises(TypeError, match="bug in _legacy_video"):
        rtmp.parse_video_tag(b"\x17", 0)
