"""RTMP chunk stream: an incremental reader and a writer.

Reader decisions (documented because peers disagree):

* **Type-3 extended timestamps.** The spec (2012) says a type-3 chunk repeats the 4-byte
  extended timestamp when the last type 0/1/2 header of its chunk stream had one; FMLE,
  FFmpeg and OBS do, some librtmp builds do not. Like SRS/FFmpeg-compatible servers we
  *peek*: if the next 4 bytes equal the stored extended value they are the field,
  otherwise they are payload. (A payload that starts with exactly those bytes from a
  non-repeating encoder is indistinguishable; no real peer has been seen doing that.
  The peek waits for 4 bytes, so such a chunk is only parsed once more data follows.)
* **Type 3 after type 0** starting a new message adds the type-0 timestamp field as the
  delta, as FFmpeg, SRS and nginx-rtmp do.
* **Set Chunk Size** above 0xFFFFFF is clamped to 0xFFFFFF: the spec says all larger
  sizes are equivalent (no message exceeds 0xFFFFFF bytes), so parsing is unchanged and
  2^31-1 is accepted. A value above ``max_chunk_size`` (after clamping), below
  ``min_chunk_size`` (``ServerSession`` uses 128, the protocol's initial size, which
  encoders only ever raise: smaller chunks only multiply the headers to parse), or with
  bit 31 set is a protocol error.
* **64-bit timestamps.** Wire timestamps are 32-bit; each message stream keeps a 64-bit
  clock advanced by the signed 32-bit difference to its previous media/data message
  (control and command messages do not move it), so time keeps increasing past 2^32 ms
  (and past the 24-bit/4h40m extended-timestamp boundary); the first media timestamp
  is taken as is.
* **Bounds.** Message size, the number of chunk streams, the bytes held in partial
  messages and the number of message streams are all capped; payload bytes are copied
  as they arrive, so unparsed input never exceeds one chunk header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._errors import RTMPProtocolError

__all__ = [
    "MSG_ABORT",
    "MSG_ACK",
    "MSG_AGGREGATE",
    "MSG_AMF0_COMMAND",
    "MSG_AMF0_DATA",
    "MSG_AMF3_COMMAND",
    "MSG_AMF3_DATA",
    "MSG_AUDIO",
    "MSG_SET_CHUNK_SIZE",
    "MSG_SET_PEER_BANDWIDTH",
    "MSG_USER_CONTROL",
    "MSG_VIDEO",
    "MSG_WINDOW_ACK_SIZE",
    "ChunkReader",
    "ChunkWriter",
    "RTMPMessage",
]

MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2
MSG_ACK = 3
MSG_USER_CONTROL = 4
MSG_WINDOW_ACK_SIZE = 5
MSG_SET_PEER_BANDWIDTH = 6
MSG_AUDIO = 8
MSG_VIDEO = 9
MSG_AMF3_DATA = 15
MSG_AMF3_SHARED_OBJECT = 16
MSG_AMF3_COMMAND = 17
MSG_AMF0_DATA = 18
MSG_AMF0_SHARED_OBJECT = 19
MSG_AMF0_COMMAND = 20
MSG_AGGREGATE = 22

_CLOCKLESS_TYPES = frozenset({1, 2, 3, 4, 5, 6, 17, 20})
MAX_WIRE_CHUNK_SIZE = 0xFFFFFF
_EXT = 0xFFFFFF
_U32_MASK = 0xFFFFFFFF
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class RTMPMessage:
    """One reassembled RTMP message; ``timestamp`` is in ms, extended to 64 bits."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    chunk_stream_id: int = 0


class _InStream:
    """Per chunk-stream header state of the reader."""

    __slots__ = ("buf", "has_ext", "length", "stream_id", "timestamp", "ts_field", "type_id")

    def __init__(self) -> None:
        self.timestamp = 0  # 32-bit wire timestamp of the current message
        self.ts_field = 0  # last timestamp / delta field (after extension)
        self.has_ext = False
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.buf: bytearray | None = None  # partial payload while a message is in flight


class ChunkReader:
    """Reassemble RTMP messages from chunk bytes, one message per :meth:`next_message`.

    Parsing is lazy: Set Chunk Size takes effect for the very next chunk even when the
    caller fed many messages at once. Set Chunk Size and Abort are applied here (and
    still returned), so a reader alone follows a writer.
    """

    def __init__(
        self,
        *,
        max_chunk_size: int = MAX_WIRE_CHUNK_SIZE,
        min_chunk_size: int = 1,
        max_message_size: int = 8 * 1024 * 1024,
        max_chunk_streams: int = 64,
        max_buffered_bytes: int = 16 * 1024 * 1024,
        max_message_streams: int = 64,
        pause_on_ack: bool = False,
    ) -> None:
        self.max_chunk_size = max_chunk_size
        self.min_chunk_size = min_chunk_size
        # stop parsing at a chunk boundary where an ack fell due, so the caller takes every
        # ack (none is overwritten by a later one) whatever the read sizes were
        self.pause_on_ack = pause_on_ack
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_buffered_bytes = max_buffered_bytes
        self.max_message_streams = max_message_streams
        self.chunk_size = 128
        self.bytes_consumed = 0
        self.ack_window: int | None = None
        self._last_ack = 0
        self._ack_due: int | None = None
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _InStream] = {}
        self._buffered = 0
        self._cur: _InStream | None = None  # stream whose chunk data we are copying
        self._cur_csid = 0
        self._chunk_left = 0
        self._clocks: dict[int, int] = {}

    # -- input --------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Append received bytes; parsing happens in :meth:`next_message`."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not parsed yet."""
        return len(self._buf) - self._pos

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in partially received messages."""
        return self._buffered

    def take_ack(self) -> int | None:
        """The Acknowledgement sequence number due (window crossed), at most once."""
        due, self._ack_due = self._ack_due, None
        return due

    def set_chunk_size(self, size: int) -> None:
        """Apply a peer's Set Chunk Size (clamped and capped as the module docs say)."""
        if size <= 0 or size > 0x7FFFFFFF:
            raise RTMPProtocolError(f"invalid chunk size {size}")
        size = min(size, MAX_WIRE_CHUNK_SIZE)
        if size < self.min_chunk_size:
            raise RTMPProtocolError(
                f"chunk size {size} below the minimum {self.min_chunk_size}"
            )
        if size > self.max_chunk_size:
            raise RTMPProtocolError(
                f"chunk size {size} above the configured cap {self.max_chunk_size}"
            )
        self.chunk_size = size

    def abort(self, csid: int) -> None:
        """Drop the partial message of chunk stream ``csid`` (Abort message)."""
        st = self._streams.get(csid)
        if st is not None and st.buf is not None:
            self._buffered -= len(st.buf)
            st.buf = None
            if self._cur is st:
                self._cur = None
                self._chunk_left = 0

    # -- parsing ------------------------------------------------------------------------
    def next_message(self) -> RTMPMessage | None:
        """Parse until one whole message is available; None when more bytes are needed."""
        while True:
            if self._cur is not None:
                msg = self._copy_chunk_data()
                if msg is not None:
                    self._apply_control(msg)
                    return msg
                if self._cur is not None:
                    return None  # chunk data still incomplete
                if self.pause_on_ack and self._ack_due is not None:
                    return None  # let the caller take this ack first
                continue
            if not self._parse_header():
                return None
            if self._cur is None:
                continue
            if self._chunk_left == 0:
                msg = self._complete(self._cur_csid, self._cur)
                self._cur = None
                self._apply_control(msg)
                return msg

    def _apply_control(self, msg: RTMPMessage) -> None:
        if msg.type_id == MSG_SET_CHUNK_SIZE and msg.stream_id == 0:
            if len(msg.payload) < 4:
                raise RTMPProtocolError("truncated Set Chunk Size")
            self.set_chunk_size(_U32.unpack_from(msg.payload)[0])
        elif msg.type_id == MSG_ABORT and msg.stream_id == 0:
            if len(msg.payload) < 4:
                raise RTMPProtocolError("truncated Abort")
            self.abort(_U32.unpack_from(msg.payload)[0])

    def _consumed(self, n: int) -> None:
        self._pos += n
        self.bytes_consumed += n

    def _check_ack(self) -> None:
        """Called at each chunk boundary, so the sequence numbers do not depend on splits."""
        window = self.ack_window
        if window and self.bytes_consumed - self._last_ack >= window:
            self._last_ack = self.bytes_consumed
            self._ack_due = self.bytes_consumed & _U32_MASK

    def _copy_chunk_data(self) -> RTMPMessage | None:
        st = self._cur
        assert st is not None and st.buf is not None
        avail = len(self._buf) - self._pos
        n = min(avail, self._chunk_left)
        if n:
            st.buf += self._buf[self._pos : self._pos + n]
            self._buffered += n
            self._consumed(n)
            self._chunk_left -= n
        if self._chunk_left:
            return None
        self._cur = None
        self._check_ack()
        if len(st.buf) >= st.length:
            return self._complete(self._cur_csid, st)
        return None

    def _parse_header(self) -> bool:
        """Parse one chunk header if complete; start its data. False if more bytes needed."""
        buf = self._buf
        p = self._pos
        end = len(buf)
        if p >= end:
            return False
        b0 = buf[p]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p += 1
        if csid == 0:
            if p + 1 > end:
                return False
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:
            if p + 2 > end:
                return False
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2
        mh = (11, 7, 3, 0)[fmt]
        if p + mh > end:
            return False
        st = self._streams.get(csid)
        if st is None:
            if fmt != 0:
                raise RTMPProtocolError(f"chunk stream {csid} starts with a type-{fmt} header")
            if len(self._streams) >= self.max_chunk_streams:
                raise RTMPProtocolError("too many chunk streams")
            st = _InStream()
            new_stream = True
        else:
            new_stream = False
        in_flight = st.buf is not None
        if fmt != 3 and in_flight:
            raise RTMPProtocolError(f"new header on chunk stream {csid} inside a message")
        if fmt == 3:
            ts_field = st.ts_field
            ext = st.has_ext
        else:
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            ext = ts_field == _EXT
        q = p + mh
        if ext:
            if q + 4 > end:
                return False
            wire = _U32.unpack_from(buf, q)[0]
            if fmt != 3:
                ts_field = wire
                q += 4
            elif wire == st.ts_field:
                q += 4  # repeated extended timestamp (spec); absent otherwise
        # header complete: commit
        if fmt == 0:
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            st.type_id = buf[p + 6]
            st.stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
            st.length = length
            st.timestamp = ts_field
        elif fmt == 1:
            st.length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            st.type_id = buf[p + 6]
            st.timestamp = (st.timestamp + ts_field) & _U32_MASK
        elif fmt == 2 or not in_flight:
            st.timestamp = (st.timestamp + ts_field) & _U32_MASK
        if fmt != 3:
            st.ts_field = ts_field
            st.has_ext = ext
        if st.length > self.max_message_size:
            raise RTMPProtocolError(
                f"message of {st.length} bytes above the cap {self.max_message_size}"
            )
        if new_stream:
            self._streams[csid] = st
        self._consumed(q - self._pos)
        if not in_flight:
            st.buf = bytearray()
        assert st.buf is not None
        left = st.length - len(st.buf)
        if left > self.max_buffered_bytes - self._buffered:
            raise RTMPProtocolError("too many bytes buffered in partial messages")
        self._chunk_left = min(self.chunk_size, left)
        self._cur = st
        self._cur_csid = csid
        if self._chunk_left == 0:
            self._check_ack()
        return True

    def _complete(self, csid: int, st: _InStream) -> RTMPMessage:
        payload = bytes(st.buf or b"")
        self._buffered -= len(payload)
        st.buf = None
        return RTMPMessage(st.type_id, st.stream_id, self._extend(st), payload, csid)

    def _extend(self, st: _InStream) -> int:
        """Extend the 32-bit wire timestamp to 64 bits on the message stream's clock.

        Protocol control and command messages (usually stamped 0) are placed on the
        clock but do not move it, so an encoder whose media starts at a large timestamp
        after a publish at 0 does not get negative times.
        """
        t32 = st.timestamp
        prev = self._clocks.get(st.stream_id)
        if prev is None:
            ts = t32
        else:
            diff = (t32 - prev) & _U32_MASK
            if diff >= 0x80000000:
                diff -= 0x100000000
            ts = prev + diff
        if st.type_id not in _CLOCKLESS_TYPES:
            if prev is None and len(self._clocks) >= self.max_message_streams:
                raise RTMPProtocolError("too many message streams")
            self._clocks[st.stream_id] = ts
        return ts


class _OutStream:
    __slots__ = ("delta", "length", "stream_id", "timestamp", "type_id")

    def __init__(self, stream_id: int, type_id: int, length: int, ts: int, delta: int) -> None:
        self.stream_id = stream_id
        self.type_id = type_id
        self.length = length
        self.timestamp = ts
        self.delta = delta


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes([(fmt << 6) | csid])
    if 64 <= csid <= 319:
        return bytes([fmt << 6, csid - 64])
    if 320 <= csid <= 65599:
        v = csid - 64
        return bytes([(fmt << 6) | 1, v & 0xFF, v >> 8])
    raise ValueError(f"chunk stream id {csid} out of range")


class ChunkWriter:
    """Split messages into chunks, choosing the smallest header type that is correct.

    ``repeat_extended_timestamp=False`` omits the extended timestamp from type-3
    chunks, like some librtmp builds: useful to test readers.
    """

    def __init__(self, chunk_size: int = 128, *, repeat_extended_timestamp: bool = True) -> None:
        self.chunk_size = chunk_size
        self.repeat_extended_timestamp = repeat_extended_timestamp
        self._streams: dict[int, _OutStream] = {}

    def set_chunk_size(self, size: int, *, csid: int = 2) -> bytes:
        """Encode a Set Chunk Size message, then use ``size`` for what follows."""
        if not 1 <= size <= 0x7FFFFFFF:
            raise ValueError("chunk size out of range")
        out = self.write(csid, MSG_SET_CHUNK_SIZE, 0, 0, _U32.pack(size))
        self.chunk_size = min(size, MAX_WIRE_CHUNK_SIZE)
        return out

    def write(
        self,
        csid: int,
        type_id: int,
        stream_id: int,
        timestamp: int,
        payload: bytes,
        *,
        force_fmt0: bool = False,
    ) -> bytes:
        """Encode one message (``timestamp`` may exceed 32 bits; it is sent mod 2^32)."""
        length = len(payload)
        if length > 0xFFFFFF:
            raise ValueError("RTMP messages are limited to 16777215 bytes")
        prev = self._streams.get(csid)
        delta = timestamp - prev.timestamp if prev is not None else -1
        if force_fmt0 or prev is None or prev.stream_id != stream_id or not 0 <= delta < 0x80000000:
            fmt = 0
            field = timestamp & _U32_MASK
        elif prev.type_id != type_id or prev.length != length:
            fmt, field = 1, delta
        elif prev.delta != delta:
            fmt, field = 2, delta
        else:
            fmt, field = 3, delta
        ext = field >= _EXT
        out = bytearray(_basic_header(fmt, csid))
        if fmt != 3:
            out += (min(field, _EXT)).to_bytes(3, "big")
            if fmt <= 1:
                out += length.to_bytes(3, "big") + bytes([type_id])
            if fmt == 0:
                out += stream_id.to_bytes(4, "little")
            if ext:
                out += _U32.pack(field)
        elif ext and self.repeat_extended_timestamp:
            out += _U32.pack(field)
        cont = _basic_header(3, csid)
        if ext and self.repeat_extended_timestamp:
            cont += _U32.pack(field)
        size = self.chunk_size
        out += payload[:size]
        for i in range(size, length, size):
            out += cont
            out += payload[i : i + size]
        self._streams[csid] = _OutStream(stream_id, type_id, length, timestamp, field)
        return bytes(out)
