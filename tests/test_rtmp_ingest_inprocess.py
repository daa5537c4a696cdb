"""The RTMP front in-process (real SQLite store, real sockets, the real session host
with a recording stand-in for the worker process): what the worker gets, limits."""

from __future__ import annotations

import itertools
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
from relay.service.ingest.control import LocalControlPlane
from relay.service.ingest.lifetime import SessionHost, WorkerSettings
from relay.service.ingest.registry import SessionRegistry
from relay.service.ingest.rtmp_front import RtmpFront, RtmpSettings
from relay.wire import Message, Start, StateReport
from rtmp._chunks import MSG_AMF0_COMMAND
from rtmp._handshake import client_c2, client_hello

KEY = "InProcKey234"


def ffmpeg(url: str, seconds: float = 1.0) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=128x72:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", "0",
            "-g", "15", "-c:a", "aac", "-f", "flv", url]


class RecordingWorker:
    """What the session host and the RTMP front use of a SessionWorker, recording."""

    def __init__(self, start: Start) -> None:
        self.start = start
        self.messages: list[Message] = []
        self.failure = ""
        self.drain = True
        self.killed = False
        self.exited = trio.Event()
        self._reports_send, self.reports = trio.open_memory_channel[StateReport](1)

    async def send(self, message: Message) -> bool:
        self.messages.append(message)
        return True


@asynccontextmanager
async def running(tmp_path: Path, settings: RtmpSettings,
                  workers: list[RecordingWorker] | None = None
                  ) -> AsyncIterator[tuple[RtmpFront, str]]:
    @asynccontextmanager
    async def launch(start: Start) -> AsyncIterator[RecordingWorker]:
        worker = RecordingWorker(start)
        assert workers is not None
        workers.append(worker)
        try:
            yield worker
        finally:
            worker.exited.set()
            worker._reports_send.close()

    async with open_sqlite_store(tmp_path / "s.sqlite3") as store, trio.open_nursery() as n:
        await store.create(pb.IngressInfo(
            ingress_id="IN_inprocess234", stream_key=KEY, room_name="room",
            input_type=pb.IngressInput.RTMP_INPUT, participant_identity="p",
            state=pb.IngressState()))
        host = SessionHost(LocalControlPlane(store), SessionRegistry(),
                           workers=WorkerSettings("ws://x", "key", "secret" * 6)
                           if workers is not None else None, launch=launch)
        ingest = RtmpFront(host, settings)
        ingest.store = store  # type: ignore[attr-defined]  # for the tests' reads
        addr = await n.start(ingest.serve, "127.0.0.1", 0)
        yield ingest, addr
        n.cancel_scope.cancel()


@pytest.mark.slow
async def test_worker_gets_start_and_every_media_event(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "relay.service.ingest")
    workers: list[RecordingWorker] = []
    async with running(tmp_path, RtmpSettings(), workers) as (ingest, addr):
        proc = await trio.run_process(ffmpeg(f"rtmp://{addr}/app/{KEY}"), check=False)
        assert proc.returncode == 0
        with trio.fail_after(5):
            while not workers or not workers[0].exited.is_set():
                await trio.sleep(0.01)
            while (state := (await ingest.store.get("IN_inprocess234")).state).status != \
                    pb.IngressState.ENDPOINT_INACTIVE:
                await trio.sleep(0.01)
    (worker,) = workers
    info = pb.IngressInfo.FromString(worker.start.ingress)
    assert info.ingress_id == "IN_inprocess234" and worker.start.ws_url == "ws://x"
    assert worker.start.transcode and not worker.start.offer and not worker.start.url
    assert state.resource_id.startswith("RT_") and state.ended_at > state.started_at
    assert worker.drain  # a clean end publishes what is queued
    events = worker.messages
    assert isinstance(events[0], rtmp.VideoConfig | rtmp.AudioConfig)
    assert not any(isinstance(e, rtmp.Metadata) for e in events)  # only what decodes
    video = [e for e in events if isinstance(e, rtmp.VideoFrame)]
    assert len(video) == 30 and [v.keyframe for v in video].count(True) == 2
    assert any(isinstance(e, rtmp.AudioFrame) for e in events)
    # the front's own statistics (onMetaData included) end up in the session's last line
    assert re.search(r"ended after \d\.\d s: publisher ended the stream; video h264 128x72 "
                     r"frames=30 keyframes=2", caplog.text)


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
    caplog.set_level(logging.INFO, "relay.service.ingest")
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


def test_the_cores_buffer_caps_follow_the_message_size_setting() -> None:
    from relay.service.ingest.rtmp_front import RECEIVE_SIZE, RtmpSettings, session_config

    config = session_config(RtmpSettings(max_message_size=256 * 1024))
    assert (config.max_message_size, config.max_buffered_bytes,
            config.max_receive_buffer) == (256 * 1024, 512 * 1024, 512 * 1024 + RECEIVE_SIZE)
    assert config.max_message_size_before_publish == 64 * 1024  # the core's own


async def test_a_takeover_starts_its_worker_after_the_replaced_one_left(
        tmp_path: Path) -> None:
    """Both workers join the room as the ingress' participant, and the room keeps the
    one that joins last: the newer session's worker starts only once the replaced one
    has left (and its final state is written), never while it is still leaving."""
    events: list[str] = []
    launched = itertools.count(1)

    @asynccontextmanager
    async def launch(start: Start) -> AsyncIterator[RecordingWorker]:
        name = f"worker {next(launched)}"
        events.append(f"{name} started")
        worker = RecordingWorker(start)
        try:
            yield worker
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.3)  # leaving the room takes a while
            events.append(f"{name} left")
            worker.exited.set()
            worker._reports_send.close()

    async with open_sqlite_store(tmp_path / "s.sqlite3") as store, trio.open_nursery() as n:
        info = pb.IngressInfo(ingress_id="IN_takeover234", stream_key=KEY, room_name="room",
                              input_type=pb.IngressInput.RTMP_INPUT, participant_identity="p",
                              state=pb.IngressState())
        await store.create(info)
        host = SessionHost(LocalControlPlane(store), SessionRegistry(),
                           workers=WorkerSettings("ws://x", "key", "secret" * 6),
                           launch=launch)
        resources: list[str] = []

        async def publish() -> None:
            async with host.session("rtmp", info) as live:
                resources.append(live.resource_id)
                await trio.sleep_forever()

        n.start_soon(publish)
        await trio.sleep(0.1)
        n.start_soon(publish)
        with trio.fail_after(5):
            while len(resources) < 2:
                await trio.sleep(0.01)
        assert events == ["worker 1 started", "worker 1 left", "worker 2 started"]
        state = (await store.get(info.ingress_id)).state
        assert (state.status, state.resource_id) == (pb.IngressState.ENDPOINT_BUFFERING,
                                                     resources[1])
        n.cancel_scope.cancel()
