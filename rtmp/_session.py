"""The server side of an RTMP connection, sans-IO (h11 style).

Feed bytes with :meth:`ServerSession.receive_data`, pull events with
:meth:`ServerSession.next_event` while it returns one (``isinstance(event, rtmp.Event)``),
write :meth:`ServerSession.data_to_send` to the socket. When there is no event,
``next_event`` says why with a sentinel: :data:`NEED_DATA` (receive more bytes) or
:data:`PAUSED`. The session answers the protocol on its own (handshake, connect,
createStream, pings, acknowledgements) but never decides whether a publish is allowed:
it emits :class:`PublishRequested` and *pauses* (``next_event`` returns :data:`PAUSED`)
until the caller calls :meth:`accept_publish` or :meth:`reject_publish`.

Connection and stream states move only through the table in :mod:`rtmp._state`.

Bad input raises :class:`RTMPProtocolError`. Parsers check lengths and values before
use; the only low-level exceptions they map, where they read the bytes, are
``RecursionError`` (``_amf._run``) and ``IndexError`` (``_flv.parse_video_tag`` /
``parse_audio_tag``). There is no catch-all: any other exception out of ``next_event``
is a bug of this package and escapes as itself, not disguised as bad input. Either way
the session is failed from then on (further calls raise :class:`RTMPProtocolError`, or
``RuntimeError`` after a bug of ours).

Media and data messages on a message stream that is not an accepted publish (no
publish yet, rejected, or ended) are dropped and counted in ``dropped_messages``: a
client cannot make the session buffer or emit media it did not agree to.

Until the first publish is accepted the peer is unauthenticated, and what it can
make the session do is small and proportional to the bytes it sent: messages are
capped at ``max_message_size_before_publish`` (64 KiB: a connect or publish command
is a few hundred bytes) and partial messages at ``max_buffered_bytes_before_publish``;
aggregate and media messages are dropped before they are unpacked. Afterwards the
``max_*`` caps of :class:`SessionConfig` apply; an aggregate holds at most
``max_aggregate_tags`` tags, so no single message costs an unbounded loop.

Acknowledgements (once the client sets a window) count chunk-stream bytes after the
handshake and are decided at chunk boundaries, so they do not depend on how the input
was split. ``onFCPublish`` is sent on acceptance (not on FCPublish), since only then
is the answer known.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._amf import UNDEFINED, amf0_decode_all, amf0_encode, is_finite_number
from ._chunks import (
    MAX_WIRE_CHUNK_SIZE,
    MSG_ABORT,
    MSG_ACK,
    MSG_AGGREGATE,
    MSG_AMF0_COMMAND,
    MSG_AMF0_DATA,
    MSG_AMF3_COMMAND,
    MSG_AMF3_DATA,
    MSG_AUDIO,
    MSG_SET_CHUNK_SIZE,
    MSG_SET_PEER_BANDWIDTH,
    MSG_USER_CONTROL,
    MSG_VIDEO,
    MSG_WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    RTMPMessage,
)
from ._errors import RTMPProtocolError
from ._events import (
    CommandReceived,
    Connected,
    Event,
    HandshakeComplete,
    PingResponse,
    PublishRequested,
    StreamEnded,
    UnknownMessage,
)
from ._flv import iter_tags, parse_audio_tag, parse_video_tag, script_event
from ._handshake import HANDSHAKE_SIZE, server_hello
from ._state import NEED_DATA, PAUSED, ConnState, StreamState, Trigger, allowed, transition

__all__ = ["STATUS_BAD_NAME", "STATUS_DENIED", "ServerSession", "SessionConfig"]

STATUS_BAD_NAME = "NetStream.Publish.BadName"
STATUS_DENIED = "NetStream.Publish.Denied"

_U32 = struct.Struct(">I")
_UC_STREAM_BEGIN = 0
_UC_PING_REQUEST = 6
_UC_PING_RESPONSE = 7
_CSID_CONTROL = 2
_CSID_COMMAND = 3
_CSID_STREAM = 5
_HANDSHAKE = frozenset({ConnState.AWAIT_C0C1, ConnState.AWAIT_C2})
_MAX_ECHOED_FOURCCS = 64


@dataclass(frozen=True)
class SessionConfig:
    """Limits and announced parameters of a :class:`ServerSession`.

    ``randbytes`` provides the handshake's random bytes (inject a deterministic one in
    tests). The ``max_*`` caps bound memory whatever the peer sends.
    """

    max_chunk_size: int = MAX_WIRE_CHUNK_SIZE
    min_chunk_size: int = 128
    max_message_size: int = 8 * 1024 * 1024
    max_message_size_before_publish: int = 64 * 1024
    max_buffered_bytes_before_publish: int = 256 * 1024
    max_aggregate_tags: int = 1024
    max_chunk_streams: int = 64
    max_buffered_bytes: int = 16 * 1024 * 1024
    max_receive_buffer: int = 16 * 1024 * 1024
    max_streams: int = 8
    max_amf_depth: int = 32
    max_amf_nodes: int = 20_000
    out_chunk_size: int = 4096
    window_ack_size: int = 5_000_000
    peer_bandwidth: int = 5_000_000
    fms_version: str = "FMS/3,0,1,123"
    randbytes: Callable[[int], bytes] = os.urandom


class _Stream:
    """A message stream created by createStream."""

    __slots__ = ("key", "name", "state")

    def __init__(self) -> None:
        self.state = StreamState.IDLE
        self.name = ""
        self.key = ""


class ServerSession:
    """One RTMP connection, server side (encoders publish to it)."""

    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        self._hs_buf = bytearray()
        self._state = ConnState.AWAIT_C0C1
        self._digest = False
        cfg = self.config
        self._reader = ChunkReader(
            max_chunk_size=cfg.max_chunk_size,
            min_chunk_size=cfg.min_chunk_size,
            max_message_size=min(cfg.max_message_size, cfg.max_message_size_before_publish),
            max_chunk_streams=cfg.max_chunk_streams,
            max_buffered_bytes=min(cfg.max_buffered_bytes,
                                   cfg.max_buffered_bytes_before_publish),
            pause_on_ack=True,
        )
        self._authenticated = False  # a publish was accepted: the full caps apply
        self._writer = ChunkWriter(128)
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._failed = ""  # why the session is FAILED
        self._failure: type[Exception] = RTMPProtocolError  # RuntimeError: a bug of ours
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._pending: int | None = None
        self._fcpublished: set[str] = set()
        self.app = ""
        self.tc_url = ""
        self.dropped_messages = 0
        self.handshake_bytes = 0

    # -- public API -----------------------------------------------------------------------
    @property
    def bytes_received(self) -> int:
        """Bytes parsed so far (handshake included)."""
        return self.handshake_bytes + self._reader.bytes_consumed

    @property
    def pending_publish(self) -> int | None:
        """Stream id of a publish waiting for accept/reject (events are paused)."""
        return self._pending

    @property
    def publishing_streams(self) -> tuple[int, ...]:
        """Ids of accepted, not yet ended publishes."""
        return tuple(i for i, s in self._streams.items() if s.state is StreamState.PUBLISHING)

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the socket (parsing happens in :meth:`next_event`)."""
        self._check_alive()
        if self._state in _HANDSHAKE:
            self._hs_buf += data
            size = len(self._hs_buf)
        else:
            self._reader.feed(data)
            size = self._reader.pending_bytes
        if size > self.config.max_receive_buffer:
            self._fail("receive buffer overflow (next_event not called, or paused)")

    def next_event(self) -> Event | type[NEED_DATA] | type[PAUSED]:
        """The next event; else :data:`NEED_DATA` (more bytes needed) or :data:`PAUSED`.

        :data:`PAUSED` means a publish awaits :meth:`accept_publish` or
        :meth:`reject_publish`: nothing more is parsed until one is called. Loop with
        ``while isinstance(event := session.next_event(), rtmp.Event):``.

        Raises :class:`RTMPProtocolError` on bad input. Any other exception is a bug of
        ours and escapes as itself; either way the session is failed from then on.
        """
        self._check_alive()
        try:
            while not self._events:
                if self._pending is not None:
                    return PAUSED
                if self._state in _HANDSHAKE:
                    if not self._handshake():
                        return NEED_DATA
                    continue
                msg = self._reader.next_message()
                ack = self._reader.take_ack()
                if ack is not None:
                    self._send(_CSID_CONTROL, MSG_ACK, 0, _U32.pack(ack))
                if msg is None:
                    if ack is not None:
                        continue  # paused at an ack, not out of bytes
                    return NEED_DATA
                self._handle(msg)
        except RTMPProtocolError as exc:
            self._set_failed(str(exc), RTMPProtocolError)
            raise
        except BaseException as exc:  # a bug of ours: out as itself, but never parse on
            self._set_failed(f"internal error ({type(exc).__name__}: {exc})", RuntimeError)
            raise
        return self._events.popleft()

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (empties the buffer)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def accept_publish(self, stream_id: int | None = None) -> None:
        """Accept the pending publish: Stream Begin, onStatus Publish.Start, onFCPublish."""
        st, sid = self._answer(Trigger.ACCEPT, stream_id)
        if not self._authenticated:
            self._authenticated = True
            self._reader.max_message_size = self.config.max_message_size
            self._reader.max_buffered_bytes = self.config.max_buffered_bytes
        self._send(_CSID_CONTROL, MSG_USER_CONTROL, 0, struct.pack(">HI", _UC_STREAM_BEGIN, sid))
        self._status(
            sid,
            "status",
            "NetStream.Publish.Start",
            f"{st.name} is now published.",
            details=st.name,
        )
        if st.name in self._fcpublished:
            self._command(
                0,
                "onFCPublish",
                0,
                None,
                {"code": "NetStream.Publish.Start", "description": st.name},
            )

    def reject_publish(
        self, description: str, *, code: str = STATUS_BAD_NAME, stream_id: int | None = None
    ) -> None:
        """Refuse the pending publish with an error onStatus (``code`` e.g. BadName/Denied).

        Media on the stream is dropped afterwards; callers usually close the connection
        once :meth:`data_to_send` is flushed.
        """
        _, sid = self._answer(Trigger.REJECT, stream_id)
        self._status(sid, "error", code, description)

    def send_ping(self, timestamp: int) -> None:
        """Send a User Control Ping Request; the answer arrives as :class:`PingResponse`."""
        self._send(
            _CSID_CONTROL,
            MSG_USER_CONTROL,
            0,
            struct.pack(">HI", _UC_PING_REQUEST, timestamp & 0xFFFFFFFF),
        )

    # -- internals ------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._state is ConnState.FAILED:
            raise self._failure(f"session already failed: {self._failed}")

    def _to(self, trigger: Trigger) -> None:
        self._state = transition(self._state, trigger, "connection")

    def _set_failed(self, reason: str, failure: type[Exception]) -> None:
        self._to(Trigger.FAIL)
        self._failed, self._failure = reason, failure

    def _fail(self, reason: str) -> None:
        self._set_failed(reason, RTMPProtocolError)
        raise RTMPProtocolError(reason)

    def _answer(self, trigger: Trigger, stream_id: int | None) -> tuple[_Stream, int]:
        """Move the pending publish's stream by the caller's ``trigger``; unpause."""
        sid = self._pending
        if sid is None or (stream_id is not None and stream_id != sid):
            raise RuntimeError("no such publish is waiting for an answer")
        st = self._streams[sid]
        st.state = transition(st.state, trigger, f"stream {sid}")
        self._pending = None
        return st, sid

    def _handshake(self) -> bool:
        buf = self._hs_buf
        if self._state is ConnState.AWAIT_C0C1:
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return False
            reply, self._digest = server_hello(
                bytes(buf[: 1 + HANDSHAKE_SIZE]), self.config.randbytes
            )
            del buf[: 1 + HANDSHAKE_SIZE]
            self.handshake_bytes += 1 + HANDSHAKE_SIZE
            self._out += reply
            self._to(Trigger.C0C1)
        if len(buf) < HANDSHAKE_SIZE:
            return False
        # C2 is not checked: real clients echo S1 in various approximate ways
        del buf[:HANDSHAKE_SIZE]
        self.handshake_bytes += HANDSHAKE_SIZE
        self._to(Trigger.C2)
        self._reader.feed(bytes(buf))
        self._hs_buf = bytearray()
        self._events.append(HandshakeComplete(self._digest))
        return True

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._out += self._writer.write(csid, type_id, stream_id, 0, payload)

    def _command(self, stream_id: int, name: str, txn: float, *values: Any) -> None:
        csid = _CSID_STREAM if stream_id else _CSID_COMMAND
        self._send(csid, MSG_AMF0_COMMAND, stream_id, amf0_encode(name, float(txn), *values))

    def _status(self, sid: int, level: str, code: str, description: str, **extra: Any) -> None:
        info = {"level": level, "code": code, "description": description, **extra}
        self._command(sid, "onStatus", 0, None, info)

    def _decode(self, payload: bytes) -> list[Any]:
        return amf0_decode_all(
            payload, max_depth=self.config.max_amf_depth, max_nodes=self.config.max_amf_nodes
        )

    def _handle(self, msg: RTMPMessage, *, nested: bool = False) -> None:
        t = msg.type_id
        if t in (MSG_SET_CHUNK_SIZE, MSG_ABORT, MSG_ACK, MSG_SET_PEER_BANDWIDTH):
            return  # chunk size / abort already applied by the reader
        if t == MSG_WINDOW_ACK_SIZE:
            if len(msg.payload) < 4:
                raise RTMPProtocolError("truncated Window Acknowledgement Size")
            self._reader.ack_window = _U32.unpack_from(msg.payload)[0] or None
        elif t == MSG_USER_CONTROL:
            self._user_control(msg.payload)
        elif t in (MSG_AMF0_COMMAND, MSG_AMF3_COMMAND):
            payload = msg.payload[1:] if t == MSG_AMF3_COMMAND else msg.payload
            self._on_command(msg.stream_id, self._decode(payload))
        elif t in (MSG_AUDIO, MSG_VIDEO, MSG_AMF0_DATA, MSG_AMF3_DATA):
            self._on_media(msg)
        elif t == MSG_AGGREGATE and not nested:
            self._on_aggregate(msg)
        else:
            self._events.append(UnknownMessage(t, msg.stream_id, msg.timestamp, len(msg.payload)))

    def _user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise RTMPProtocolError("truncated User Control message")
        kind = (payload[0] << 8) | payload[1]
        if kind == _UC_PING_REQUEST:
            if len(payload) < 6:
                raise RTMPProtocolError("truncated Ping Request")
            self._send(
                _CSID_CONTROL,
                MSG_USER_CONTROL,
                0,
                struct.pack(">H", _UC_PING_RESPONSE) + payload[2:6],
            )
        elif kind == _UC_PING_RESPONSE:
            if len(payload) < 6:
                raise RTMPProtocolError("truncated Ping Response")
            self._events.append(PingResponse(_U32.unpack_from(payload, 2)[0]))
        # Stream Begin/EOF/Dry, Set Buffer Length...: nothing for a server to do

    def _on_aggregate(self, msg: RTMPMessage) -> None:
        st = self._streams.get(msg.stream_id)
        if st is None or st.state is not StreamState.PUBLISHING:
            self.dropped_messages += 1  # not unpacked: nobody agreed to this media
            return
        tags = iter_tags(msg.payload, max_tags=self.config.max_aggregate_tags)
        if not tags:
            return
        base = tags[0].timestamp
        for tag in tags:
            diff = (tag.timestamp - base) & 0xFFFFFFFF
            if diff >= 0x80000000:
                diff -= 0x100000000
            sub = RTMPMessage(
                tag.tag_type, msg.stream_id, msg.timestamp + diff, tag.data, msg.chunk_stream_id
            )
            self._handle(sub, nested=True)

    def _on_media(self, msg: RTMPMessage) -> None:
        st = self._streams.get(msg.stream_id)
        if st is None or st.state is not StreamState.PUBLISHING:
            self.dropped_messages += 1
            return
        sid, ts = msg.stream_id, msg.timestamp
        if msg.type_id == MSG_VIDEO:
            self._events.extend(parse_video_tag(msg.payload, ts, stream_id=sid))
        elif msg.type_id == MSG_AUDIO:
            self._events.extend(parse_audio_tag(msg.payload, ts, stream_id=sid))
        else:
            payload = msg.payload[1:] if msg.type_id == MSG_AMF3_DATA else msg.payload
            values = self._decode(payload)
            if values:
                self._events.append(script_event(values, ts, sid))

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, stream_id: int, values: list[Any]) -> None:
        if not values or not isinstance(values[0], str):
            raise RTMPProtocolError("command message without a name")
        name = values[0]
        txn = values[1] if len(values) > 1 and is_finite_number(values[1]) else 0.0
        cmd_obj = values[2] if len(values) > 2 else None
        args = values[3:]
        if name == "connect":
            self._on_connect(txn, cmd_obj, args)
            return
        if self._state is not ConnState.CONNECTED:
            raise RTMPProtocolError(f"command {name!r} before connect")
        if name in ("releaseStream", "FCPublish"):
            if (
                name == "FCPublish"
                and args
                and isinstance(args[0], str)
                and len(self._fcpublished) < self.config.max_streams
            ):
                self._fcpublished.add(args[0])
            if txn:
                self._command(0, "_result", txn, None, UNDEFINED)
        elif name == "createStream":
            self._on_create_stream(txn)
        elif name == "publish":
            self._on_publish(stream_id, txn, args)
        elif name == "FCUnpublish":
            target = args[0] if args and isinstance(args[0], str) else None
            for sid, st in self._streams.items():
                if allowed(st.state, Trigger.UNPUBLISH) and target in (st.name, st.key):
                    self._end(sid, st, "FCUnpublish")
            if txn:
                self._command(0, "_result", txn, None, UNDEFINED)
        elif name == "closeStream":
            st = self._streams.get(stream_id)
            if st is not None and allowed(st.state, Trigger.UNPUBLISH):
                self._end(stream_id, st, "closeStream")
        elif name == "deleteStream":
            raw = args[0] if args else None
            sid = int(raw) if is_finite_number(raw) and 0 <= raw < 2**32 else stream_id
            st = self._streams.get(sid)
            if st is not None:
                if allowed(st.state, Trigger.UNPUBLISH):
                    self._end(sid, st, "deleteStream")
                del self._streams[sid]
        else:
            self._events.append(CommandReceived(name, float(txn), cmd_obj, tuple(args), stream_id))

    def _on_connect(self, txn: float, cmd_obj: Any, args: list[Any]) -> None:
        self._to(Trigger.CONNECT)  # a second connect is the peer's error
        props: dict[str, Any] = cmd_obj if isinstance(cmd_obj, dict) else {}

        def text(key: str) -> str:
            v = props.get(key)
            return v if isinstance(v, str) else ""

        enc = props.get("objectEncoding")
        object_encoding = int(enc) if is_finite_number(enc) and enc in (0, 3) else 0
        fourccs = props.get("fourCcList")
        fourcc_list = (
            tuple(x for x in fourccs if isinstance(x, str)) if isinstance(fourccs, list) else None
        )
        vmap = props.get("videoFourCcInfoMap")
        amap = props.get("audioFourCcInfoMap")
        caps = props.get("capsEx")
        caps_ex = int(caps) if is_finite_number(caps) and 0 <= caps < 2**32 else None
        self.app = text("app")
        self.tc_url = text("tcUrl")

        cfg = self.config
        self._send(_CSID_CONTROL, MSG_WINDOW_ACK_SIZE, 0, _U32.pack(cfg.window_ack_size))
        self._send(
            _CSID_CONTROL, MSG_SET_PEER_BANDWIDTH, 0, _U32.pack(cfg.peer_bandwidth) + b"\x02"
        )
        self._out += self._writer.set_chunk_size(cfg.out_chunk_size)
        result: dict[str, Any] = {"fmsVer": cfg.fms_version, "capabilities": 31.0, "mode": 1.0}
        if fourcc_list is not None:
            result["fourCcList"] = _fourccs(fourcc_list)
        if isinstance(vmap, dict):
            result["videoFourCcInfoMap"] = _fourcc_masks(vmap)
        if isinstance(amap, dict):
            result["audioFourCcInfoMap"] = _fourcc_masks(amap)
        if caps_ex is not None:
            result["capsEx"] = float(caps_ex & 0x06)  # multitrack + ModEx parsing
        info = {
            "level": "status",
            "code": "NetConnection.Connect.Success",
            "description": "Connection succeeded.",
            "objectEncoding": float(object_encoding),
        }
        self._command(0, "_result", txn or 1.0, result, info)
        self._events.append(
            Connected(
                self.app,
                self.tc_url,
                text("flashVer"),
                object_encoding,
                fourcc_list,
                dict(vmap) if isinstance(vmap, dict) else None,
                dict(amap) if isinstance(amap, dict) else None,
                caps_ex,
                dict(props),
            )
        )

    def _on_create_stream(self, txn: float) -> None:
        if len(self._streams) >= self.config.max_streams:
            self._command(
                0,
                "_error",
                txn,
                None,
                {
                    "level": "error",
                    "code": "NetConnection.Call.Failed",
                    "description": "too many streams",
                },
            )
            return
        sid = self._next_stream_id
        self._next_stream_id += 1
        self._streams[sid] = _Stream()
        self._command(0, "_result", txn, None, float(sid))

    def _on_publish(self, stream_id: int, txn: float, args: list[Any]) -> None:
        st = self._streams.get(stream_id)
        if st is None:
            raise RTMPProtocolError(f"publish on stream {stream_id} that was not created")
        name = args[0] if args and isinstance(args[0], str) else ""
        ptype = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
        path, _, query = name.partition("?")
        key = path.rsplit("/", 1)[-1]
        trigger = Trigger.PUBLISH if key else Trigger.PUBLISH_WITHOUT_KEY
        st.state = transition(st.state, trigger, f"stream {stream_id}")
        st.name, st.key = name, key
        if not key:
            self._status(stream_id, "error", STATUS_BAD_NAME, "missing stream key")
            return
        self._pending = stream_id
        self._events.append(PublishRequested(stream_id, key, name, ptype, self.app, query))

    def _end(self, sid: int, st: _Stream, reason: str) -> None:
        st.state = transition(st.state, Trigger.UNPUBLISH, f"stream {sid}")
        self._status(sid, "status", "NetStream.Unpublish.Success", f"{st.name} is now unpublished.")
        self._events.append(StreamEnded(sid, st.key, reason))


# -- what the connect reply echoes ---------------------------------------------------------
# E-RTMP capabilities are FourCCs ("*" for any) and, in the info maps, FourCcInfoMask
# numbers. Only such entries are echoed: the peer's own values may not be encodable as
# AMF0 (an AMF3 ByteArray, a key over 65535 bytes) or may expand on encoding (AMF3
# string references), so echoing them as they are would fail or blow up the reply.


def _is_fourcc(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 4


def _fourccs(values: tuple[str, ...]) -> list[str]:
    return [x for x in values if _is_fourcc(x)][:_MAX_ECHOED_FOURCCS]


def _fourcc_masks(info_map: dict[Any, Any]) -> dict[str, float]:
    masks = {k: float(v) for k, v in info_map.items() if _is_fourcc(k) and is_finite_number(v)}
    return dict(list(masks.items())[:_MAX_ECHOED_FOURCCS])
