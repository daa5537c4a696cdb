"""Chunk stream reader/writer: header formats, csid forms, timestamps, control, bounds."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtmp import ChunkReader, ChunkWriter, RTMPMessage, RTMPProtocolError


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def u24(v: int) -> bytes:
    return v.to_bytes(3, "big")


def h0(csid: int, ts: int, length: int, type_id: int, msid: int) -> bytes:
    ext = ts >= 0xFFFFFF
    out = basic(0, csid) + u24(min(ts, 0xFFFFFF)) + u24(length) + bytes([type_id])
    out += struct.pack("<I", msid)
    return out + (struct.pack(">I", ts) if ext else b"")


def h1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    ext = delta >= 0xFFFFFF
    out = basic(1, csid) + u24(min(delta, 0xFFFFFF)) + u24(length) + bytes([type_id])
    return out + (struct.pack(">I", delta) if ext else b"")


def h2(csid: int, delta: int) -> bytes:
    ext = delta >= 0xFFFFFF
    return basic(2, csid) + u24(min(delta, 0xFFFFFF)) + (struct.pack(">I", delta) if ext else b"")


def read_all(data: bytes, reader: ChunkReader | None = None, step: int = 0) -> list[RTMPMessage]:
    reader = reader or ChunkReader()
    out = []
    chunks = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    for part in chunks:
        reader.feed(part)
        while (m := reader.next_message()) is not None:
            out.append(m)
    return out


def test_type0_single_chunk() -> None:
    (m,) = read_all(h0(3, 1000, 3, 20, 0) + b"abc")
    assert m == RTMPMessage(20, 0, 1000, b"abc", 3)


@pytest.mark.parametrize("csid", [2, 63, 64, 65, 300, 319, 320, 1000, 65599])
def test_csid_forms(csid: int) -> None:
    payload = bytes(range(200))
    data = h0(csid, 5, 200, 9, 1) + payload[:128] + basic(3, csid) + payload[128:]
    (m,) = read_all(data, step=1)
    assert (m.chunk_stream_id, m.payload, m.timestamp) == (csid, payload, 5)
    assert ChunkWriter().write(csid, 9, 1, 5, payload) == data


def test_type1_type2_type3_timestamps() -> None:
    data = (
        h0(4, 1000, 2, 8, 1)
        + b"aa"
        + h1(4, 20, 1, 9)
        + b"b"
        + h2(4, 30)
        + b"c"
        + basic(3, 4)
        + b"d"
    )
    msgs = read_all(data)
    assert [(m.type_id, m.timestamp, m.payload, m.stream_id) for m in msgs] == [
        (8, 1000, b"aa", 1),
        (9, 1020, b"b", 1),
        (9, 1050, b"c", 1),
        (9, 1080, b"d", 1),
    ]


def test_type3_after_type0_uses_type0_timestamp_as_delta() -> None:
    msgs = read_all(h0(4, 40, 1, 8, 1) + b"a" + basic(3, 4) + b"b" + basic(3, 4) + b"c")
    assert [m.timestamp for m in msgs] == [40, 80, 120]


def test_type3_continuation_keeps_timestamp() -> None:
    payload = bytes(300)
    data = (
        h0(4, 10, 300, 9, 1)
        + payload[:128]
        + basic(3, 4)
        + payload[128:256]
        + basic(3, 4)
        + payload[256:]
    )
    (m,) = read_all(data)
    assert m.timestamp == 10 and len(m.payload) == 300


@pytest.mark.parametrize("repeat", [True, False])
@pytest.mark.parametrize("step", [0, 1, 7])
def test_extended_timestamp_type3_continuations(repeat: bool, step: int) -> None:
    ts = 0x01234567
    payload = bytes(range(256)) + b"\x01\x23\x45\x66"  # near-miss of the ext value
    ext = struct.pack(">I", ts) if repeat else b""
    rest = basic(3, 5) + ext + payload[128:256] + basic(3, 5) + ext + payload[256:]
    data = h0(5, ts, len(payload), 9, 1) + payload[:128] + rest
    # a following type-3 new message (delta = the type-0 timestamp field)
    data += basic(3, 5) + ext + payload[:128] + rest
    msgs = read_all(data, step=step)
    assert [m.payload for m in msgs] == [payload, payload]
    assert [m.timestamp for m in msgs] == [ts, 2 * ts]
    writer = ChunkWriter(repeat_extended_timestamp=repeat)
    assert writer.write(5, 9, 1, ts, payload) + writer.write(5, 9, 1, 2 * ts, payload) == data


def test_extended_delta_in_type1_and_type2() -> None:
    d1, d2 = 0x01000000, 0x00FFFFFF
    data = (
        h0(4, 0, 1, 9, 1)
        + b"a"
        + h1(4, d1, 1, 9)
        + b"b"
        + h2(4, d2)
        + b"c"
        + basic(3, 4)
        + struct.pack(">I", d2)
        + b"d"
    )
    assert [m.timestamp for m in read_all(data)] == [0, d1, d1 + d2, d1 + 2 * d2]


def test_timestamp_wrap_extends_to_64_bits() -> None:
    # absolute type-0 wrap, delta wrap, and several 2^32 wraps in a row
    data = (
        h0(4, 0xFFFFFFF0, 1, 9, 1)
        + b"a"
        + h0(4, 0x10, 1, 9, 1)
        + b"b"
        + h1(4, 0x7FFFFFFF, 1, 9)
        + b"c"
        + h2(4, 0x7FFFFFFF)
        + b"d"
        + h2(4, 0x10)
        + b"e"
    )
    ts = [m.timestamp for m in read_all(data)]
    assert ts == [
        0xFFFFFFF0,
        0x100000010,
        0x100000010 + 0x7FFFFFFF,
        0x100000010 + 2 * 0x7FFFFFFF,
        0x100000010 + 2 * 0x7FFFFFFF + 0x10,
    ]
    assert ts == sorted(ts)


def test_64_bit_clock_is_per_message_stream_and_shared_by_chunk_streams() -> None:
    w = ChunkWriter()
    t0 = (1 << 32) * 3 - 500  # ~149 days in
    data = b"".join(
        w.write(csid, 9, 1, t0 + i * 100, b"x")
        for i, csid in enumerate([4, 6, 4, 6, 4, 6, 4, 6, 4, 6, 4])
    )
    ts = [m.timestamp for m in read_all(data)]
    base = t0 % (1 << 32)
    assert ts == [base + i * 100 for i in range(11)]  # first seen value is the origin


def test_small_backwards_jump_stays_backwards() -> None:
    data = h0(4, 5000, 1, 9, 1) + b"a" + h0(4, 4000, 1, 9, 1) + b"b"
    assert [m.timestamp for m in read_all(data)] == [5000, 4000]


def test_set_chunk_size_applies_to_next_chunk() -> None:
    w = ChunkWriter()
    payload = bytes(range(256)) * 8
    data = w.set_chunk_size(4096) + w.write(6, 9, 1, 0, payload)
    reader = ChunkReader()
    msgs = read_all(data, reader)
    assert msgs[0].type_id == 1 and msgs[1].payload == payload
    assert reader.chunk_size == 4096


def test_set_chunk_size_max_is_clamped() -> None:
    data = h0(2, 0, 4, 1, 0) + struct.pack(">I", 0x7FFFFFFF)
    payload = bytes(70_000)
    data += h0(6, 0, len(payload), 9, 1) + payload
    reader = ChunkReader()
    msgs = read_all(data, reader)
    assert reader.chunk_size == 0xFFFFFF and msgs[1].payload == payload


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF])
def test_set_chunk_size_invalid(size: int) -> None:
    with pytest.raises(RTMPProtocolError):
        read_all(h0(2, 0, 4, 1, 0) + struct.pack(">I", size))


def test_set_chunk_size_above_cap() -> None:
    with pytest.raises(RTMPProtocolError, match="cap"):
        read_all(
            h0(2, 0, 4, 1, 0) + struct.pack(">I", 0x7FFFFFFF), ChunkReader(max_chunk_size=65536)
        )


def test_abort_drops_partial_message() -> None:
    reader = ChunkReader()
    data = h0(6, 0, 300, 9, 1) + bytes(128)
    data += h0(2, 0, 4, 2, 0) + struct.pack(">I", 6)
    data += h0(6, 33, 2, 9, 1) + b"ok"
    msgs = read_all(data, reader)
    assert [(m.type_id, m.payload) for m in msgs] == [(2, struct.pack(">I", 6)), (9, b"ok")]
    assert reader.buffered_bytes == 0


def test_ack_window_at_chunk_boundaries() -> None:
    reader = ChunkReader()
    reader.ack_window = 1000
    w = ChunkWriter()
    data = b"".join(w.write(6, 9, 1, i, bytes(300)) for i in range(10))
    acks: list[int] = []
    for step in (1, 13, len(data)):
        r = ChunkReader()
        r.ack_window = 1000
        got = []
        for i in range(0, len(data), step):
            r.feed(data[i : i + step])
            while r.next_message() is not None:
                pass
            if (a := r.take_ack()) is not None:
                got.append(a)
        acks.append(got[-1] if got else -1)
    assert acks[0] == acks[1] == acks[2] > 1000


def test_type1_on_fresh_chunk_stream_rejected() -> None:
    with pytest.raises(RTMPProtocolError, match="starts with"):
        read_all(h1(9, 0, 1, 9) + b"a")


def test_new_header_inside_message_rejected() -> None:
    with pytest.raises(RTMPProtocolError, match="inside a message"):
        read_all(h0(6, 0, 300, 9, 1) + bytes(128) + h0(6, 0, 1, 9, 1) + b"a")


def test_oversized_message_rejected_before_buffering() -> None:
    reader = ChunkReader(max_message_size=1000)
    with pytest.raises(RTMPProtocolError, match="cap"):
        read_all(h0(6, 0, 1001, 9, 1), reader)


def test_too_many_chunk_streams() -> None:
    data = b"".join(h0(c, 0, 1, 9, 1) + b"x" for c in range(3, 200))
    with pytest.raises(RTMPProtocolError, match="too many chunk streams"):
        read_all(data, ChunkReader(max_chunk_streams=64))


def test_partial_messages_bounded() -> None:
    reader = ChunkReader(max_buffered_bytes=10_000)
    reader.feed(b"".join(h0(c, 0, 5000, 9, 1) + bytes(128) for c in range(3, 10)))
    assert reader.next_message() is None
    with pytest.raises(RTMPProtocolError, match="buffered"):
        for _ in range(100):
            for c in range(3, 10):
                reader.feed(basic(3, c) + bytes(128))
                assert reader.next_message() is None
                assert reader.buffered_bytes <= 10_000


def test_commands_do_not_move_the_media_clock() -> None:
    data = (
        h0(3, 0, 1, 20, 1)
        + b"c"
        + h0(4, 0xC0000000, 1, 9, 1)
        + b"v"
        + h0(3, 0, 1, 20, 1)
        + b"c"
        + h0(4, 0xC0000010, 1, 9, 1)
        + b"v"
    )
    assert [m.timestamp for m in read_all(data)] == [0, 0xC0000000, 1 << 32, 0xC0000010]


def test_too_many_message_streams() -> None:
    data = b"".join(h0(3, 0, 1, 9, i) + b"x" for i in range(100))
    with pytest.raises(RTMPProtocolError, match="message streams"):
        read_all(data)


def test_zero_length_messages() -> None:
    msgs = read_all(h0(4, 1, 0, 8, 1) + basic(3, 4) + basic(3, 4))
    assert [(m.payload, m.timestamp) for m in msgs] == [(b"", 1), (b"", 2), (b"", 3)]


# -- writer -> reader property ------------------------------------------------------------

csids = st.sampled_from([2, 3, 4, 5, 63, 64, 200, 319, 320, 4000, 65599])
messages = st.lists(
    st.tuples(
        csids,
        st.sampled_from([8, 9, 15, 18, 22, 0x7F]),  # clock-moving types
        st.sampled_from([1, 2, 7, 0x01000000]),  # msid 0 is left to the control messages
        st.one_of(
            st.integers(0, 100), st.integers(0xFFFF00, 0x1000100), st.integers(0, 0x7FFFFFFF)
        ),
        st.binary(max_size=700),
    ),
    max_size=25,
)


@given(
    messages,
    st.integers(0, (1 << 32) + 5),
    st.lists(st.integers(1, 5000), max_size=3),
    st.integers(1, 4096),
    st.data(),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_writer_reader_round_trip(
    msgs: list[tuple[int, int, int, int, bytes]],
    start: int,
    chunk_sizes: list[int],
    split: int,
    data: st.DataObject,
) -> None:
    writer = ChunkWriter(128)
    clocks: dict[int, int] = {}
    wire = bytearray()
    expected = []
    sizes = list(chunk_sizes)
    for i, (csid, type_id, msid, inc, payload) in enumerate(msgs):
        if sizes and i % 5 == 4:
            wire += writer.set_chunk_size(sizes.pop())
            expected.append(None)
        ts = clocks.get(msid, start) + inc
        clocks[msid] = ts
        wire += writer.write(csid, type_id, msid, ts, payload)
        expected.append((type_id, msid, ts, payload, csid))
    reader = ChunkReader(max_message_size=1 << 20)
    got = []
    pos = 0
    while pos < len(wire):
        step = data.draw(st.integers(1, split))
        reader.feed(bytes(wire[pos : pos + step]))
        pos += step
        while (m := reader.next_message()) is not None:
            got.append(m)
    assert len(got) == len(expected)
    got_cmp = [
        None
        if (m.type_id, m.stream_id) == (1, 0) and exp is None
        else (m.type_id, m.stream_id, m.timestamp, m.payload, m.chunk_stream_id)
        for m, exp in zip(got, expected, strict=True)
    ]
    # the first message of each message stream fixes its 64-bit origin: compare mod 2^32 there
    origin: dict[int, int] = {}
    for g, e in zip(got_cmp, expected, strict=True):
        if e is None:
            assert g is None
            continue
        assert g is not None
        msid = e[1]
        if msid not in origin:
            origin[msid] = e[2] - g[2]
            assert origin[msid] % (1 << 32) == 0
        assert g[2] + origin[msid] == e[2]
        assert (g[0], g[1], g[3], g[4]) == (e[0], e[1], e[3], e[4])
    assert reader.buffered_bytes == 0 and reader.pending_bytes == 0
