"""The ingress participant in its room, seen from trio.

Signalling (relay/lksignal over ``_socket.py``) runs here, in trio; the
PeerConnection and the RTP streams' feedback (``_peer.py``) run on the worker's
asyncio thread and are reached through ``aio_thread``. Frames do not cross: the
thread that has a frame's packetized payloads (a layer encoder's, trio's)
protects and sends them itself (``_sender.py``).

Lifetime: ``await nursery.start(publisher.run, ws_url, token)`` returns once
joined; the room is left (leave request, PeerConnection closed) when that task
is cancelled. Anything that ends the participant from the room's side (a leave,
the signal connection lost, ICE failing, pings unanswered) raises
:class:`PublishError` out of ``run``, which ends the session.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from livekit.protocol import models

from relay import lksignal

from .. import aio_thread
from ._peer import PublisherPeer
from ._socket import SignalSocket, SignalSocketError, open_signal_socket

log = logging.getLogger("relay.worker.room")

JOIN_TIMEOUT = 15.0
NEGOTIATION_TIMEOUT = 15.0
VERSION = "relay"

_SOURCES = {models.TrackSource.CAMERA: "camera", models.TrackSource.MICROPHONE: "microphone",
            models.TrackSource.SCREEN_SHARE: "screen_share",
            models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio"}
_MIME = {"h264": "video/H264", "vp8": "video/VP8", "opus": "audio/opus"}


class PublishError(Exception):
    """The room could not be joined, a track not published, or the room ended us."""


@dataclass(frozen=True)
class PublishedTrack:
    """A track as the server published it (its TrackInfo, for IngressState.tracks)."""

    cid: str
    sid: str
    kind: str  # "video" | "audio"
    info: models.TrackInfo

    def to_track_info(self) -> models.TrackInfo:
        return self.info


@dataclass(frozen=True)
class VideoLayer:
    """One layer to announce and send: LiveKit quality, size and bitrate."""

    quality: int
    width: int
    height: int
    bitrate: int


class RoomPublisher:
    """Join once, publish tracks with their layers, send their frames, leave once."""

    def __init__(self) -> None:
        self.tracks: list[PublishedTrack] = []
        self.room_sid = ""
        self._client = lksignal.SignalClient()
        self._socket: SignalSocket | None = None
        self._peer: PublisherPeer | None = None
        self._edge: aio_thread.AsyncioThread | None = None
        self._publishing = trio.Lock()
        self._published: dict[str, lksignal.TrackPublished] = {}
        self._answer: lksignal.Answer | None = None
        self._changed = trio.Event()
        self._failure: str | None = None

    # -- lifetime ------------------------------------------------------------------------

    async def run(self, ws_url: str, token: str, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._edge = aio_thread.current()
        try:
            self._socket = await open_signal_socket(
                ws_url, self._client.connect_path(token, version=VERSION))
            with trio.move_on_after(JOIN_TIMEOUT):
                while self._client.joined is None:
                    self._receive(await self._socket.receive())
            joined = self._client.joined
            if joined is None:
                raise PublishError(f"no join from the room at {ws_url} in "
                                   f"{JOIN_TIMEOUT:.0f} s")
            self.room_sid = joined.room_sid
            servers = [(s.urls, s.username, s.credential) for s in joined.ice_servers]
            self._peer = await aio_thread.call(_new_peer, servers, self._peer_failed)
            log.info("joined room %s as %s", joined.room_name, joined.participant_identity)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._keepalive)
                task_status.started()
        except SignalSocketError as exc:
            raise PublishError(f"cannot join the room at {ws_url}: {exc}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await self._leave()

    async def _leave(self) -> None:
        socket, self._socket = self._socket, None
        peer, self._peer = self._peer, None
        if socket is not None:
            if not self._client.closed and self._client.joined is not None:
                try:
                    with trio.move_on_after(1):
                        await socket.send(self._client.leave())
                except SignalSocketError:
                    pass
            await socket.aclose()
        if peer is not None:
            try:
                with trio.move_on_after(3):
                    await aio_thread.call(peer.close)
            except Exception:  # leaving must not mask why we are leaving
                log.exception("error while closing the PeerConnection")

    def _peer_failed(self, reason: str) -> None:  # asyncio thread
        assert self._edge is not None
        self._edge.to_trio(self._fail, reason)

    def _fail(self, reason: str) -> None:
        self._failure = self._failure or reason
        self._changed.set()

    # -- signalling ----------------------------------------------------------------------

    def _receive(self, message: bytes) -> list[lksignal.SignalEvent]:
        try:
            events = self._client.receive(message, trio.current_time())
        except lksignal.SignalProtocolError as exc:
            log.warning("ignored a signal message: %s", exc)
            return []
        for event in events:
            if isinstance(event, lksignal.Leave):
                raise PublishError(f"the room ended the participant ({event.reason})")
        return events

    async def _read_loop(self) -> None:
        assert self._socket is not None
        while True:
            try:
                message = await self._socket.receive()
            except SignalSocketError as exc:
                raise PublishError(str(exc)) from exc
            for event in self._receive(message):
                if isinstance(event, lksignal.TrackPublished):
                    self._published[event.cid] = event
                    self._changed.set()
                elif isinstance(event, lksignal.Answer):
                    self._answer = event
                    self._changed.set()
                elif isinstance(event, lksignal.Trickle) and event.target == "publisher":
                    assert self._peer is not None
                    await aio_thread.call(self._peer.add_candidate, event.candidate_init)
                elif isinstance(event, lksignal.RequestResult) and event.reason != "OK":
                    log.warning("the room refused a request: %s %s", event.reason,
                                event.message)

    async def _keepalive(self) -> None:
        while True:
            now = trio.current_time()
            if self._failure is not None:
                raise PublishError(self._failure)
            if self._client.timed_out(now):
                raise PublishError("the room stopped answering pings")
            due = self._client.next_ping(now)
            if due is not None and due <= now:
                await self._send(self._client.ping(now))
                continue
            with trio.move_on_at(min(due or now + 1, now + 1)):
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = trio.Event()

    async def _send(self, message: bytes) -> None:
        if self._socket is None:
            raise PublishError("not in the room")
        try:
            await self._socket.send(message)
        except SignalSocketError as exc:
            raise PublishError(str(exc)) from exc

    async def _until(self, what: str, ready: object) -> None:
        with trio.move_on_after(NEGOTIATION_TIMEOUT):
            while not ready():  # type: ignore[operator]
                if self._failure is not None:
                    raise PublishError(self._failure)
                event = self._changed
                await event.wait()
                if event is self._changed:
                    self._changed = trio.Event()
            return
        raise PublishError(f"the room did not answer ({what}) in "
                           f"{NEGOTIATION_TIMEOUT:.0f} s")

    # -- publishing ----------------------------------------------------------------------

    async def publish_video(self, layers: Sequence[VideoLayer], *, codec: str, name: str,
                            source: int) -> PublishedTrack:
        """A video track sending ``layers`` (LOW first); one layer means no simulcast."""
        top = layers[-1]
        return await self._publish(
            "video", codec, len(layers), bitrates=tuple(layer.bitrate for layer in layers),
            name=name or "video",
            source=_SOURCES.get(source, "camera"), width=top.width, height=top.height,
            announced=[(layer.quality, layer.width, layer.height, layer.bitrate)
                    for layer in layers])

    async def publish_audio(self, *, name: str, source: int, stereo: bool,
                            dtx: bool) -> PublishedTrack:
        return await self._publish("audio", "opus", 1, name=name or "audio",
                                   source=_SOURCES.get(source, "microphone"),
                                   stereo=stereo, disable_dtx=not dtx)

    async def _publish(self, kind: str, codec: str, layers: int, *, name: str,
                       source: str, bitrates: tuple[int, ...] = (),
                       width: int = 0, height: int = 0,
                       announced: Sequence[lksignal.Layer] = (),
                       stereo: bool = False, disable_dtx: bool = False) -> PublishedTrack:
        peer = self._peer
        if peer is None:
            raise PublishError("not in the room")
        async with self._publishing:
            cid = await aio_thread.call(_add_track, peer, kind, codec, layers, bitrates)
            await self._send(self._client.add_track(
                cid, name, kind, source=source, width=width, height=height,
                layers=announced,
                simulcast_codecs=[(codec, cid)] if kind == "video" else [],
                stereo=stereo, disable_dtx=disable_dtx))
            await self._until("track published", lambda: cid in self._published)
            published = self._published.pop(cid)
            self._answer = None
            await self._send(self._client.offer(await aio_thread.call(peer.offer)))
            await self._until("answer", lambda: self._answer is not None)
            assert self._answer is not None
            await aio_thread.call(peer.accept_answer, self._answer.sdp)
        info = models.TrackInfo()
        info.CopyFrom(published.track)
        info.mime_type = info.mime_type or _MIME[codec]  # set later by the server
        track = PublishedTrack(cid, published.sid, kind, info)
        self.tracks.append(track)
        log.info("published %s track %s (%s, %d layer%s)", kind, published.sid, codec,
                 layers, "" if layers == 1 else "s")
        return track

    # -- media (trio side; never blocks) --------------------------------------------------

    def send(self, track: PublishedTrack, layer: int, payloads: tuple[bytes, ...],
             timestamp: int, marker: bool = True) -> None:
        """One frame's RTP payloads for a layer of a published track, sent now; from
        any thread."""
        if self._peer is not None:
            self._peer.send(track.cid, layer, payloads, timestamp, marker)

    def take_keyframe_request(self, track: PublishedTrack, layer: int) -> bool:
        """Whether the room asked for a keyframe on this layer since the last call."""
        stream = self._peer.stream(track.cid, layer) if self._peer is not None else None
        return stream.take_keyframe_request() if stream is not None else False

    def layers_allowed(self, track: PublishedTrack) -> int:
        """How many of a video track's layers (lowest first) fit the bandwidth estimate
        from the room's transport-wide CC feedback (all of them until it says less).
        Safe from any thread: it reads numbers the asyncio thread writes."""
        return self._peer.layers_allowed(track.cid) if self._peer is not None else 0

    @property
    def estimate(self) -> float | None:
        """The current bandwidth estimate, bit/s (None without transport-wide CC)."""
        congestion = self._peer.congestion if self._peer is not None else None
        return congestion.estimator.estimate if congestion is not None else None

    @property
    def dropped(self) -> int:
        """Packets the sockets refused (a full send buffer, the network unreachable)."""
        return self._peer.dropped if self._peer is not None else 0


async def _new_peer(servers: list[tuple[tuple[str, ...], str, str]],
                    on_failed: object) -> PublisherPeer:
    return PublisherPeer(servers, on_failed)  # type: ignore[arg-type]


async def _add_track(peer: PublisherPeer, kind: str, codec: str, layers: int,
                     bitrates: tuple[int, ...]) -> str:
    return peer.add_track(kind, codec, layers, bitrates)
