"""Test-only scripted RTMP client: builds client bytes and decodes the server's replies."""

from __future__ import annotations

import struct
from typing import Any

from _rtmp_peer import det_random

import rtmp
from rtmp._chunks import (
    MSG_AMF0_COMMAND,
    MSG_AMF0_DATA,
    MSG_AUDIO,
    MSG_USER_CONTROL,
    MSG_VIDEO,
)
from rtmp._handshake import client_c2, client_hello


class FakeClient:
    """Drives a ServerSession the way FFmpeg/OBS do, collecting events and replies."""

    def __init__(
        self,
        config: rtmp.SessionConfig | None = None,
        *,
        digest: bool = True,
        chunk_size: int = 128,
        auto_accept: bool = True,
    ) -> None:
        self.session = rtmp.ServerSession(config or rtmp.SessionConfig(randbytes=det_random()))
        self.writer = rtmp.ChunkWriter(128)
        self.reader = rtmp.ChunkReader()
        self.events: list[rtmp.Event] = []
        self.replies: list[rtmp.RTMPMessage] = []
        self.auto_accept = auto_accept
        self.sent = bytearray()
        self._rand = det_random(b"client")
        self._handshake(digest)
        if chunk_size != 128:
            self.send_raw(self.writer.set_chunk_size(chunk_size))

    def _handshake(self, digest: bool) -> None:
        c0c1 = client_hello(self._rand, digest=digest)
        self.sent += c0c1
        self.session.receive_data(c0c1)
        assert self.session.next_event() is rtmp.NEED_DATA
        s0s1s2 = self.session.data_to_send()
        assert len(s0s1s2) == 1 + 2 * 1536
        assert rtmp._handshake.verify_server_hello(c0c1, s0s1s2)
        self.send_raw(client_c2(s0s1s2, self._rand))

    def send_raw(self, data: bytes) -> None:
        self.sent += data
        self.session.receive_data(data)
        self.pump()

    def pump(self) -> None:
        while isinstance(ev := self.session.next_event(), rtmp.Event):
            self.events.append(ev)
            if isinstance(ev, rtmp.PublishRequested) and self.auto_accept:
                self.session.accept_publish()
        self.reader.feed(self.session.data_to_send())
        while (msg := self.reader.next_message()) is not None:
            self.replies.append(msg)

    def send(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        self.send_raw(self.writer.write(csid, type_id, stream_id, ts, payload))

    def command(self, name: str, txn: float, *args: Any, stream_id: int = 0) -> None:
        csid = 8 if stream_id else 3
        self.send(csid, MSG_AMF0_COMMAND, stream_id, 0, rtmp.amf0_encode(name, txn, *args))

    def connect(self, app: str = "live", **extra: Any) -> None:
        props = {
            "app": app,
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; test)",
            "tcUrl": f"rtmp://127.0.0.1/{app}",
            **extra,
        }
        self.command("connect", 1.0, props)

    def publish_flow(self, name: str = "KEY", app: str = "live") -> int:
        """connect, releaseStream, FCPublish, createStream, publish; return the stream id."""
        self.connect(app)
        self.command("releaseStream", 2.0, None, name)
        self.command("FCPublish", 3.0, None, name)
        self.command("createStream", 4.0, None)
        sid = int(self.results(4.0)[-1])
        self.command("publish", 5.0, None, name, "live", stream_id=sid)
        return sid

    def video(self, sid: int, ts: int, body: bytes) -> None:
        self.send(6, MSG_VIDEO, sid, ts, body)

    def audio(self, sid: int, ts: int, body: bytes) -> None:
        self.send(4, MSG_AUDIO, sid, ts, body)

    def data(self, sid: int, ts: int, *values: Any) -> None:
        self.send(4, MSG_AMF0_DATA, sid, ts, rtmp.amf0_encode(*values))

    # -- decoding replies -------------------------------------------------------------------
    def commands(self) -> list[list[Any]]:
        return [
            rtmp.amf0_decode_all(m.payload) for m in self.replies if m.type_id == MSG_AMF0_COMMAND
        ]

    def results(self, txn: float) -> list[Any]:
        for values in self.commands():
            if values[0] in ("_result", "_error") and values[1] == txn:
                return values
        raise AssertionError(f"no reply to transaction {txn}")

    def statuses(self) -> list[dict[str, Any]]:
        return [v[3] for v in self.commands() if v[0] == "onStatus"]

    def user_controls(self) -> list[tuple[int, bytes]]:
        return [
            (struct.unpack_from(">H", m.payload)[0], m.payload[2:])
            for m in self.replies
            if m.type_id == MSG_USER_CONTROL
        ]

    def of_type(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]
