"""AMF0 and AMF3 codecs, bounded so hostile payloads cannot blow up memory or the stack.

AMF carries every RTMP command and the ``onMetaData`` of FLV. Values map onto Python:

======================  =====================================================
AMF                     Python
======================  =====================================================
number / AMF3 double    ``float``
AMF3 integer            ``int``
boolean                 ``bool``
string / long string    ``str`` (invalid UTF-8 replaced, never raised)
object                  ``dict[str, Any]``
typed object            :class:`TypedObject`
ECMA array              :class:`ECMAArray` (a ``dict`` subclass)
strict array            ``list``
null / undefined        ``None`` / :data:`UNDEFINED`
date                    :class:`AMFDate`
XML document            :class:`XMLDocument` (a ``str`` subclass)
AMF3 ByteArray          ``bytes``
======================  =====================================================

Limits: nesting depth and the *expanded* node count (a reference counts as the whole
subtree it points to) are capped, so neither a nesting bomb nor a "billion laughs" of
references gets through; a reference to an object still being decoded (a cycle) is
rejected, so decoded values are always finite trees.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from ._errors import RTMPProtocolError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_NODES",
    "UNDEFINED",
    "AMFDate",
    "AVMPlus",
    "ECMAArray",
    "TypedObject",
    "Undefined",
    "XMLDocument",
    "amf0_decode",
    "amf0_decode_all",
    "amf0_encode",
    "amf3_decode",
    "amf3_encode",
]

DEFAULT_MAX_DEPTH: Final = 32
DEFAULT_MAX_NODES: Final = 20_000

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_S16 = struct.Struct(">h")


class Undefined:
    """The AMF ``undefined`` value (distinct from ``null``/``None``)."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = Undefined()


class ECMAArray(dict[str, Any]):
    """An AMF0 ECMA array: a dict that re-encodes as ECMA array (``onMetaData`` uses it)."""


class XMLDocument(str):
    """An AMF XML document, kept as text."""


@dataclass(frozen=True)
class AMFDate:
    """An AMF date: milliseconds since the Unix epoch (UTC) and the AMF0 timezone field."""

    milliseconds: float
    timezone: int = 0


@dataclass(frozen=True)
class TypedObject:
    """An object with a class name (AMF0 typed object, AMF3 object with traits)."""

    class_name: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AVMPlus:
    """Encoder hint: write ``value`` as AMF3 behind the AMF0 avmplus marker (0x11)."""

    value: Any


class _Decoder:
    """Shared cursor, limits and reference tables of one AMF decode call."""

    def __init__(self, data: bytes, pos: int, max_depth: int, max_nodes: int) -> None:
        self.data = data
        self.pos = pos
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.nodes = 0
        # reference tables: (value, expanded size or None while still decoding)
        self.refs0: list[list[Any]] = []
        self.refs3: list[list[Any]] = []
        self.strings3: list[str] = []
        self.traits3: list[tuple[str, bool, list[str]]] = []

    # -- primitives -----------------------------------------------------------------
    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise RTMPProtocolError("AMF: truncated value")

    def u8(self) -> int:
        self.need(1)
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        self.need(2)
        (v,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(v)

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def double(self) -> float:
        self.need(8)
        (v,) = _DOUBLE.unpack_from(self.data, self.pos)
        self.pos += 8
        return float(v)

    def raw(self, n: int) -> bytes:
        self.need(n)
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(v)

    def text(self, n: int) -> str:
        return self.raw(n).decode("utf-8", errors="replace")

    def count_node(self, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > self.max_nodes:
            raise RTMPProtocolError("AMF: too many values")

    def check_count(self, count: int, min_size: int) -> None:
        """Reject element counts the remaining bytes cannot possibly hold."""
        if count * min_size > len(self.data) - self.pos:
            raise RTMPProtocolError("AMF: element count exceeds payload")

    def check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise RTMPProtocolError("AMF: nesting too deep")

    # -- AMF0 -----------------------------------------------------------------------
    def value0(self, depth: int) -> Any:
        self.check_depth(depth)
        self.count_node()
        marker = self.u8()
        if marker == 0x00:
            return self.double()
        if marker == 0x01:
            return self.u8() != 0
        if marker == 0x02:
            return self.text(self.u16())
        if marker == 0x03:
            return self._complex0(depth, lambda: self._props0(depth, {}, False))
        if marker == 0x05:
            return None
        if marker == 0x06:
            return UNDEFINED
        if marker == 0x07:
            return self._ref(self.refs0, self.u16())
        if marker == 0x08:
            self.u32()  # approximate count, not trusted: the end marker terminates
            # some muxers omit the end marker of a trailing ECMA array: accept that
            return self._complex0(depth, lambda: self._props0(depth, ECMAArray(), True))
        if marker == 0x0A:
            count = self.u32()
            self.check_count(count, 1)
            return self._complex0(depth, lambda: [self.value0(depth + 1) for _ in range(count)])
        if marker == 0x0B:
            ms = self.double()
            self.need(2)
            (tz,) = _S16.unpack_from(self.data, self.pos)
            self.pos += 2
            return AMFDate(ms, int(tz))
        if marker == 0x0C:
            return self.text(self.u32())
        if marker == 0x0F:
            return XMLDocument(self.text(self.u32()))
        if marker == 0x10:
            name = self.text(self.u16())
            return self._complex0(depth, lambda: TypedObject(name, self._props0(depth, {}, False)))
        if marker == 0x11:
            # each switch to AMF3 starts fresh AMF3 reference tables
            self.refs3, self.strings3, self.traits3 = [], [], []
            return self.value3(depth + 1)
        raise RTMPProtocolError(f"AMF0: unsupported marker 0x{marker:02x}")

    def _complex0(self, depth: int, build: Any) -> Any:
        slot: list[Any] = [None, None]
        self.refs0.append(slot)
        before = self.nodes
        value = build()
        slot[0] = value
        slot[1] = self.nodes - before + 1
        return value

    def _props0(self, depth: int, out: dict[str, Any], open_end: bool) -> dict[str, Any]:
        while True:
            if open_end and self.pos == len(self.data):
                return out
            key = self.text(self.u16())
            if key == "" and self.pos < len(self.data) and self.data[self.pos] == 0x09:
                self.pos += 1
                return out
            out[key] = self.value0(depth + 1)

    def _ref(self, table: list[list[Any]], index: int) -> Any:
        if index >= len(table):
            raise RTMPProtocolError("AMF: reference out of range")
        value, size = table[index]
        if size is None:
            raise RTMPProtocolError("AMF: cyclic reference")
        self.count_node(size)
        return value

    # -- AMF3 -----------------------------------------------------------------------
    def u29(self) -> int:
        result = 0
        for _ in range(3):
            b = self.u8()
            result = (result << 7) | (b & 0x7F)
            if not b & 0x80:
                return result
        return (result << 8) | self.u8()

    def string3(self) -> str:
        head = self.u29()
        if not head & 1:
            index = head >> 1
            if index >= len(self.strings3):
                raise RTMPProtocolError("AMF3: string reference out of range")
            return self.strings3[index]
        s = self.text(head >> 1)
        if s:
            self.strings3.append(s)
        return s

    def value3(self, depth: int) -> Any:
        self.check_depth(depth)
        self.count_node()
        marker = self.u8()
        if marker == 0x00:
            return UNDEFINED
        if marker == 0x01:
            return None
        if marker == 0x02:
            return False
        if marker == 0x03:
            return True
        if marker == 0x04:
            v = self.u29()
            return v - (1 << 29) if v & (1 << 28) else v
        if marker == 0x05:
            return self.double()
        if marker == 0x06:
            return self.string3()
        if marker in (0x07, 0x0B):
            return self._inline3(lambda n: XMLDocument(self.text(n)))
        if marker == 0x08:
            return self._inline3(lambda _n: AMFDate(self.double()))
        if marker == 0x09:
            return self._array3(depth)
        if marker == 0x0A:
            return self._object3(depth)
        if marker == 0x0C:
            return self._inline3(self.raw)
        if marker in (0x0D, 0x0E, 0x0F):
            return self._vector_num3(marker)
        if marker == 0x10:
            return self._vector_obj3(depth)
        if marker == 0x11:
            return self._dict3(depth)
        raise RTMPProtocolError(f"AMF3: unsupported marker 0x{marker:02x}")

    def _inline3(self, read: Any) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        value = read(head >> 1)
        self.refs3.append([value, 1])
        return value

    def _begin3(self) -> tuple[list[Any], int]:
        slot: list[Any] = [None, None]
        self.refs3.append(slot)
        return slot, self.nodes

    def _end3(self, slot: list[Any], before: int, value: Any) -> Any:
        slot[0] = value
        slot[1] = self.nodes - before + 1
        return value

    def _array3(self, depth: int) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        count = head >> 1
        slot, before = self._begin3()
        assoc: dict[str, Any] = {}
        while True:
            key = self.string3()
            if key == "":
                break
            assoc[key] = self.value3(depth + 1)
        self.check_count(count, 1)
        dense = [self.value3(depth + 1) for _ in range(count)]
        if not assoc:
            return self._end3(slot, before, dense)
        out = ECMAArray(assoc)
        for i, v in enumerate(dense):
            out[str(i)] = v
        return self._end3(slot, before, out)

    def _object3(self, depth: int) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        if not head & 2:
            index = head >> 2
            if index >= len(self.traits3):
                raise RTMPProtocolError("AMF3: traits reference out of range")
            class_name, dynamic, sealed = self.traits3[index]
        else:
            if head & 4:
                raise RTMPProtocolError("AMF3: externalizable objects are not supported")
            dynamic = bool(head & 8)
            count = head >> 4
            class_name = self.string3()
            self.check_count(count, 1)
            sealed = [self.string3() for _ in range(count)]
            self.traits3.append((class_name, dynamic, sealed))
        slot, before = self._begin3()
        props: dict[str, Any] = {}
        for name in sealed:
            props[name] = self.value3(depth + 1)
        if dynamic:
            while True:
                key = self.string3()
                if key == "":
                    break
                props[key] = self.value3(depth + 1)
        value: Any = TypedObject(class_name, props) if class_name else props
        return self._end3(slot, before, value)

    def _vector_num3(self, marker: int) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        count = head >> 1
        self.u8()  # fixed-length flag
        size = 8 if marker == 0x0F else 4
        self.check_count(count, size)
        fmt = {0x0D: ">i", 0x0E: ">I", 0x0F: ">d"}[marker]
        raw = self.raw(count * size)
        self.count_node(count)
        value = [v for (v,) in struct.iter_unpack(fmt, raw)]
        self.refs3.append([value, count + 1])
        return value

    def _vector_obj3(self, depth: int) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        count = head >> 1
        self.u8()
        self.string3()  # element type name
        self.check_count(count, 1)
        slot, before = self._begin3()
        value = [self.value3(depth + 1) for _ in range(count)]
        return self._end3(slot, before, value)

    def _dict3(self, depth: int) -> Any:
        head = self.u29()
        if not head & 1:
            return self._ref(self.refs3, head >> 1)
        count = head >> 1
        self.u8()  # weak keys
        self.check_count(count, 2)
        slot, before = self._begin3()
        pairs = [(self.value3(depth + 1), self.value3(depth + 1)) for _ in range(count)]
        try:
            value: Any = dict(pairs)
        except TypeError:
            value = pairs
        return self._end3(slot, before, value)


def _run(fn: Any) -> Any:
    """Run one decode call; nesting deeper than the interpreter's stack is bad input.

    Every other way bad bytes can fail is an explicit check raising RTMPProtocolError
    (lengths through ``need``/``check_count``, references, markers, limits), so nothing
    else is caught: any other exception is a bug here. ``max_depth`` stops nesting
    long before the stack ends unless a caller sets it above what the stack holds.
    """
    try:
        return fn()
    except RecursionError:
        raise RTMPProtocolError("AMF: nesting too deep for the stack") from None


def amf0_decode(
    data: bytes,
    offset: int = 0,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> tuple[Any, int]:
    """Decode one AMF0 value at ``offset``; return it and the offset just after it."""
    dec = _Decoder(bytes(data), offset, max_depth, max_nodes)
    value = _run(lambda: dec.value0(0))
    return value, dec.pos


def amf0_decode_all(
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> list[Any]:
    """Decode a sequence of AMF0 values filling ``data`` (a command or data message).

    The reference table is shared across the values of one message, as AMF0 specifies.
    """
    dec = _Decoder(bytes(data), 0, max_depth, max_nodes)

    def loop() -> list[Any]:
        out = []
        while dec.pos < len(dec.data):
            out.append(dec.value0(0))
        return out

    return list(_run(loop))


def amf3_decode(
    data: bytes,
    offset: int = 0,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> tuple[Any, int]:
    """Decode one AMF3 value at ``offset``; return it and the offset just after it."""
    dec = _Decoder(bytes(data), offset, max_depth, max_nodes)
    value = _run(lambda: dec.value3(0))
    return value, dec.pos


# -- encoders -----------------------------------------------------------------------


def _enc_str0(s: str, out: bytearray) -> None:
    raw = s.encode("utf-8", errors="surrogatepass")
    if len(raw) > 0xFFFF:
        raise ValueError("AMF0 property names are limited to 65535 bytes")
    out += _U16.pack(len(raw))
    out += raw


def _enc_props0(props: dict[str, Any], out: bytearray) -> None:
    for key, val in props.items():
        _enc_str0(str(key), out)
        _enc0(val, out)
    out += b"\x00\x00\x09"


def _enc0(v: Any, out: bytearray) -> None:
    if v is None:
        out.append(0x05)
    elif v is UNDEFINED:
        out.append(0x06)
    elif isinstance(v, bool):
        out += b"\x01\x01" if v else b"\x01\x00"
    elif isinstance(v, int | float):
        out.append(0x00)
        out += _DOUBLE.pack(float(v))
    elif isinstance(v, XMLDocument):
        raw = v.encode("utf-8", errors="surrogatepass")
        out.append(0x0F)
        out += _U32.pack(len(raw)) + raw
    elif isinstance(v, str):
        raw = v.encode("utf-8", errors="surrogatepass")
        if len(raw) <= 0xFFFF:
            out.append(0x02)
            out += _U16.pack(len(raw)) + raw
        else:
            out.append(0x0C)
            out += _U32.pack(len(raw)) + raw
    elif isinstance(v, ECMAArray):
        out.append(0x08)
        out += _U32.pack(len(v))
        _enc_props0(v, out)
    elif isinstance(v, dict):
        out.append(0x03)
        _enc_props0(v, out)
    elif isinstance(v, TypedObject):
        out.append(0x10)
        _enc_str0(v.class_name, out)
        _enc_props0(v.properties, out)
    elif isinstance(v, list | tuple):
        out.append(0x0A)
        out += _U32.pack(len(v))
        for item in v:
            _enc0(item, out)
    elif isinstance(v, AMFDate):
        out.append(0x0B)
        out += _DOUBLE.pack(v.milliseconds) + _S16.pack(v.timezone)
    elif isinstance(v, AVMPlus):
        out.append(0x11)
        _enc3(v.value, out)
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as AMF0")


def amf0_encode(*values: Any) -> bytes:
    """Encode values as consecutive AMF0 (how commands and replies are written)."""
    out = bytearray()
    for v in values:
        _enc0(v, out)
    return bytes(out)


def _u29(n: int) -> bytes:
    if not 0 <= n < (1 << 29):
        raise ValueError("U29 out of range")
    if n < 0x80:
        return bytes([n])
    if n < 0x4000:
        return bytes([(n >> 7) | 0x80, n & 0x7F])
    if n < 0x200000:
        return bytes([(n >> 14) | 0x80, ((n >> 7) & 0x7F) | 0x80, n & 0x7F])
    return bytes([(n >> 22) | 0x80, ((n >> 15) & 0x7F) | 0x80, ((n >> 8) & 0x7F) | 0x80, n & 0xFF])


def _enc_str3(s: str, out: bytearray) -> None:
    raw = s.encode("utf-8", errors="surrogatepass")
    out += _u29((len(raw) << 1) | 1)
    out += raw


def _enc3(v: Any, out: bytearray) -> None:
    if v is UNDEFINED:
        out.append(0x00)
    elif v is None:
        out.append(0x01)
    elif v is True:
        out.append(0x03)
    elif v is False:
        out.append(0x02)
    elif isinstance(v, int) and -(1 << 28) <= v < (1 << 28):
        out.append(0x04)
        out += _u29(v & 0x1FFFFFFF)
    elif isinstance(v, int | float):
        out.append(0x05)
        out += _DOUBLE.pack(float(v))
    elif isinstance(v, XMLDocument):
        out.append(0x07)
        _enc_str3(v, out)
    elif isinstance(v, str):
        out.append(0x06)
        _enc_str3(v, out)
    elif isinstance(v, AMFDate):
        out.append(0x08)
        out += b"\x01" + _DOUBLE.pack(v.milliseconds)
    elif isinstance(v, list | tuple):
        out.append(0x09)
        out += _u29((len(v) << 1) | 1) + b"\x01"
        for item in v:
            _enc3(item, out)
    elif isinstance(v, dict | TypedObject):
        props = v.properties if isinstance(v, TypedObject) else v
        name = v.class_name if isinstance(v, TypedObject) else ""
        out.append(0x0A)
        out.append(0x0B)  # inline traits, dynamic, no sealed members
        _enc_str3(name, out)
        for key, val in props.items():
            _enc_str3(str(key), out)
            _enc3(val, out)
        out.append(0x01)
    elif isinstance(v, bytes | bytearray):
        out.append(0x0C)
        out += _u29((len(v) << 1) | 1) + bytes(v)
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as AMF3")


def amf3_encode(value: Any) -> bytes:
    """Encode one value as AMF3 (no reference tables; used by tests and future clients)."""
    out = bytearray()
    _enc3(value, out)
    return bytes(out)


def is_finite_number(v: Any) -> bool:
    """True for AMF numbers usable as integers (no NaN/inf, not bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
