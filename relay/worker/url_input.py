"""URL input, inside a session worker: pull, demux, pace, decode, publish.

The worker opens the URL itself (FFmpeg's network and demuxer code, C parsing
remote input, runs in the session's own process like every decoder): HTTP(S)
files and streams and HLS through PyAV, `srt://` through libsrt (relay/worker/srt.py)
feeding PyAV's MPEG-TS demuxer. A thread demuxes into two bounded queues of coded
packets; a video and an audio stage decode them and hand them to the shared
outputs (relay/worker/session.py's PictureOutput and AudioOutput) at the time their
timestamps say, on one `MediaClock`: a file is published as fast as it plays, no
faster.

Before FFmpeg opens an http(s) URL, one plain GET (Python's urllib) reads the
status and Content-Type: it turns unreachable hosts, HTTP errors and TLS failures
into clear messages, and refuses content that is not media ("unsupported mime type
(<type>) for the source media", LiveKit's text) before FFmpeg guesses at it.

Egress: unless the service allows private addresses, the probe and every connection
FFmpeg makes go through the pull's egress gate (relay/worker/egress_gate.py), which
connects only to checked public addresses; an SRT caller connects only to checked
addresses (relay/worker/egress.py). FFmpeg itself runs with a protocol whitelist,
a demuxer whitelist and certificate verification. The gate is served on the event
loop, in a nursery the pull owns (`async with UrlPull(...)`); the probe and FFmpeg,
its clients, block in threads.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import trio

from relay.wire import EndOfStream, MessageReader

from . import egress, srt
from .egress_gate import EgressGate, failure_text, open_egress_gate
from .front import receive_from_front
from .session import MIME as CODEC_MIME
from .session import AudioOutput, Session, SessionFailed, open_picture_output

log = logging.getLogger("relay.worker.url_input")

OPEN_TIMEOUT = 10.0
# A source that sends nothing for this long has stalled (the 30 s); tests
# shorten it through the environment.
STALL_TIMEOUT = float(os.environ.get("INGRESS_URL_STALL_TIMEOUT", "30"))
# Seconds behind the clock that make a frame late, ahead that make it a timestamp
# jump; how long a live source may skip late frames to catch up (see MediaClock).
MAX_LATE = 0.5
MAX_EARLY = 5.0
LIVE_CATCH_UP = 3.0
VIDEO_PACKETS = 240  # coded packets queued ahead of the clock (~8 s at 30 fps)
AUDIO_PACKETS = 400  # ~8 s of AAC
USER_AGENT = "ingress-relay (LiveKit ingress compatible)"
# What FFmpeg may open: the network protocols a pull uses (httpproxy: https through the
# egress gate; crypto: AES-128 HLS), never file, pipe, tcp URLs of the source's
# choosing (HLS refuses tcp: segments itself) ...
PROTOCOLS = "http,https,tls,tcp,httpproxy,crypto"
# ... and the demuxers of the media a pull takes (FFmpeg probes all, opens these only)
DEMUXERS = "hls,mpegts,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,ogg,mp3,aac,flac,wav,flv"
MAX_REDIRECTS = 5
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, if OpenSSL names none
# Content types that are certainly not media: refused before FFmpeg probes them.
NOT_MEDIA = ("text/html", "text/css", "text/javascript", "text/xml", "application/json",
             "application/xml", "application/xhtml+xml", "application/javascript",
             "application/pdf", "image/")
MIME = {**CODEC_MIME, "vorbis": "audio/vorbis", "flac": "audio/flac", "mp2": "audio/mpeg",
        "mp3float": "audio/mpeg", "ac3": "audio/ac3", "mpeg4": "video/mp4v-es",
        "theora": "video/theora"}


class SourceError(SessionFailed):
    """The source cannot be pulled; the message becomes the ingress' error text."""


def unsupported(mime: str) -> SourceError:
    return SourceError(f"unsupported mime type ({mime or 'unknown'}) for the source media")


def _host_port(url: str) -> tuple[str, int | None]:
    """Host and port of a URL, never raising (a bad port or bracket is just absent)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "", None
    try:
        port = parts.port
    except ValueError:
        port = None
    return host, port


def redact(url: str) -> str:
    """The URL for messages and logs: no credentials, no query (signed URLs carry
    secrets there). Never raises: it runs in error paths."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    host, port = _host_port(url)
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS  # urllib's 10 is more than a media URL needs


def probe_http(url: str, timeout: float = OPEN_TIMEOUT, gate: EgressGate | None = None
               ) -> str:
    """GET the URL's head: its media type, or SourceError saying why it cannot be pulled.
    Through `gate` when there is one: every hop, redirects included, is checked there.
    Blocking: run it in a thread (the gate is served on the event loop)."""
    handlers: list[urllib.request.BaseHandler] = [_Redirects()]
    wait = timeout
    if gate is not None:
        handlers.append(urllib.request.ProxyHandler({"http": gate.url, "https": gate.url}))
        wait += 2  # the gate's own connect timeout answers first
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.build_opener(*handlers).open(request, timeout=wait) as response:
            mime = response.headers.get("Content-Type", "")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # its connection, else left to the garbage collector
        raise _probe_error(exc, url, timeout, gate) from None
    return mime.split(";", 1)[0].strip().lower()


def _probe_error(exc: Exception, url: str, timeout: float, gate: EgressGate | None
                 ) -> SourceError:
    """What a failed probe tells the user. The gate's reason comes first: its 403 or 502
    is not the origin's answer, and a refused target's is never asked for."""
    gate_error = gate.take_error() if gate is not None else None
    if gate_error:
        return SourceError(gate_error)
    host, port = _host_port(url)
    where = host or redact(url)
    if isinstance(exc, urllib.error.HTTPError) and str(exc.reason).startswith(
            urllib.request.HTTPRedirectHandler.inf_msg):  # over the cap, or a loop
        return SourceError(f"too many redirects from {redact(url)}")
    if isinstance(exc, urllib.error.HTTPError):
        return SourceError(f"HTTP {exc.code} {exc.reason} from {redact(url)}")
    if isinstance(exc, urllib.error.URLError):
        return SourceError(failure_text(exc.reason, where, port, timeout))
    if isinstance(exc, OSError):
        return SourceError(failure_text(exc, where, port, timeout))
    if isinstance(exc, ValueError | http.client.InvalidURL):  # what urllib cannot parse
        return SourceError(f"invalid URL {redact(url)}: {exc}")
    return SourceError(f"no valid HTTP answer from {where}: "  # a reply that is not HTTP
                       f"{type(exc).__name__} {exc}".rstrip())


def _ffmpeg_options(gate: EgressGate | None) -> dict[str, str]:
    options = {
        "user_agent": USER_AGENT,
        # Keep-alive for the demuxers' seeks: with a new connection per seek,
        # the bundled FFmpeg (libavformat 62) read an OGG/Vorbis file over HTTP
        # up to its first seek and ended there (49 of 1,408 packets, always).
        "multiple_requests": "1",
        "reconnect": "1", "reconnect_delay_max": "2",
        # live HLS: start at the newest segment, not three from the end
        "live_start_index": "-1",
        "protocol_whitelist": PROTOCOLS, "format_whitelist": DEMUXERS,
        "max_redirects": str(MAX_REDIRECTS),
        # FFmpeg's TLS does not verify by default; its GnuTLS is given the CA file
        # OpenSSL uses (SSL_CERT_FILE applies). Its HLS demuxer does not pass this on
        # to segments (docs/DESIGN.md, "Egress policy").
        "tls_verify": "1",
    }
    ca_file = ssl.get_default_verify_paths().cafile or (
        SYSTEM_CA_FILE if os.path.exists(SYSTEM_CA_FILE) else None)
    if ca_file:
        options["ca_file"] = ca_file
    if gate is not None:  # HLS passes it on to segments (and https uses CONNECT)
        options["http_proxy"] = gate.url
    return options


@dataclass
class OpenedSource:
    """An opened container and the streams the session publishes."""

    container: Any
    video: Any | None
    audio: Any | None
    live: bool  # no known duration: a live stream (live HLS, SRT, an endless HTTP stream)
    reader: srt.SrtReader | None = None
    gate: EgressGate | None = None  # every connection FFmpeg makes goes through it

    def close(self) -> None:
        """Close the container (the gate is its pull's: it ends with the pull)."""
        if self.reader is not None:
            self.reader.cancel()
        self.container.close()


def _gated(url: str, refuse: egress.Refuse | None) -> bool:
    """Whether the pull's connections go through an egress gate: http(s) under the
    policy (an SRT caller checks its addresses itself). Never raises: an unparsable
    URL is gated, and fails in the probe."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    return refuse is not None and scheme != "srt"


@contextlib.asynccontextmanager
async def egress_gate_for(url: str, refuse: egress.Refuse | None, *,
                          getaddrinfo: Callable[..., Any] | None = None
                          ) -> AsyncIterator[EgressGate | None]:
    """The egress gate a pull of `url` goes through, served for the `async with` block
    (None: no gate is needed). `getaddrinfo`: a blocking resolver (tests' own)."""
    if not _gated(url, refuse):
        yield None
        return
    assert refuse is not None
    async with open_egress_gate(refuse, getaddrinfo=getaddrinfo) as gate:
        yield gate


def open_source(url: str, stall_timeout: float = STALL_TIMEOUT, *,
                refuse: egress.Refuse | None = egress.refusal,
                getaddrinfo: Callable[..., Any] = socket.getaddrinfo,
                gate: EgressGate | None = None) -> OpenedSource:
    """Open the URL and pick its first video and first audio stream. Blocking: run it
    in a thread. SourceError when it cannot be opened or has nothing to publish.
    `refuse` is the egress policy (None: any address, url_allow_private_addresses);
    `getaddrinfo` the resolver an SRT caller checks (tests give their own); `gate`
    the serving egress gate (egress_gate_for()), which an http(s) URL under the
    policy must have."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise SourceError(f"invalid URL {redact(url)}: {exc}") from None
    reader = None
    if gate is None and _gated(url, refuse):
        raise ValueError("an http(s) pull under the egress policy needs its egress gate")
    try:
        if scheme == "srt":
            mime = "video/mp2t"
            caller = srt.SrtCaller()
            resolve = (getaddrinfo if refuse is None else functools.partial(
                egress.resolve, refuse=refuse, getaddrinfo=getaddrinfo))
            try:
                caller.connect(srt.parse_srt_url(url), timeout=OPEN_TIMEOUT,
                               getaddrinfo=resolve)
            except BaseException:
                caller.close()
                raise
            reader = srt.SrtReader(caller, stall_timeout=stall_timeout)
            container = av.open(reader, format="mpegts", timeout=(OPEN_TIMEOUT, stall_timeout))
        else:
            mime = probe_http(url, gate=gate)
            if mime.startswith(NOT_MEDIA):
                raise unsupported(mime)
            container = av.open(url, timeout=(OPEN_TIMEOUT, stall_timeout),
                                options=_ffmpeg_options(gate))
            if gate is not None and gate.refused:  # e.g. an HLS segment FFmpeg skipped
                container.close()
                raise SourceError(gate.refused)
    except BaseException as exc:
        if reader is not None:
            reader.cancel()
        gate_error = gate.take_error() if gate is not None else None
        if isinstance(exc, av.error.FFmpegError) and gate_error:
            raise SourceError(gate_error) from None  # not the gate's 403/502 as FFmpeg saw it
        if isinstance(exc, egress.Refused | srt.SrtError):
            raise SourceError(str(exc)) from None
        if isinstance(exc, av.error.ExitError):
            raise SourceError(f"no data from {redact(url)} for {stall_timeout:.0f} s"
                              ) from None
        # not demuxable (EINVAL: a demuxer off the whitelist, or a protocol)
        if isinstance(exc, av.error.InvalidDataError | av.error.ArgumentError):
            raise unsupported(mime) from None
        if isinstance(exc, av.error.FFmpegError):
            raise SourceError(f"cannot open {redact(url)}: {exc.strerror or exc}") from None
        raise
    video = next((s for s in container.streams.video
                  if not s.disposition & av.stream.Disposition.attached_pic), None)
    audio = next(iter(container.streams.audio), None)
    if video is None and audio is None:
        container.close()
        if reader is not None:
            reader.cancel()
        raise unsupported(mime)
    for stream in (video, audio):
        if stream is not None:
            stream.codec_context.thread_type = "AUTO"  # paced: threads' delay is hidden
    return OpenedSource(container, video, audio, live=container.duration is None,
                        reader=reader, gate=gate)


class MediaClock:
    """When each frame is due, from its timestamp, on one clock for audio and video.

    Anchored at the first frame. A frame more than MAX_EARLY ahead of the clock is a
    timestamp jump (a discontinuity): the clock restarts at it. A frame more than
    MAX_LATE behind it means the source or the pipeline stalled:
    - a file (duration known) continues from there: the clock re-anchors at the late
      frame, delaying what follows rather than bursting it out;
    - a live source skips its late frames (they are still decoded) for up to
      LIVE_CATCH_UP seconds: after a stalled HLS download the demuxer fetches the
      segments it missed faster than real time, and the room gets back to the live
      edge instead of staying behind it, stall after stall, for the rest of the
      session. A source still late after that cannot catch up (SRT drops what it
      could not deliver; a source clock that runs slow): the clock re-anchors and
      follows it.
    `due()` returns None for a frame to skip.
    """

    def __init__(self, now: Callable[[], float] = trio.current_time, *,
                 live: bool = False) -> None:
        self._now = now
        self._anchor: tuple[float, int] | None = None
        self.live = live
        self._late_since: float | None = None  # live: when the current run of late frames began
        self.reanchored = 0
        self.skipped = 0
        self.first_wall: float | None = None
        self.first_ms: int | None = None

    def due(self, pts_ms: int) -> float | None:
        now = self._now()
        if self._anchor is None:
            self._anchor = (now, pts_ms)
            self.first_wall, self.first_ms = now, pts_ms
        wall, media = self._anchor
        due = wall + (pts_ms - media) / 1000
        if now - due > MAX_LATE:
            if self.live:
                if self._late_since is None:
                    self._late_since = now
                if now - self._late_since < LIVE_CATCH_UP:
                    self.skipped += 1
                    return None
            self._late_since = None
            self._anchor = (now, pts_ms)
            self.reanchored += 1
            return now
        self._late_since = None
        if due - now > MAX_EARLY:
            self._anchor = (now, pts_ms)
            self.reanchored += 1
            return now
        return due

    async def wait(self, pts_ms: int) -> bool:
        """Sleep until the frame is due; False: skip it (a live source catching up)."""
        due = self.due(pts_ms)
        if due is None:
            return False
        await trio.sleep_until(due)
        return True


def _ms(frame_or_packet: Any, time_base: Fraction | None) -> int | None:
    pts = frame_or_packet.pts
    if pts is None:
        pts = getattr(frame_or_packet, "dts", None)
    if pts is None or time_base is None:
        return None
    return int(pts * time_base * 1000)


class UrlPull:
    """One pull: open (while the worker joins the room), then demux -> stages -> outputs.
    `async with` it around both: it serves the pull's egress gate meanwhile."""

    def __init__(self, session: Session, url: str, *, allow_private: bool = False) -> None:
        self.session = session
        self.url = url
        self.refuse = None if allow_private else egress.refusal
        self.gate: EgressGate | None = None
        self.source: OpenedSource | None = None
        self.clock = MediaClock()
        self._stop = threading.Event()
        self._exits = contextlib.AsyncExitStack()

    async def __aenter__(self) -> UrlPull:
        self.gate = await self._exits.enter_async_context(
            egress_gate_for(self.url, self.refuse))
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        """Stop the gate: FFmpeg's connections end, a demux thread still reading returns."""
        return await self._exits.__aexit__(*exc_info)

    async def open(self) -> None:
        # in a thread: the event loop serves the gate the probe and FFmpeg connect to
        self.source = await trio.to_thread.run_sync(
            functools.partial(open_source, self.url, refuse=self.refuse, gate=self.gate),
            abandon_on_cancel=True)
        self.clock = MediaClock(live=self.source.live)
        source = self.source
        log.info("opened %s (%s): %s%s%s", redact(self.url), "live" if source.live else
                 "duration known", source.container.format.name,
                 f", video {source.video.codec_context.name} "
                 f"{source.video.codec_context.width}x{source.video.codec_context.height}"
                 if source.video else "",
                 f", audio {source.audio.codec_context.name}" if source.audio else "")

    async def run(self, reader: MessageReader, stdin: trio.abc.ReceiveStream) -> EndOfStream:
        """Publish until the media ends (a clean end) or the front ends the session."""
        if self.source is None:
            await self.open()
        source = self.source
        assert source is not None
        end = EndOfStream("the source ended", drain=True)
        try:
            async with trio.open_nursery() as nursery:
                video_send, video_recv = trio.open_memory_channel[Any](VIDEO_PACKETS)
                audio_send, audio_recv = trio.open_memory_channel[Any](AUDIO_PACKETS)

                async def watch_front() -> None:
                    nonlocal end
                    end = await _front_ended(reader, stdin)
                    nursery.cancel_scope.cancel()

                async def media() -> None:
                    async with trio.open_nursery() as stages:
                        if source.video is not None:
                            stages.start_soon(self._video_stage, video_recv)
                        if source.audio is not None:
                            stages.start_soon(self._audio_stage, audio_recv)
                        # closed here, on the event loop, when the demuxer is done
                        async with video_send, audio_send:
                            await trio.to_thread.run_sync(self._demux, video_send, audio_send,
                                                          abandon_on_cancel=True)
                    nursery.cancel_scope.cancel()  # all published: the session is over

                nursery.start_soon(watch_front)
                nursery.start_soon(media)
        finally:
            # The demux thread may still be inside FFmpeg: the container is left to the
            # process exit, the SRT reader is told to return EOF.
            self._stop.set()
            if source.reader is not None:
                source.reader.cancel()
        clock = self.clock
        if clock.first_wall is not None:
            log.info("paced %s: clock re-anchored %d times, %d late frames skipped",
                     redact(self.url), clock.reanchored, clock.skipped)
        return end

    # -- demux (a thread) --------------------------------------------------------------

    def _demux(self, video_send: trio.MemorySendChannel, audio_send: trio.MemorySendChannel
               ) -> None:
        source = self.source
        assert source is not None
        streams = [s for s in (source.video, source.audio) if s is not None]
        gate = source.gate
        count = 0
        try:
            for packet in source.container.demux(streams):
                if self._stop.is_set():
                    return
                if gate is not None and gate.refused:  # an HLS segment, a reconnection
                    raise SourceError(gate.refused)
                if packet.size == 0:
                    continue  # the demuxer's flush packets
                channel = video_send if packet.stream is source.video else audio_send
                trio.from_thread.run(channel.send, packet)
                count += 1
            if gate is not None and gate.refused:  # FFmpeg's HLS skips a failed segment
                raise SourceError(gate.refused)
            log.info("end of %s after %d packets", redact(self.url), count)
        except av.error.ExitError:
            raise SourceError(f"no data from {redact(self.url)} for {STALL_TIMEOUT:.0f} s"
                              ) from None
        except srt.SrtError as exc:
            raise SourceError(str(exc)) from None
        except av.error.FFmpegError as exc:
            if self._stop.is_set():
                return
            gate_error = gate.take_error() if gate is not None else None
            raise SourceError(gate_error or f"reading {redact(self.url)} failed: "
                              f"{exc.strerror or exc}") from None
        except (trio.RunFinishedError, trio.Cancelled, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            log.info("demux of %s stopped after %d packets: %r", redact(self.url), count, exc)

    # -- stages --------------------------------------------------------------------

    async def _video_stage(self, packets: trio.MemoryReceiveChannel) -> None:
        session = self.session
        source = self.source
        assert source is not None and source.video is not None
        stream = source.video
        codec = stream.codec_context
        session.video_in.mime = MIME.get(codec.name, f"video/{codec.name}")
        time_base = stream.time_base
        async with open_picture_output(session) as output:
            async with packets:
                async for packet in packets:
                    at = _ms(packet, time_base)
                    session.video_in.count(at or 0, packet.size)
                    pictures = await trio.to_thread.run_sync(_decode, codec, packet)
                    await self._show(output, pictures, time_base)
            await self._show(output, await trio.to_thread.run_sync(_decode, codec, None),
                             time_base)

    async def _show(self, output: Any, pictures: list[Any], time_base: Fraction) -> None:
        for picture in pictures:
            pts = _ms(picture, time_base)
            if pts is None:
                continue
            if not await self.clock.wait(pts):
                continue  # behind a live source's edge: skipped (still decoded)
            self.session.video_lag.observe(pts)
            await output.show(picture, pts)

    async def _audio_stage(self, packets: trio.MemoryReceiveChannel) -> None:
        session = self.session
        source = self.source
        assert source is not None and source.audio is not None
        stream = source.audio
        codec = stream.codec_context
        session.audio_in.mime = MIME.get(codec.name, f"audio/{codec.name}")
        session.audio_in.sample_rate, session.audio_in.channels = (
            codec.sample_rate, codec.layout.nb_channels if codec.layout else 0)
        output = AudioOutput(session)
        time_base = stream.time_base
        async with packets:
            async for packet in packets:
                at = _ms(packet, time_base)  # paced by the packet: decoders may not stamp
                session.audio_in.count(at or 0, packet.size)
                frames = _decode(codec, packet)  # on the loop: see relay/worker/decode.py
                if frames and (at is None or await self.clock.wait(at)):
                    await output.play(frames)


def _decode(codec: Any, packet: Any) -> list[Any]:
    """Decode one packet (None: flush). Broken data costs that packet, not the session:
    FFmpeg resynchronises on the next keyframe or frame."""
    try:
        return list(codec.decode(packet))
    except av.error.EOFError:
        return []
    except av.error.FFmpegError as exc:
        log.debug("decode error: %s", exc)
        return []


async def _front_ended(reader: MessageReader, stdin: trio.abc.ReceiveStream) -> EndOfStream:
    """The front sends nothing for a URL session but its end: EndOfStream or EOF."""
    while True:
        for message in await receive_from_front(reader, stdin):
            if isinstance(message, EndOfStream):
                return message
