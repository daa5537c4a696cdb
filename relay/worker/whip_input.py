"""A WHIP session inside a session worker: the publisher's peer connection to the room.

The front (relay/service/ingest/whip_front.py) sends `Start` with the publisher's SDP offer; the
worker answers it (`WhipAnswer`), joins the room and moves the media itself, so a
WHIP session is isolated in its own process exactly like an RTMP one.

* passthrough (transcoding off, the WHIP default): the publisher's H.264 or VP8
  frames and Opus packets go to the room as they are (one video layer), never
  decoded; keyframe requests from the room go back to the publisher as RTCP PLI.
  The video size comes from decoding each keyframe (cheap, and it follows size
  changes).
* transcoding: aiortc's decoded pictures and samples take the RTMP path (our
  encoder per layer of the preset, our Opus encoder).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from typing import Any

import av
import trio

from relay.wire import (
    EndOfStream,
    IceCredentials,
    IceRestart,
    MessageReader,
    RemoteCandidates,
    Start,
    StateReport,
    WhipAnswer,
    WireError,
)

from . import aio_thread
from .front import receive_from_front
from .passthrough import EncodedVideoOutput
from .room import PublishError
from .session import (
    MAX_AUDIO_LAG_MS,
    MIME,
    NO_MEDIA_TIMEOUT,
    AudioOutput,
    Session,
    SessionFailed,
    open_picture_output,
)
from .whip_peer import EncodedPicture, OpusPacket, PeerFailed, WhipPeer

log = logging.getLogger("relay.worker")

KEYFRAME_POLL = 0.1  # how often the SDK's keyframe requests are collected
PLI_RETRY = 0.5  # a keyframe request not answered by then is sent again
RTP_VIDEO_CLOCK = 90_000


def restrict_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather ICE host candidates on these addresses only (config `rtc_config.node_ip`).

    aioice offers every interface address except loopback and has no setting for
    this; the worker is one session's process, so the module function is replaced.
    """
    import aioice.ice

    def chosen(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = chosen


def bind_in_port_range(loop: asyncio.AbstractEventLoop, first: int, last: int) -> None:
    """Bind aioice's host candidates in the UDP ports first..last (`rtc_config`'s range).

    aioice binds each host candidate to port 0 and has no setting for a range; the
    worker is one session's process, so its asyncio loop's create_datagram_endpoint
    is wrapped: a request for port 0 tries the range's ports from a random one on,
    skipping those in use (other sessions' workers). A full range fails the bind,
    which aioice reports as no candidate, and the session ends in ERROR.
    """
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(protocol_factory: Any, local_addr: Any = None,
                                       **kwargs: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await original(protocol_factory, local_addr=local_addr, **kwargs)
        ports = list(range(first, last + 1))
        offset = random.randrange(len(ports))
        for port in ports[offset:] + ports[:offset]:
            try:
                return await original(protocol_factory, local_addr=(local_addr[0], port),
                                      **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        log.error("no free UDP port in rtc_config's range %d-%d", first, last)
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {first}-{last}")

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]


class WhipSession:
    def __init__(self, session: Session, start: Start, reader: MessageReader,
                 stdin: trio.abc.ReceiveStream) -> None:
        self.session = session
        self.start = start
        self.reader = reader
        self.stdin = stdin
        self.peer = WhipPeer(passthrough=not start.transcode)
        self.end = EndOfStream("")
        self.last_media = trio.current_time()
        # layers (rids) a subscriber asked a keyframe of; none has passed since
        self.keyframe_wanted: set[str] = set()

    async def run(self) -> None:
        """Answer, join, move media until the publisher or the front ends it."""
        peer, session = self.peer, self.session
        answer = await peer.answer(self.start.offer)
        await session.report(WhipAnswer(answer))
        async with trio.open_nursery() as nursery:
            await nursery.start(session.publisher.run, self.start.ws_url, self.start.token)
            nursery.start_soon(session.report_stats)
            nursery.start_soon(peer.pump)
            if peer.has_video:
                nursery.start_soon(self.passthrough_video if peer.passthrough
                                   else self.transcoded_video)
            if peer.has_audio:
                nursery.start_soon(self.audio)
            nursery.start_soon(self.watch_media)
            await self.until_end(peer)
            nursery.cancel_scope.cancel()
        log.info("WHIP session ended: %s (video frames: %d in, %d sent, %d dropped)",
                 self.end.reason, session.video_in.frames, session.captured_video,
                 peer.dropped_video)

    async def until_end(self, peer: WhipPeer) -> None:
        async with trio.open_nursery() as nursery:
            async def front() -> None:
                self.end = await self.read_front()
                nursery.cancel_scope.cancel()

            async def publisher() -> None:
                await peer.ended.wait()
                self.end = EndOfStream(f"the publisher left ({peer.end_reason})")
                nursery.cancel_scope.cancel()

            nursery.start_soon(front)
            nursery.start_soon(publisher)

    async def read_front(self) -> EndOfStream:
        while True:
            for message in await receive_from_front(self.reader, self.stdin):
                if isinstance(message, EndOfStream):
                    return message
                if isinstance(message, IceRestart):
                    await self.session.report(await self.restart_ice(message))
                    continue
                if isinstance(message, RemoteCandidates):
                    added = await self.peer.add_remote_candidates(message.candidates)
                    log.info("trickled ICE candidates: %d of %d added%s", added,
                             len(message.candidates), ", end of candidates" if message.end
                             else "")
                    continue
                raise WireError(f"unexpected {type(message).__name__} during a WHIP session")

    async def restart_ice(self, restart: IceRestart) -> IceCredentials:
        try:
            ufrag, pwd = await self.peer.restart_ice(restart.ufrag, restart.pwd)
        except PeerFailed as exc:
            log.warning("ICE restart refused: %s", exc)
            return IceCredentials("", "", str(exc))
        if restart.candidates:
            added = await self.peer.add_remote_candidates(restart.candidates)
            log.info("ICE restart: %d of %d candidates added", added, len(restart.candidates))
        return IceCredentials(ufrag, pwd)

    async def watch_media(self) -> None:
        while True:
            await trio.sleep(1.0)
            if trio.current_time() - self.last_media > NO_MEDIA_TIMEOUT:
                raise SessionFailed(f"no media received for {NO_MEDIA_TIMEOUT:.0f} s")

    async def passthrough_video(self) -> None:
        output = EncodedVideoOutput(self.session, self.peer.rids or ("",))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.forward_keyframe_requests, output)
            async for picture in self.peer.video:
                assert isinstance(picture, EncodedPicture)
                self.last_media = trio.current_time()
                if output.top in (None, picture.rid):  # the input is its top layer
                    self.session.video_in.count(picture.timestamp_us // 1000,
                                                len(picture.data))
                if picture.keyframe:
                    self.keyframe_wanted.discard(picture.rid)
                await output.send(picture.codec, picture.data, picture.keyframe,
                                  picture.timestamp_us, picture.rid)
            nursery.cancel_scope.cancel()

    async def forward_keyframe_requests(self, output: EncodedVideoOutput) -> None:
        """Subscribers' keyframe requests (the SFU's PLI, per layer) -> PLI to the
        publisher, sent again every PLI_RETRY until a keyframe of that layer has passed
        through: a PLI can be lost, or come before the publisher's SSRC is known, and a
        viewer without a keyframe sees nothing until the publisher's next one on its
        own (seconds for an encoder with a long GOP: the H.264 passthrough test saw no
        video in 1 run of 4)."""
        last_pli: dict[str, float] = {}
        while True:
            await trio.sleep(KEYFRAME_POLL)
            for index, rid in enumerate(output.layers):
                if output.keyframe_requested(index):
                    self.keyframe_wanted.add(rid)
            now = trio.current_time()
            for rid in list(self.keyframe_wanted):
                if now - last_pli.get(rid, -PLI_RETRY) >= PLI_RETRY:
                    last_pli[rid] = now
                    await self.peer.request_keyframe(rid)

    async def transcoded_video(self) -> None:
        async with open_picture_output(self.session) as output:
            async for picture in self.peer.video:
                self.last_media = trio.current_time()
                pts_ms = int(picture.pts or 0) * 1000 // RTP_VIDEO_CLOCK
                self.session.video_in.mime = MIME.get(self.peer.video_codec, "")
                self.session.video_in.count(pts_ms, 0)
                self.session.video_lag.observe(pts_ms)
                await output.show(picture, pts_ms)

    async def audio(self) -> None:
        if self.peer.passthrough:
            await self.forward_audio()
            return
        output = AudioOutput(self.session)
        self.session.audio_in.mime = MIME["opus"]
        async for frame in self.peer.audio:
            assert isinstance(frame, av.AudioFrame)
            self.last_media = trio.current_time()
            self.session.audio_in.count(int(frame.time * 1000) if frame.time else 0, 0)
            # a backlog (queued while the worker joined the room) is stale: send the
            # live edge
            backlog = self.peer.audio.statistics().current_buffer_used * frame.samples
            if backlog * 1000 > MAX_AUDIO_LAG_MS * frame.sample_rate:
                self.session.audio_lag.skipped += 1
                continue
            await output.play([frame])

    async def forward_audio(self) -> None:
        """The publisher's Opus packets into the room as they are (no decode)."""
        session = self.session
        session.audio_in.mime = MIME["opus"]
        session.audio_in.sample_rate = 48_000
        track = None
        async for packet in self.peer.audio:
            assert isinstance(packet, OpusPacket)
            self.last_media = trio.current_time()
            session.audio_in.count(packet.timestamp // 48, len(packet.data))
            if track is None:
                session.audio_in.channels = 2 if self.peer.stereo else 1
                track = await session.publisher.publish_audio(
                    name=session.info.audio.name, source=session.info.audio.source,
                    stereo=self.peer.stereo, dtx=True)
                await session.report_state("publishing")
            session.publisher.send(track, 0, (packet.data,), packet.timestamp,
                                   marker=False)


async def run_whip(start: Start, reader: MessageReader, stdin: trio.abc.ReceiveStream,
                   stdout: trio.abc.SendStream) -> int:
    """The worker's main for a WHIP session; the exit status."""
    if start.host_addresses:
        restrict_host_addresses(start.host_addresses)
    session = Session(start, stdout)
    whip: WhipSession | None = None
    failed = False
    async with aio_thread.open_asyncio_thread() as edge:
        if start.ice_ports != (0, 0):
            bind_in_port_range(edge.loop, *start.ice_ports)
        try:
            whip = WhipSession(session, start, reader, stdin)
            await whip.run()
        except* (SessionFailed, PublishError, PeerFailed, WireError) as group:
            failed = True
            first: Any = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            log.error("WHIP session failed: %s", first)
            with trio.CancelScope(shield=True):
                await session.report(StateReport("error", error=str(first)))
        finally:
            with trio.CancelScope(shield=True):
                if whip is not None:
                    await whip.peer.close()
    return 1 if failed else 0
