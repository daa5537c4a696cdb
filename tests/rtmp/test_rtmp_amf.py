"""AMF0 / AMF3: every type, references, limits, and round trips."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtmp
from rtmp import (
    UNDEFINED,
    AMFDate,
    AVMPlus,
    ECMAArray,
    RTMPProtocolError,
    TypedObject,
    XMLDocument,
    amf0_decode,
    amf0_decode_all,
    amf0_encode,
    amf3_decode,
    amf3_encode,
)


def d(value: float) -> bytes:
    return struct.pack(">d", value)


def s0(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


END = b"\x00\x00\x09"


# -- AMF0 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00" + d(1.5), 1.5),
        (b"\x01\x01", True),
        (b"\x01\x00", False),
        (b"\x02" + s0("héllo"), "héllo"),
        (b"\x03" + s0("a") + b"\x00" + d(1) + END, {"a": 1.0}),
        (b"\x05", None),
        (b"\x06", UNDEFINED),
        (b"\x08\x00\x00\x00\x01" + s0("k") + b"\x02" + s0("v") + END, ECMAArray(k="v")),
        (b"\x0a\x00\x00\x00\x02\x05\x01\x01", [None, True]),
        (b"\x0b" + d(1.7e12) + b"\xff\xc4", AMFDate(1.7e12, -60)),
        (b"\x0c\x00\x00\x00\x03abc", "abc"),
        (b"\x0f\x00\x00\x00\x04<a/>", XMLDocument("<a/>")),
        (b"\x10" + s0("Cls") + s0("x") + b"\x05" + END, TypedObject("Cls", {"x": None})),
        (b"\x11\x04\x7f", 127),  # avmplus switch -> AMF3 integer
    ],
)
def test_amf0_every_type(data: bytes, expected: object) -> None:
    value, end = amf0_decode(data)
    assert value == expected
    assert type(value) is type(expected)
    assert end == len(data)


def test_amf0_reference_resolves_to_earlier_object() -> None:
    obj = b"\x03" + s0("a") + b"\x00" + d(2) + END
    data = b"\x0a\x00\x00\x00\x02" + obj + b"\x07\x00\x01"  # index 0 = the array itself
    value, _ = amf0_decode(data)
    assert value == [{"a": 2.0}, {"a": 2.0}]
    assert value[0] is value[1]


def test_amf0_cyclic_reference_is_rejected() -> None:
    data = b"\x03" + s0("self") + b"\x07\x00\x00" + END
    with pytest.raises(RTMPProtocolError, match="cyclic"):
        amf0_decode(data)


def test_amf0_reference_out_of_range() -> None:
    with pytest.raises(RTMPProtocolError, match="out of range"):
        amf0_decode(b"\x07\x00\x05")


def test_amf0_ecma_array_without_end_marker_is_accepted() -> None:
    data = b"\x08\x00\x00\x00\x01" + s0("w") + b"\x00" + d(320)
    assert amf0_decode_all(data) == [{"w": 320.0}]


def test_amf0_property_named_empty_string() -> None:
    data = b"\x03" + s0("") + b"\x05" + END
    assert amf0_decode_all(data) == [{"": None}]


def test_amf0_invalid_utf8_is_replaced_not_raised() -> None:
    assert amf0_decode_all(b"\x02\x00\x02\xff\xfe") == ["\ufffd\ufffd"]


@pytest.mark.parametrize("marker", [0x04, 0x0D, 0x0E, 0x12, 0xFF])
def test_amf0_unsupported_markers(marker: int) -> None:
    with pytest.raises(RTMPProtocolError):
        amf0_decode(bytes([marker]) + b"\x00" * 16)


def test_amf0_encode_decode_command() -> None:
    values = [
        "connect",
        1.0,
        {"app": "live", "n": 3.0, "ok": True, "nil": None},
        ECMAArray(x=1.0),
        [1.0, "two"],
        AMFDate(0.0, 0),
        UNDEFINED,
        TypedObject("T", {"y": "z"}),
        XMLDocument("<x/>"),
        "L" * 70000,
    ]
    assert amf0_decode_all(amf0_encode(*values)) == values


def test_amf0_avmplus_encoding_round_trip() -> None:
    data = amf0_encode("cmd", AVMPlus({"a": 1, "b": [1, 2.5, "s"]}))
    assert amf0_decode_all(data) == ["cmd", {"a": 1, "b": [1, 2.5, "s"]}]


def test_amf0_nesting_bomb() -> None:
    data = b"\x0a\x00\x00\x00\x01" * 10_000 + b"\x05"
    with pytest.raises(RTMPProtocolError, match="deep"):
        amf0_decode(data)


def test_amf0_node_count_limit() -> None:
    data = b"\x0a" + struct.pack(">I", 50_000) + b"\x05" * 50_000
    with pytest.raises(RTMPProtocolError, match="too many"):
        amf0_decode(data)
    assert len(amf0_decode(data, max_nodes=60_000)[0]) == 50_000


def test_amf0_reference_expansion_bomb() -> None:
    # each array holds two references to the previous one: 2^40 nodes if expanded
    parts = [b"\x0a\x00\x00\x00\x01\x05"]
    for i in range(40):
        parts.append(b"\x0a\x00\x00\x00\x02" + (b"\x07" + struct.pack(">H", i + 1)) * 2)
    data = b"\x0a" + struct.pack(">I", len(parts)) + b"".join(parts)
    with pytest.raises(RTMPProtocolError, match="too many"):
        amf0_decode(data)


def test_amf0_huge_declared_counts_do_not_allocate() -> None:
    with pytest.raises(RTMPProtocolError):
        amf0_decode(b"\x0a\xff\xff\xff\xff\x05")
    with pytest.raises(RTMPProtocolError):
        amf0_decode(b"\x0c\xff\xff\xff\xffabc")


def test_amf0_every_truncation_raises_protocol_error() -> None:
    data = amf0_encode(
        "connect",
        1.0,
        {"app": "live", "list": [1.0, "x"], "d": AMFDate(5.0)},
        ECMAArray(a="b"),
        TypedObject("T", {}),
    )
    for cut in range(len(data)):
        with contextlib.suppress(RTMPProtocolError):
            amf0_decode_all(data[:cut])


# -- AMF3 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00", UNDEFINED),
        (b"\x01", None),
        (b"\x02", False),
        (b"\x03", True),
        (b"\x04\x00", 0),
        (b"\x04\x7f", 127),
        (b"\x04\x81\x00", 128),
        (b"\x04\xff\xff\xff\xff", -1),
        (b"\x04\xbf\xff\xff\xff", (1 << 28) - 1),
        (b"\x04\xc0\x80\x80\x00", -(1 << 28)),
        (b"\x05" + d(-2.5), -2.5),
        (b"\x06\x07abc", "abc"),
        (b"\x06\x01", ""),
        (b"\x07\x09<a/>", XMLDocument("<a/>")),
        (b"\x0b\x09<b/>", XMLDocument("<b/>")),
        (b"\x08\x01" + d(1000.0), AMFDate(1000.0)),
        (b"\x09\x05\x01\x04\x01\x06\x03x", [1, "x"]),
        (b"\x09\x03\x03k\x04\x02\x01\x04\x05", {"k": 2, "0": 5}),
        (b"\x0a\x0b\x01\x03a\x04\x01\x01", {"a": 1}),
        (b"\x0a\x13\x03C\x03p\x04\x02", TypedObject("C", {"p": 2})),
        (b"\x0c\x07\x01\x02\x03", b"\x01\x02\x03"),
        (b"\x0d\x05\x00" + struct.pack(">ii", -1, 2), [-1, 2]),
        (b"\x0e\x03\x00" + struct.pack(">I", 4_000_000_000), [4_000_000_000]),
        (b"\x0f\x03\x00" + d(0.5), [0.5]),
        (b"\x10\x05\x00\x01\x04\x01\x06\x03z", [1, "z"]),
        (b"\x11\x03\x00\x06\x03k\x04\x09", {"k": 9}),
    ],
)
def test_amf3_every_type(data: bytes, expected: object) -> None:
    value, end = amf3_decode(data)
    assert value == expected
    assert end == len(data)


def test_amf3_string_object_and_traits_references() -> None:
    # array of: "ab", ref string 0, object {x:1} with inline traits, object with traits ref 0,
    # object ref 1 (the first object; index 0 is the array itself)
    data = (
        b"\x09\x0b\x01"
        + b"\x06\x05ab"
        + b"\x06\x00"
        + b"\x0a\x13\x01\x03x\x04\x01"
        + b"\x0a\x01\x04\x02"
        + b"\x0a\x02"
    )
    value, _ = amf3_decode(data)
    assert value == ["ab", "ab", {"x": 1}, {"x": 2}, {"x": 1}]
    assert value[2] is value[4]


def test_amf3_cycle_and_bad_references() -> None:
    with pytest.raises(RTMPProtocolError, match="cyclic"):
        amf3_decode(b"\x09\x03\x01\x09\x00")  # array containing a ref to itself
    with pytest.raises(RTMPProtocolError):
        amf3_decode(b"\x06\x02")  # string ref 1, table empty
    with pytest.raises(RTMPProtocolError):
        amf3_decode(b"\x0a\x05")  # traits ref 1, none defined


def test_amf3_externalizable_is_rejected() -> None:
    with pytest.raises(RTMPProtocolError, match="externalizable"):
        amf3_decode(b"\x0a\x07\x03C")


def test_amf3_vector_count_bomb() -> None:
    with pytest.raises(RTMPProtocolError):
        amf3_decode(b"\x0d\xbf\xff\xff\xff\x00")


def test_amf3_in_amf0_fresh_tables_per_switch() -> None:
    data = b"\x11\x06\x05ab" + b"\x11\x06\x00"  # second switch: string ref 0 is invalid
    with pytest.raises(RTMPProtocolError):
        amf0_decode_all(data)


amf_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.just(UNDEFINED),
)
amf0_values = st.recursive(
    amf_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.text(max_size=8), kids, max_size=5),
        st.dictionaries(st.text(max_size=8), kids, max_size=5).map(ECMAArray),
        st.builds(
            TypedObject,
            st.text(min_size=1, max_size=5),
            st.dictionaries(st.text(max_size=8), kids, max_size=3),
        ),
    ),
    max_leaves=30,
)


@given(st.lists(amf0_values, max_size=4))
@settings(max_examples=200, deadline=None)
def test_amf0_round_trip_property(values: list[object]) -> None:
    assert amf0_decode_all(amf0_encode(*values)) == values


amf3_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.just(UNDEFINED),
        st.integers(min_value=-(1 << 28), max_value=(1 << 28) - 1),
        st.floats(allow_nan=False).filter(lambda f: not f.is_integer() or math.isinf(f)),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.text(min_size=1, max_size=8), kids, max_size=5),
    ),
    max_leaves=30,
)


@given(amf3_values)
@settings(max_examples=200, deadline=None)
def test_amf3_round_trip_property(value: object) -> None:
    decoded, _ = amf3_decode(amf3_encode(value))
    assert decoded == value


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_amf_garbage_raises_only_protocol_error(data: bytes) -> None:
    for fn in (rtmp.amf0_decode_all, lambda b: amf3_decode(b)):
        with contextlib.suppress(RTMPProtocolError):
            fn(data)
