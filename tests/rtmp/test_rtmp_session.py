"""ServerSession: commands, replies, publish decisions, control messages, media flow."""

from __future__ import annotations

import itertools
import struct

import pytest
from _rtmp_client import FakeClient
from _rtmp_peer import det_random

import rtmp
from rtmp._chunks import (
    MSG_ACK,
    MSG_AMF3_COMMAND,
    MSG_AMF3_DATA,
    MSG_SET_CHUNK_SIZE,
    MSG_SET_PEER_BANDWIDTH,
    MSG_USER_CONTROL,
    MSG_WINDOW_ACK_SIZE,
)
from rtmp._handshake import client_c2, client_hello, server_hello

AVC_SEQ = b"\x17\x00\x00\x00\x00" + bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE0, 0x00])
KEYFRAME = b"\x17\x01\x00\x00\x00" + struct.pack(">I", 2) + b"\x65\x88"


def test_connect_replies_and_event() -> None:
    c = FakeClient()
    c.connect("live", objectEncoding=0.0)
    kinds = [m.type_id for m in c.replies]
    assert kinds[:3] == [MSG_WINDOW_ACK_SIZE, MSG_SET_PEER_BANDWIDTH, MSG_SET_CHUNK_SIZE]
    assert struct.unpack(">I", c.replies[0].payload)[0] == 5_000_000
    assert c.replies[1].payload[4] == 2  # dynamic limit
    assert struct.unpack(">I", c.replies[2].payload)[0] == 4096
    name, txn, props, info = c.results(1.0)
    assert (name, txn, info["code"], info["level"]) == (
        "_result",
        1.0,
        "NetConnection.Connect.Success",
        "status",
    )
    assert "fourCcList" not in props and props["fmsVer"].startswith("FMS/")
    (ev,) = c.of_type(rtmp.Connected)
    assert (ev.app, ev.tc_url, ev.flash_ver, ev.object_encoding) == (
        "live",
        "rtmp://127.0.0.1/live",
        "FMLE/3.0 (compatible; test)",
        0,
    )
    assert ev.fourcc_list is None and ev.caps_ex is None
    assert c.events[0] == rtmp.HandshakeComplete(digest=True)


def test_connect_enhanced_rtmp_fields_echoed() -> None:
    c = FakeClient(digest=False)
    c.connect(
        "app",
        fourCcList=["av01", "hvc1", "Opus"],
        capsEx=3.0,
        videoFourCcInfoMap={"*": 4.0, "hvc1": 1.0},
        audioFourCcInfoMap={"Opus": 1.0},
        objectEncoding=3.0,
    )
    (ev,) = c.of_type(rtmp.Connected)
    assert ev.fourcc_list == ("av01", "hvc1", "Opus")
    assert ev.video_fourcc_info_map == {"*": 4.0, "hvc1": 1.0}
    assert ev.audio_fourcc_info_map == {"Opus": 1.0}
    assert (ev.caps_ex, ev.object_encoding) == (3, 3)
    _, _, props, info = c.results(1.0)
    assert props["fourCcList"] == ["av01", "hvc1", "Opus"]
    assert props["videoFourCcInfoMap"] == {"*": 4.0, "hvc1": 1.0}
    assert props["capsEx"] == 2.0  # multitrack yes, reconnect no
    assert info["objectEncoding"] == 3.0


def test_connect_echoes_only_fourcc_capabilities() -> None:
    # peer values that AMF0 cannot encode, or that would expand, are not echoed (a
    # session that lets such a connect in: the default caps messages before publish)
    c = FakeClient(rtmp.SessionConfig(randbytes=det_random(),
                                      max_message_size_before_publish=1 << 20))
    c.connect(
        fourCcList=["av01", "x" * 70_000, 1.0, "*"],
        videoFourCcInfoMap=rtmp.AVMPlus({"hvc1": 1.0, "k" * 70_000: 1.0, "av01": b"x"}),
        audioFourCcInfoMap={"Opus": "x", "mp4a": 1.0},
    )
    _, _, props, _ = c.results(1.0)
    assert props["fourCcList"] == ["av01", "*"]
    assert props["videoFourCcInfoMap"] == {"hvc1": 1.0}
    assert props["audioFourCcInfoMap"] == {"mp4a": 1.0}
    (ev,) = c.of_type(rtmp.Connected)  # the event still carries what the peer sent
    assert ev.fourcc_list == ("av01", "x" * 70_000, "*")
    assert ev.video_fourcc_info_map == {"hvc1": 1.0, "k" * 70_000: 1.0, "av01": b"x"}


def test_full_publish_flow_and_replies() -> None:
    c = FakeClient()
    sid = c.publish_flow("live/sub/abcDEF123456?token=x&y=1")
    assert sid == 1
    assert c.results(2.0)[:3] == ["_result", 2.0, None]  # releaseStream
    assert c.results(3.0)[:3] == ["_result", 3.0, None]  # FCPublish
    assert c.results(4.0) == ["_result", 4.0, None, 1.0]  # createStream
    (req,) = c.of_type(rtmp.PublishRequested)
    assert req == rtmp.PublishRequested(
        1, "abcDEF123456", "live/sub/abcDEF123456?token=x&y=1", "live", "live", "token=x&y=1"
    )
    assert (0, struct.pack(">I", 1)) in c.user_controls()  # Stream Begin 1
    (status,) = c.statuses()
    assert (status["level"], status["code"]) == ("status", "NetStream.Publish.Start")
    fc = [v for v in c.commands() if v[0] == "onFCPublish"]
    assert fc and fc[0][3]["code"] == "NetStream.Publish.Start"
    status_msg = [m for m in c.replies if m.stream_id == 1]
    assert status_msg  # onStatus travels on the publishing message stream
    assert c.session.publishing_streams == (1,)


@pytest.mark.parametrize(
    ("name", "key"),
    [("KEY", "KEY"), ("x/KEY", "KEY"), ("KEY?a=b", "KEY"), ("a/b/c/KEY?x=/y", "KEY")],
)
def test_stream_key_is_last_path_segment(name: str, key: str) -> None:
    c = FakeClient()
    c.publish_flow(name, app="whatever/app")
    assert c.of_type(rtmp.PublishRequested)[0].stream_key == key


def test_empty_key_rejected_without_event() -> None:
    c = FakeClient()
    c.publish_flow("live/")
    assert not c.of_type(rtmp.PublishRequested)
    assert c.statuses()[0]["code"] == "NetStream.Publish.BadName"


def test_session_pauses_until_caller_decides() -> None:
    c = FakeClient(auto_accept=False)
    sid = c.publish_flow()
    assert c.session.pending_publish == sid
    c.video(sid, 0, AVC_SEQ)
    c.video(sid, 33, KEYFRAME)
    assert not c.of_type(rtmp.VideoConfig)  # paused: media not parsed yet
    c.session.accept_publish(sid)
    c.pump()
    assert len(c.of_type(rtmp.VideoConfig)) == 1 and len(c.of_type(rtmp.VideoFrame)) == 1
    assert c.session.dropped_messages == 0


def test_reject_publish_bad_name_then_media_dropped() -> None:
    c = FakeClient(auto_accept=False)
    sid = c.publish_flow()
    c.session.reject_publish("no such stream key")
    c.pump()
    (status,) = c.statuses()
    assert status == {
        "level": "error",
        "code": "NetStream.Publish.BadName",
        "description": "no such stream key",
    }
    c.video(sid, 0, AVC_SEQ)
    assert not c.of_type(rtmp.VideoConfig) and c.session.dropped_messages == 1


def test_reject_publish_generic_code() -> None:
    c = FakeClient(auto_accept=False)
    c.publish_flow()
    c.session.reject_publish("ingress is disabled", code=rtmp.STATUS_DENIED)
    c.pump()
    assert c.statuses()[0]["code"] == "NetStream.Publish.Denied"
    assert c.statuses()[0]["description"] == "ingress is disabled"


def test_accept_or_reject_without_pending_is_local_error() -> None:
    c = FakeClient()
    with pytest.raises(RuntimeError):
        c.session.accept_publish()
    with pytest.raises(RuntimeError):
        c.session.reject_publish("x")


def test_media_before_publish_is_dropped() -> None:
    c = FakeClient()
    c.connect()
    c.command("createStream", 2.0, None)
    c.video(1, 0, AVC_SEQ)
    c.data(1, 0, "@setDataFrame", "onMetaData", {"width": 1.0})
    assert c.session.dropped_messages == 2
    assert not c.of_type(rtmp.VideoConfig) and not c.of_type(rtmp.Metadata)


def test_metadata_and_data_messages() -> None:
    c = FakeClient()
    sid = c.publish_flow()
    c.data(sid, 0, "@setDataFrame", "onMetaData", rtmp.ECMAArray(width=1280.0, height=720.0))
    c.data(sid, 10, "onMetaData", {"framerate": 30.0})
    c.data(sid, 20, "onTextData", {"text": "hi"})
    c.send(4, MSG_AMF3_DATA, sid, 30, b"\x00" + rtmp.amf0_encode("onMetaData", {"a": 1.0}))
    metas = c.of_type(rtmp.Metadata)
    assert metas == [
        rtmp.Metadata(0, {"width": 1280.0, "height": 720.0}, sid),
        rtmp.Metadata(10, {"framerate": 30.0}, sid),
        rtmp.Metadata(30, {"a": 1.0}, sid),
    ]
    text = rtmp.DataMessage(20, "onTextData", ({"text": "hi"},), sid)
    assert c.of_type(rtmp.DataMessage) == [text]


def test_amf3_command_message() -> None:
    c = FakeClient()
    c.connect()
    payload = b"\x00" + rtmp.amf0_encode("createStream", 7.0, None)
    c.send(3, MSG_AMF3_COMMAND, 0, 0, payload)
    assert c.results(7.0) == ["_result", 7.0, None, 1.0]


def test_ping_request_answered_and_ping_response_event() -> None:
    c = FakeClient()
    c.connect()
    c.send(2, MSG_USER_CONTROL, 0, 0, struct.pack(">HI", 6, 123456))
    assert (7, struct.pack(">I", 123456)) in c.user_controls()
    c.session.send_ping(42)
    c.pump()
    assert (6, struct.pack(">I", 42)) in c.user_controls()
    c.send(2, MSG_USER_CONTROL, 0, 0, struct.pack(">HI", 7, 42))
    assert c.of_type(rtmp.PingResponse) == [rtmp.PingResponse(42)]
    c.send(2, MSG_USER_CONTROL, 0, 0, struct.pack(">HII", 3, 1, 3000))  # set buffer length
    c.send(2, MSG_USER_CONTROL, 0, 0, struct.pack(">HI", 0, 1))  # stream begin
    with pytest.raises(rtmp.RTMPProtocolError):
        c.send(2, MSG_USER_CONTROL, 0, 0, b"\x00")


def test_acknowledgement_sent_when_window_crossed() -> None:
    c = FakeClient()
    c.send(2, MSG_WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", 2000))
    sid = c.publish_flow()
    for i in range(20):
        c.video(sid, i * 33, KEYFRAME + bytes(200))
    acks = [struct.unpack(">I", m.payload)[0] for m in c.replies if m.type_id == MSG_ACK]
    assert len(acks) >= 2 and acks == sorted(acks)
    assert all(b - a >= 2000 for a, b in itertools.pairwise(acks))
    assert acks[-1] <= c.session.bytes_received - 3073


def test_acknowledgements_do_not_depend_on_read_sizes() -> None:
    # found by fuzz/fuzz_session.py: with a window smaller than a multi-chunk message,
    # one big read sent a single (coalesced) ack where small reads sent one per crossing
    c0c1 = client_hello(det_random(b"c"))
    reply, _ = server_hello(c0c1, det_random())
    w = rtmp.ChunkWriter(128)
    data = c0c1 + client_c2(reply, det_random())
    data += w.write(2, MSG_WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", 100))
    data += w.write(3, 20, 0, 0, rtmp.amf0_encode("connect", 1.0, {"app": "a"}))
    data += w.write(5, 18, 0, 0, rtmp.amf0_encode("x", "y" * 1000))

    def sent(step: int) -> bytes:
        session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=det_random()))
        out = b""
        for i in range(0, len(data), step):
            session.receive_data(data[i : i + step])
            while isinstance(session.next_event(), rtmp.Event):
                pass
            out += session.data_to_send()
        return out

    assert sent(len(data)) == sent(1) == sent(7)


def test_set_chunk_size_from_client() -> None:
    c = FakeClient(chunk_size=60000)
    sid = c.publish_flow()
    big = KEYFRAME + bytes(50_000)
    c.video(sid, 0, big)
    (frame,) = c.of_type(rtmp.VideoFrame)
    assert len(frame.data) == len(big) - 5


def test_aggregate_message_rebased_timestamps() -> None:
    c = FakeClient()
    sid = c.publish_flow()

    def tag(tag_type: int, ts: int, body: bytes) -> bytes:
        head = bytes([tag_type]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        return head + bytes([ts >> 24]) + b"\x00\x00\x00" + body + struct.pack(">I", 11 + len(body))

    payload = (
        tag(9, 1000, AVC_SEQ)
        + tag(9, 1000, KEYFRAME)
        + tag(8, 1010, b"\xaf\x01\x21")
        + tag(9, 1033, KEYFRAME)
        + tag(18, 1033, rtmp.amf0_encode("onCuePoint", 1.0))
    )
    c.send(6, 22, sid, 5000, payload)
    media = [e for e in c.events if isinstance(e, (rtmp.VideoFrame, rtmp.AudioFrame))]
    assert [(type(e).__name__, e.dts) for e in media] == [
        ("VideoFrame", 5000),
        ("AudioFrame", 5010),
        ("VideoFrame", 5033),
    ]
    assert c.of_type(rtmp.DataMessage)[0].timestamp == 5033
    with pytest.raises(rtmp.RTMPProtocolError):
        c.send(6, 22, sid, 6000, payload[:-10])


def test_unknown_message_types_are_skipped() -> None:
    c = FakeClient()
    c.connect()
    c.send(3, 0x7F, 0, 10, b"whatever")
    c.send(3, 19, 0, 11, b"\x00\x03abc")  # AMF0 shared object
    assert c.of_type(rtmp.UnknownMessage) == [
        rtmp.UnknownMessage(0x7F, 0, 10, 8),
        rtmp.UnknownMessage(19, 0, 11, 5),
    ]


def test_unhandled_command_surfaces() -> None:
    c = FakeClient()
    c.connect()
    c.command("play", 9.0, None, "stream")
    c.command("_checkbw", 10.0, None)
    names = [e.name for e in c.of_type(rtmp.CommandReceived)]
    assert names == ["play", "_checkbw"]


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ([("FCUnpublish", 0, "KEY"), ("deleteStream", 0, 1.0)], "FCUnpublish"),
        ([("closeStream", 1, None), ("deleteStream", 0, 1.0)], "closeStream"),
        ([("deleteStream", 0, 1.0)], "deleteStream"),
    ],
)
def test_stream_ended_once(commands: list[tuple[str, int, object]], reason: str) -> None:
    c = FakeClient()
    sid = c.publish_flow()
    for i, (name, on_stream, arg) in enumerate(commands):
        c.command(
            name,
            20.0 + i,
            None,
            *([arg] if arg is not None else []),
            stream_id=sid if on_stream else 0,
        )
    assert c.of_type(rtmp.StreamEnded) == [rtmp.StreamEnded(sid, "KEY", reason)]
    assert c.statuses()[-1]["code"] == "NetStream.Unpublish.Success"
    c.video(sid, 0, KEYFRAME)
    assert not c.of_type(rtmp.VideoFrame)


def test_republish_after_unpublish() -> None:
    c = FakeClient()
    sid = c.publish_flow()
    c.command("FCUnpublish", 6.0, None, "KEY")
    c.command("publish", 7.0, None, "KEY2", "live", stream_id=sid)
    assert [e.stream_key for e in c.of_type(rtmp.PublishRequested)] == ["KEY", "KEY2"]


def test_create_stream_limit() -> None:
    c = FakeClient(rtmp.SessionConfig(max_streams=2))
    c.connect()
    for txn in (2.0, 3.0, 4.0):
        c.command("createStream", txn, None)
    assert c.results(3.0)[3] == 2.0
    assert c.results(4.0)[0] == "_error"


def test_protocol_violations() -> None:
    c = FakeClient()
    with pytest.raises(rtmp.RTMPProtocolError, match="before connect"):
        c.command("createStream", 2.0, None)
    c = FakeClient()
    c.connect()
    with pytest.raises(rtmp.RTMPProtocolError, match="connect not allowed"):
        c.connect()
    with pytest.raises(rtmp.RTMPProtocolError, match="already failed"):
        c.session.next_event()
    c = FakeClient()
    c.connect()
    with pytest.raises(rtmp.RTMPProtocolError, match="not created"):
        c.command("publish", 3.0, None, "KEY", stream_id=5)
    c = FakeClient()
    c.connect()
    with pytest.raises(rtmp.RTMPProtocolError, match="without a name"):
        c.send(3, 20, 0, 0, rtmp.amf0_encode(1.0, 2.0))


def test_media_timestamps_stay_monotonic_past_32_bits() -> None:
    c = FakeClient()
    sid = c.publish_flow()
    start = (1 << 32) - 100  # 49.7 days in
    for i in range(10):
        c.video(sid, start + i * 33, KEYFRAME)
        c.audio(sid, start + i * 33 + 5, b"\xaf\x01\x21")
    dts = [e.dts for e in c.events if isinstance(e, (rtmp.VideoFrame, rtmp.AudioFrame))]
    assert dts == sorted(dts) and dts[-1] > 1 << 32
    assert dts[-1] - dts[0] == 9 * 33 + 5


def test_receive_buffer_bounded_while_paused() -> None:
    c = FakeClient(rtmp.SessionConfig(max_receive_buffer=10_000), auto_accept=False)
    sid = c.publish_flow()
    with pytest.raises(rtmp.RTMPProtocolError, match="overflow"):
        for i in range(100):
            c.video(sid, i, KEYFRAME + bytes(500))


# -- what an unauthenticated peer can make the session do (issue 12) -----------------------


def _empty_tags(count: int) -> bytes:
    """`count` empty video tags, as the aggregate that stalled the node was made of."""
    return (b"\x09" + bytes(10) + struct.pack(">I", 11)) * count


def test_message_before_publish_is_capped() -> None:
    c = FakeClient(chunk_size=1 << 20)
    c.connect()
    with pytest.raises(rtmp.RTMPProtocolError, match="above the cap 65536"):
        c.send(6, 22, 0, 0, _empty_tags(100_000))


def test_the_full_cap_applies_once_a_publish_is_accepted() -> None:
    c = FakeClient(chunk_size=1 << 20)
    sid = c.publish_flow()
    c.video(sid, 0, KEYFRAME + bytes(1 << 20))
    (frame,) = c.of_type(rtmp.VideoFrame)
    assert len(frame.data) == (1 << 20) + len(KEYFRAME) - 5


def test_aggregate_before_publish_is_dropped_unopened() -> None:
    c = FakeClient()
    c.connect()
    c.command("createStream", 2.0, None)
    c.send(6, 22, 1, 0, b"\xff" * 1000)  # not even valid tags: never looked at
    c.send(6, 22, 1, 0, _empty_tags(1000))
    assert c.session.dropped_messages == 2


def test_aggregate_tag_count_is_capped() -> None:
    c = FakeClient(chunk_size=1 << 20)
    sid = c.publish_flow()
    c.send(6, 22, sid, 0, _empty_tags(1024))  # at the cap: fine
    with pytest.raises(rtmp.RTMPProtocolError, match="more than 1024 tags"):
        c.send(6, 22, sid, 0, _empty_tags(1025))


@pytest.mark.parametrize("size", [1, 127])
def test_chunk_size_below_the_protocol_default_is_refused(size: int) -> None:
    c = FakeClient()
    with pytest.raises(rtmp.RTMPProtocolError, match="below the minimum 128"):
        c.send(2, MSG_SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
