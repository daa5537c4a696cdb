"""RTMP and RTMPS ingest: the trio server around the sans-IO core in `rtmp`.

One task (and one nursery) per TCP connection. A connection goes through two phases:

1. **Until publish**, bounded by ``handshake_timeout`` from the TCP accept: the TLS
   handshake (RTMPS), the RTMP handshake, ``connect``, ``createStream`` and
   ``publish``. A peer that dribbles bytes (slowloris) is cut when the timeout
   expires. Such a peer is unauthenticated: at most ``max_unauthenticated`` of them
   at a time (a separate budget inside ``max_connections``, so they cannot take the
   publishers' slots), and the core caps what it may send (64 KiB messages, no
   media or aggregate unpacked: rtmp/_session.py). The stream key (the last segment
   of the publish name) goes to the session host (lifetime.py), whose refusals
   become an error ``onStatus`` (then the connection is closed):

   ============================== ============================ ======================
   case                           status code                  description
   ============================== ============================ ======================
   unknown stream key             NetStream.Publish.BadName    ``unknown stream key``
   ``enabled == false``           NetStream.Publish.Denied     ``session is disabled``
   not an RTMP_INPUT ingress      NetStream.Publish.Denied     ``ingress is not an RTMP ingress``
   ingress has no room_name       NetStream.Publish.Denied     ``no room name``
   node draining (shutdown)       NetStream.Publish.Denied     ``server shutting down``
   no CPU capacity (admission)    NetStream.Publish.Denied     ``server capacity exceeded``
   ============================== ============================ ======================

2. **Live**: inside the host's session (registered, BUFFERING, a worker), the publish
   is accepted and media events flow to :class:`InputStats` and the worker
   (sink.py). The connection ends on the publisher's FCUnpublish/deleteStream or
   disconnect (ENDPOINT_INACTIVE), on a protocol error or ``idle_timeout`` seconds
   without a byte (ENDPOINT_ERROR with the reason), or when the session is cancelled
   (ENDPOINT_INACTIVE): the host writes the final state.

Both phases yield to the other tasks every ``EVENTS_PER_CHECKPOINT`` events, so no
connection holds the event loop for longer than a bounded amount of parsing.

A worker that falls behind blocks ``sink.send``, which stops the connection from
reading and back-pressures the encoder over TCP; if it blocks longer than
``idle_timeout`` the session ends with an error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import ssl
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import trio

import rtmp

from .lifetime import Live, Refusal, Refused, SessionHost
from .sink import SinkEvent, WorkerSink

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
PROGRESS_INTERVAL = 2.0  # seconds between DEBUG progress lines of a live session
FLUSH_TIMEOUT = 2.0  # seconds to deliver a refusal or a final reply before closing
DRAIN_TIMEOUT = 2.0  # seconds to wait for the publisher's own close after a clean end
EVENTS_PER_CHECKPOINT = 64  # events parsed between two yields to the event loop
MAX_KEY_LENGTH = 256  # a longer stream key is unknown without a look-up

ONE_PUBLISH = "one publish per connection"
CLEAN_END = "publisher ended the stream"

_MEDIA_TYPES = (*rtmp.MEDIA_EVENTS, rtmp.Metadata)


@dataclass
class TrackStats:
    """Counters of one track (``video`` or ``audio`` with its track id)."""

    kind: str
    codec: str = ""
    frames: int = 0
    keyframes: int = 0
    bytes: int = 0
    first_dts: int | None = None
    last_dts: int = 0
    configs: int = 0
    sample_rate: int = 0
    channels: int = 0

    @property
    def duration_ms(self) -> int:
        return 0 if self.first_dts is None else self.last_dts - self.first_dts

    @property
    def fps(self) -> float:
        d = self.duration_ms
        return (self.frames - 1) * 1000.0 / d if d > 0 and self.frames > 1 else 0.0

    @property
    def kbps(self) -> float:
        d = self.duration_ms
        return self.bytes * 8.0 / d if d > 0 else 0.0

    def describe(self, meta: dict[str, Any]) -> str:
        parts = [f"{self.kind} {self.codec or '-'}"]
        if self.kind == "video":
            w, h = meta.get("width"), meta.get("height")
            if _positive(w) and _positive(h):
                parts.append(f"{int(w)}x{int(h)}")
            parts.append(f"frames={self.frames} keyframes={self.keyframes}")
        else:
            if self.sample_rate:
                parts.append(f"{self.sample_rate}Hz {self.channels}ch")
            parts.append(f"frames={self.frames}")
        parts.append(f"bytes={self.bytes} dts={self.first_dts or 0}..{self.last_dts}")
        parts.append(f"fps={self.fps:.2f} kbps={self.kbps:.0f}")
        return " ".join(parts)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@dataclass
class InputStats:
    """Per-track frame/byte counts and the input description, kept by the front for
    every live session (with or without a worker): its progress and final log lines.
    The IngressState input fields come from the worker's own counts."""

    tracks: dict[tuple[str, int], TrackStats] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    unsupported: int = 0

    def _track(self, kind: str, track_id: int) -> TrackStats:
        key = (kind, track_id)
        st = self.tracks.get(key)
        if st is None:
            st = self.tracks[key] = TrackStats(kind)
        return st

    def observe(self, event: SinkEvent) -> None:
        t = type(event)
        if t is rtmp.VideoFrame or t is rtmp.AudioFrame:
            st = self._track("video" if t is rtmp.VideoFrame else "audio", event.track_id)
            st.codec = event.codec
            st.frames += 1
            st.bytes += len(event.data)
            if st.first_dts is None:
                st.first_dts = event.dts
            st.last_dts = event.dts
            if t is rtmp.VideoFrame and event.keyframe:
                st.keyframes += 1
        elif t is rtmp.VideoConfig:
            st = self._track("video", event.track_id)
            st.codec, st.configs = event.codec, st.configs + 1
        elif t is rtmp.AudioConfig:
            st = self._track("audio", event.track_id)
            st.codec, st.configs = event.codec, st.configs + 1
            st.sample_rate, st.channels = event.sample_rate, event.channels
        elif t is rtmp.Metadata:
            self.metadata = dict(event.values)
        elif t is rtmp.UnsupportedMedia:
            self.unsupported += 1

    def describe(self) -> str:
        if not self.tracks:
            return "no media"
        text = "; ".join(st.describe(self.metadata) for st in self.tracks.values())
        return text + (f"; unsupported={self.unsupported}" if self.unsupported else "")

    @property
    def frames(self) -> int:
        return sum(st.frames for st in self.tracks.values())


# -- settings and server ----------------------------------------------------------------


@dataclass(frozen=True)
class RtmpSettings:
    """Limits of the RTMP/RTMPS listeners (config keys ``rtmp_*``, see relay/service/config.py)."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_message_size: int = 8 * 1024 * 1024
    max_connections: int = 500
    max_unauthenticated: int = 64


class RtmpFront:
    """Accepts RTMP(S) connections and runs each publish as a session of the host."""

    def __init__(self, host: SessionHost, settings: RtmpSettings | None = None) -> None:
        self.host = host
        self.settings = settings or RtmpSettings()
        self.connections = 0
        self.unauthenticated = 0  # connections without an accepted publish (yet)

    async def serve(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (0 = ephemeral) and report ``host:port`` once bound."""
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        sockname = listeners[0].socket.getsockname()
        bound = f"{sockname[0]}:{sockname[1]}"
        scheme = "rtmps" if ssl_context else "rtmp"
        log.info("%s listening on %s", scheme, bound)

        async def handler(stream: trio.SocketStream) -> None:
            await self.handle(stream, ssl_context)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            task_status.started(bound)

    async def handle(self, tcp: trio.SocketStream, ssl_context: ssl.SSLContext | None) -> None:
        """Run one connection to its end; never raises (except Cancelled)."""
        peer = _peer(tcp)
        scheme = "rtmps" if ssl_context else "rtmp"
        full = self._full()
        if full:
            log.warning("%s connection from %s refused: %s reached", scheme, peer, full)
            await trio.aclose_forcefully(tcp)
            return
        self.connections += 1
        self.unauthenticated += 1  # given back by conn.authenticated()
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True)
        conn: _Connection | None = None
        try:
            async with trio.open_nursery() as nursery:
                conn = _Connection(self, stream, peer, scheme, nursery)
                await conn.run()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("%s connection from %s: unexpected error", scheme, peer)
        finally:
            self.connections -= 1
            if conn is None:
                self.unauthenticated -= 1
            else:
                conn.authenticated()  # the slot back, if the publish never got that far
            await trio.aclose_forcefully(stream)

    def _full(self) -> str:
        """Which connection budget is spent, if one is ('' if neither)."""
        s = self.settings
        if self.connections >= s.max_connections:
            return f"max connections ({s.max_connections})"
        if self.unauthenticated >= s.max_unauthenticated:
            return f"max unauthenticated connections ({s.max_unauthenticated})"
        return ""


def session_config(settings: RtmpSettings) -> rtmp.SessionConfig:
    """The core's caps for one connection, from the listener's settings: messages up
    to `max_message_size`, partial messages (audio and video interleave) and unparsed
    input up to twice that; before a publish, the core's own small caps."""
    size = settings.max_message_size
    return rtmp.SessionConfig(max_message_size=size, max_buffered_bytes=2 * size,
                              max_receive_buffer=2 * size + RECEIVE_SIZE)


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def load_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def key_fingerprint(key: str) -> str:
    """A stream key as logs name it: the same key always reads the same, and nothing
    of it can be used or guessed from the log (a prefix would shorten a brute force)."""
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]


class _Closed(Exception):
    """The peer went away (EOF, reset, TLS failure); the message says how."""


class _Connection:
    def __init__(self, ingest: RtmpFront, stream: trio.abc.Stream, peer: str, scheme: str,
                 nursery: trio.Nursery) -> None:
        self.ingest = ingest
        self.stream = stream
        self.peer = peer
        self.scheme = scheme
        self.nursery = nursery
        self.session = rtmp.ServerSession(
            session_config(ingest.settings))
        self.stats = InputStats()
        self.live = False  # between accept and the end of the session
        self._unauthenticated = True  # holds one of the front's unauthenticated slots
        self.ended_cleanly = False  # the publisher ended the stream (deleteStream)

    def authenticated(self) -> None:
        """Give back this connection's unauthenticated slot (once)."""
        if self._unauthenticated:
            self._unauthenticated = False
            self.ingest.unauthenticated -= 1

    # -- I/O helpers ------------------------------------------------------------------
    async def _receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            raise _Closed(f"connection lost ({type(cause).__name__}: {cause})") from None
        if not data:
            raise _Closed("publisher closed the connection")
        return data

    async def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            try:
                await self.stream.send_all(out)
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__ or exc
                raise _Closed(f"connection lost ({type(cause).__name__}: {cause})") from None

    async def _flush_briefly(self) -> None:
        with trio.move_on_after(FLUSH_TIMEOUT):
            with suppress(_Closed, rtmp.RTMPProtocolError):
                await self._flush()

    # -- phases -----------------------------------------------------------------------
    async def run(self) -> None:
        s = self.ingest.settings
        who = f"{self.scheme} connection from {self.peer}"
        request: rtmp.PublishRequested | None = None
        try:
            with trio.move_on_after(s.handshake_timeout):
                if isinstance(self.stream, trio.SSLStream):
                    try:
                        await self.stream.do_handshake()
                    except trio.BrokenResourceError as exc:
                        raise _Closed(f"TLS handshake failed: {exc.__cause__ or exc}") from None
                request = await self._until_publish()
        except _Closed as exc:
            log.info("%s ended before publishing: %s", who, exc)
            return
        except rtmp.RTMPProtocolError as exc:
            log.warning("%s closed: protocol error before publishing: %s", who, exc)
            return
        if request is None:
            log.warning("%s closed: no publish request within %g s (handshake timeout)",
                        who, s.handshake_timeout)
            return
        if len(request.stream_key) > MAX_KEY_LENGTH:
            self.session.reject_publish("unknown stream key", code=rtmp.STATUS_BAD_NAME)
            await self._flush_briefly()
            log.warning("%s: publish (app %r, key of %d characters) refused: unknown stream "
                        "key", who, request.app, len(request.stream_key))
            return
        try:
            info = await self.ingest.host.lookup("rtmp", request.stream_key)
            async with self.ingest.host.session("rtmp", info,
                                                labels={"peer": self.peer,
                                                        "scheme": self.scheme}) as live:
                await self._live(request, live)
        except Refused as exc:
            code = rtmp.STATUS_BAD_NAME if exc.reason in (
                Refusal.UNKNOWN_KEY, Refusal.GONE) else rtmp.STATUS_DENIED
            self.session.reject_publish(exc.text, code=code)
            await self._flush_briefly()
            ingress = f" (ingress {exc.info.ingress_id})" if exc.info is not None else ""
            log.warning("%s: publish (app %r, key %s) refused%s: %s", who, request.app,
                        key_fingerprint(request.stream_key), ingress, exc.text)
            return
        if self.ended_cleanly:
            await self._drain()

    async def _until_publish(self) -> rtmp.PublishRequested:
        session = self.session
        parsed = 0
        while True:
            while isinstance(event := session.next_event(), rtmp.Event):
                parsed += 1
                if parsed % EVENTS_PER_CHECKPOINT == 0:
                    await trio.lowlevel.checkpoint()
                if isinstance(event, rtmp.PublishRequested):
                    await self._flush()
                    return event
                if isinstance(event, rtmp.Connected):
                    log.debug("%s connection from %s: connect app=%r tcUrl=%r flashVer=%r",
                              self.scheme, self.peer, event.app, event.tc_url, event.flash_ver)
            await self._flush()
            session.receive_data(await self._receive())

    async def _live(self, request: rtmp.PublishRequested, live: Live) -> None:
        """The publish, accepted, until it ends; the outcome goes to `live`."""
        s = self.ingest.settings
        self.session.accept_publish()
        self.authenticated()
        self.live = True
        try:
            await self._flush()
            log.info("%s session %s: publishing (app %r)", self.scheme, live.resource_id,
                     request.app)
            self.nursery.start_soon(self._report_progress, f"{self.scheme} session "
                                    f"{live.resource_id} of {live.ingress_id} from {self.peer}")
            sink = WorkerSink(live.worker) if live.worker is not None else None
            live.end(await self._pump_into(request.stream_id, sink), drain=True)
            self.ended_cleanly = True
        except _Closed as exc:
            live.end(str(exc))
        except rtmp.RTMPProtocolError as exc:
            live.fail(f"RTMP protocol error: {exc}")
        except _IdleTimeout:
            live.fail(f"no data from the publisher for {s.idle_timeout:g} s")
        finally:
            self.live = False
            live.labels["summary"] = "; " + self.stats.describe()

    async def _pump_into(self, stream_id: int, sink: WorkerSink | None) -> str:
        session, stats, stream = self.session, self.stats, self.stream
        idle_timeout = self.ingest.settings.idle_timeout
        media = _MEDIA_TYPES
        parsed = 0
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + idle_timeout
                session.receive_data(await self._receive())
                ended = False
                while isinstance(event := session.next_event(), rtmp.Event):
                    parsed += 1
                    if parsed % EVENTS_PER_CHECKPOINT == 0:
                        await trio.lowlevel.checkpoint()
                    if isinstance(event, media):
                        stats.observe(event)
                        if sink is not None:
                            await sink.send(event)
                    elif isinstance(event, rtmp.StreamEnded):
                        ended = ended or event.stream_id == stream_id
                    elif isinstance(event, rtmp.PublishRequested):
                        session.reject_publish(ONE_PUBLISH, code=rtmp.STATUS_DENIED)
                out = session.data_to_send()
                if out:
                    try:
                        await stream.send_all(out)
                    except trio.BrokenResourceError:
                        raise _Closed("connection lost while sending") from None
                if ended:
                    return CLEAN_END
        raise _IdleTimeout

    async def _drain(self) -> None:
        """Let the publisher close first (it may still send deleteStream)."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass

    async def _report_progress(self, who: str) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            if not self.live:
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s live: %s", who, self.stats.describe())


class _IdleTimeout(Exception):
    pass
