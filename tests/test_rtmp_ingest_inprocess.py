"""RtmpIngest in-process (real SQLite store, real sockets): the MediaSink boundary, limits."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from livekit.protocol import ingress as pb

import rtmp
from api.store import open_sqlite_store
from relay.rtmp_ingest import RtmpIngest, RtmpSettings
from relay.sessions import SessionRegistry
from relay.sink import MediaSink, PublishContext
from rtmp._chunks import MSG_AMF0_COMMAND
from rtmp._handshake import client_c2, client_hello

KEY = "InProcKey234"


def ffmpeg(url: str, seconds: float = 1.0) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=128x72:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", "0",
            "-g", "15", "-c:a", "aac", "-f", "flv", url]


@asynccontextmanager
async def running(tmp_path: Path, settings: RtmpSettings, sink_factory=None
                  ) -> AsyncIterator[tuple[RtmpIngest, str]]:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store, trio.open_nursery() as n:
        await store.create(pb.IngressInfo(
            ingress_id="IN_inprocess234", stream_key=KEY, room_name="room",
            input_type=pb.IngressInput.RTMP_INPUT, participant_identity="p",
            state=pb.IngressState()))
        ingest = RtmpIngest(store, SessionRegistry(), settings, sink_factory=sink_factory)
        addr = await n.start(ingest.serve, "127.0.0.1", 0)
        yield ingest, addr
        n.cancel_scope.cancel()


@pytest.mark.slow
async def test_sink_gets_context_and_every_media_event(tmp_path: Path) -> None:
    contexts: list[PublishContext] = []
    events: list[object] = []
    closed = trio.Event()

    class Sink:
        async def send(self, event: rtmp.MediaEvent | rtmp.Metadata) -> None:
            events.append(event)

    @asynccontextmanager
    async def factory(ctx: PublishContext) -> AsyncIterator[MediaSink]:
        contexts.append(ctx)
        try:
            yield Sink()
        finally:
            closed.set()

    async with running(tmp_path, RtmpSettings(), factory) as (ingest, addr):
        proc = await trio.run_process(ffmpeg(f"rtmp://{addr}/app/{KEY}"), check=False)
        assert proc.returncode == 0
        with trio.fail_after(5):
            await closed.wait()
            while (state := (await ingest.store.get("IN_inprocess234")).state).status != \
                    pb.IngressState.ENDPOINT_INACTIVE:
                await trio.sleep(0.01)
    (ctx,) = contexts
    assert ctx.info.ingress_id == "IN_inprocess234" and ctx.resource_id.startswith("RT_")
    assert ctx.app == "app" and ctx.publish_name == KEY and not ctx.tls
    assert ctx.started_at == state.started_at and state.ended_at > state.started_at
    assert isinstance(events[0], rtmp.Metadata) and events[0].values["width"] == 128
    video = [e for e in events if isinstance(e, rtmp.VideoFrame)]
    assert len(video) == 30 and [v.keyframe for v in video].count(True) == 2
    assert any(isinstance(e, rtmp.VideoConfig) for e in events)
    assert any(isinstance(e, rtmp.AudioFrame) for e in events)


async def raw_publish(addr: str, key: str) -> trio.SocketStream:
    """Handshake, connect, createStream, publish; return the stream once Publish.Start."""
    host, port = addr.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    writer, reader = rtmp.ChunkWriter(128), rtmp.ChunkReader()
    await stream.send_all(client_hello(os.urandom))
    got = b""
    while len(got) < 3073:
        got += await stream.receive_some(65536)
    await stream.send_all(client_c2(got[:3073], os.urandom))
    reader.feed(got[3073:])

    async def command(name: str, txn: float, *args: object, sid: int = 0) -> list[object]:
        await stream.send_all(writer.write(3, MSG_AMF0_COMMAND, sid, 0,
                                           rtmp.amf0_encode(name, txn, *args)))
        while True:
            while (msg := reader.next_message()) is not None:
                values = rtmp.amf0_decode_all(msg.payload) if msg.type_id == 20 else []
                if values and values[0] in ("_result", "onStatus"):
                    return values
            reader.feed(await stream.receive_some(65536))

    await command("connect", 1.0, {"app": "live"})
    sid = int((await command("createStream", 2.0, None))[3])  # type: ignore[arg-type]
    status = (await command("publish", 3.0, None, key, "live", sid=sid))[3]
    assert status["code"] == "NetStream.Publish.Start"  # type: ignore[index]
    return stream


async def test_max_connections_and_idle_timeout(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "relay.rtmp_ingest")
    settings = RtmpSettings(handshake_timeout=5, max_connections=1)
    async with running(tmp_path, settings) as (ingest, addr):
        host, port = addr.rsplit(":", 1)
        first = await trio.open_tcp_stream(host, int(port))
        await trio.sleep(0.1)
        assert ingest.connections == 1
        second = await trio.open_tcp_stream(host, int(port))
        with trio.fail_after(2):
            assert await second.receive_some(10) == b""
        assert "refused: max connections (1) reached" in caplog.text
        await first.aclose()
        await second.aclose()
        with trio.fail_after(2):
            while ingest.connections:
                await trio.sleep(0.01)

    settings = RtmpSettings(idle_timeout=0.5)
    async with running(tmp_path / "idle", settings) as (ingest, addr):
        stream = await raw_publish(addr, KEY)
        assert (await ingest.store.get("IN_inprocess234")).state.status == \
            pb.IngressState.ENDPOINT_BUFFERING
        start = trio.current_time()
        with trio.fail_after(3):
            while await stream.receive_some(65536):
                pass
        assert 0.4 < trio.current_time() - start < 1.5
        state = (await ingest.store.get("IN_inprocess234")).state
        assert state.status == pb.IngressState.ENDPOINT_ERROR
        assert state.error == "no data from the publisher for 0.5 s"
        assert re.search(r"ended after \d\.\d s: no data from the publisher for 0\.5 s",
                         caplog.text)
