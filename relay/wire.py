"""msgpack framing of the messages between the ingest front and a session worker.

The front (RTMP/WHIP/URL demuxing, in the service process) sends the worker the
session's start parameters and then media events; the worker (decode, encode,
publish, in a child process) answers with state reports. msgpack is a
self-delimiting stream, so a pipe needs no extra framing, and the
`Unpacker`'s buffer bound caps what a misbehaving peer can make us hold.

Sans-IO like the protocol cores: `encode()` gives bytes, `MessageReader` takes
bytes and yields messages; it owns no pipe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

import rtmp

MAX_MESSAGE_BYTES = 16 << 20


class WireError(ValueError):
    """The byte stream is not a valid message sequence."""


@dataclass(frozen=True)
class Start:
    """First message to a worker: who to publish as, where, and how."""

    ws_url: str
    token: str
    ingress: bytes  # serialized livekit IngressInfo
    transcode: bool = True
    # WHIP: the publisher's SDP offer. The worker answers it (`WhipAnswer`) and takes
    # the media over its own peer connection instead of from the front.
    offer: str = ""
    host_addresses: tuple[str, ...] = ()  # ICE host candidates to gather (empty: all)
    # URL input: the worker pulls this URL itself (HTTP(S), HLS, SRT) and paces it; the
    # front sends no media, only the end of the session.
    url: str = ""
    # WHIP: the UDP ports ICE host candidates are bound in, first..last; (0, 0): any
    ice_ports: tuple[int, int] = (0, 0)
    # URL input: url_allow_private_addresses; False: the egress policy applies
    # (relay/worker/egress.py: only public addresses)
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class RemoteCandidates:
    """Front -> worker: ICE candidates the WHIP publisher trickled (PATCH).

    `candidates` are (mid, "candidate:..." attribute value) pairs; `end` is the
    publisher's end-of-candidates.
    """

    candidates: tuple[tuple[str, str], ...]
    end: bool = False


@dataclass(frozen=True)
class IceRestart:
    """Front -> worker: the WHIP publisher restarts ICE (PATCH with new credentials).

    The worker takes the publisher's new ufrag and password, makes its own, and
    answers with `IceCredentials`; `candidates` and `end` as in `RemoteCandidates`.
    """

    ufrag: str
    pwd: str
    candidates: tuple[tuple[str, str], ...] = ()
    end: bool = False


@dataclass(frozen=True)
class IceCredentials:
    """Worker -> front: the worker's new ICE credentials after an `IceRestart`
    (empty when it could not restart: `error` says why)."""

    ufrag: str
    pwd: str
    error: str = ""


@dataclass(frozen=True)
class WhipAnswer:
    """Worker -> front: the SDP answer to a WHIP offer (the front returns it in 201)."""

    sdp: str


@dataclass(frozen=True)
class EndOfStream:
    """The session is over: leave the room and exit.

    `drain`: the source ended cleanly, so publish what is still queued first (at
    most a second); without it (delete, update, takeover) leave at once.
    """

    reason: str = ""
    drain: bool = True


@dataclass(frozen=True)
class StateReport:
    """Worker -> front: a state change or a periodic input-stats refresh."""

    status: str  # "publishing" | "stats" | "error"
    error: str = ""
    room_id: str = ""
    tracks: tuple[bytes, ...] = ()  # serialized livekit TrackInfo
    video: dict[str, Any] = field(default_factory=dict)  # InputVideoState fields
    audio: dict[str, Any] = field(default_factory=dict)  # InputAudioState fields
    drops: dict[str, int] = field(default_factory=dict)  # what the worker dropped, by why


Message = (Start | EndOfStream | StateReport | WhipAnswer | RemoteCandidates | IceRestart
           | IceCredentials
           | rtmp.VideoConfig | rtmp.VideoFrame | rtmp.AudioConfig | rtmp.AudioFrame)

_TAGS: dict[type, str] = {
    Start: "start", EndOfStream: "end", StateReport: "state", WhipAnswer: "answer",
    RemoteCandidates: "cands", IceRestart: "restart", IceCredentials: "creds",
    rtmp.VideoConfig: "vc", rtmp.VideoFrame: "v", rtmp.AudioConfig: "ac", rtmp.AudioFrame: "a",
}


def _fields(message: Any) -> list[Any]:
    if isinstance(message, rtmp.VideoFrame):
        return [message.codec, message.dts, message.pts, message.keyframe, message.data]
    if isinstance(message, rtmp.AudioFrame):
        return [message.codec, message.dts, message.data, message.sample_rate or 0,
                message.channels or 0]
    if isinstance(message, rtmp.VideoConfig):
        return [message.codec, message.config, message.dts, message.pts, message.record_type,
                message.nal_length_size or 0, list(message.parameter_sets)]
    if isinstance(message, rtmp.AudioConfig):
        return [message.codec, message.config, message.dts, message.sample_rate,
                message.channels]
    if isinstance(message, StateReport):
        return [message.status, message.error, message.room_id, list(message.tracks),
                message.video, message.audio, message.drops]
    if isinstance(message, Start):
        return [message.ws_url, message.token, message.ingress, message.transcode,
                message.offer, list(message.host_addresses), message.url,
                list(message.ice_ports), message.allow_private_addresses]
    if isinstance(message, WhipAnswer):
        return [message.sdp]
    if isinstance(message, RemoteCandidates):
        return [[list(c) for c in message.candidates], message.end]
    if isinstance(message, IceRestart):
        return [message.ufrag, message.pwd, [list(c) for c in message.candidates], message.end]
    if isinstance(message, IceCredentials):
        return [message.ufrag, message.pwd, message.error]
    if isinstance(message, EndOfStream):
        return [message.reason, message.drain]
    raise TypeError(f"not a wire message: {type(message).__name__}")


def encode(message: Message) -> bytes:
    return msgpack.packb([_TAGS[type(message)], *_fields(message)], use_bin_type=True)


def _build(item: Any) -> Message:
    if not isinstance(item, list) or not item:
        raise WireError(f"expected a tagged list, got {type(item).__name__}")
    tag, args = item[0], item[1:]
    try:
        if tag == "v":
            codec, dts, pts, keyframe, data = args
            return rtmp.VideoFrame(codec=codec, dts=dts, pts=pts, keyframe=keyframe, data=data)
        if tag == "a":
            codec, dts, data, rate, channels = args
            return rtmp.AudioFrame(codec=codec, dts=dts, data=data, sample_rate=rate or None,
                                   channels=channels or None)
        if tag == "vc":
            codec, config, dts, pts, record_type, nal_length_size, parameter_sets = args
            return rtmp.VideoConfig(codec=codec, config=config, dts=dts, pts=pts,
                                    record_type=record_type,
                                    nal_length_size=nal_length_size or None,
                                    parameter_sets=tuple(parameter_sets))
        if tag == "ac":
            codec, config, dts, rate, channels = args
            return rtmp.AudioConfig(codec=codec, config=config, dts=dts, sample_rate=rate,
                                    channels=channels)
        if tag == "state":
            status, error, room_id, tracks, video, audio, drops = args
            return StateReport(status, error, room_id, tuple(tracks), dict(video), dict(audio),
                               dict(drops))
        if tag == "start":
            ws_url, token, ingress, transcode, offer, hosts, url, (first, last), private = args
            return Start(ws_url, token, ingress, transcode, offer, tuple(hosts), url,
                         (int(first), int(last)), private is True)
        if tag == "answer":
            (sdp,) = args
            return WhipAnswer(sdp)
        if tag == "cands":
            candidates, end = args
            return RemoteCandidates(tuple((str(m), str(c)) for m, c in candidates), bool(end))
        if tag == "restart":
            ufrag, pwd, candidates, end = args
            return IceRestart(str(ufrag), str(pwd),
                              tuple((str(m), str(c)) for m, c in candidates), bool(end))
        if tag == "creds":
            ufrag, pwd, error = args
            return IceCredentials(str(ufrag), str(pwd), str(error))
        if tag == "end":
            reason, drain = args
            return EndOfStream(reason, drain)
    except (TypeError, ValueError) as exc:
        raise WireError(f"bad {tag!r} message: {exc}") from None
    raise WireError(f"unknown message tag {tag!r}")


class FrameReader:
    """Bytes in (`receive_data`), msgpack values out (`frames()`). Bounded buffering."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2 * max_message_bytes,
                                          max_bin_len=max_message_bytes,
                                          max_str_len=1 << 20, max_array_len=1 << 16,
                                          max_map_len=1 << 10)

    def receive_data(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise WireError("message larger than the buffer bound") from None

    def frames(self) -> Iterator[Any]:
        while True:
            try:
                item = next(self._unpacker)
            except StopIteration:
                return
            except (msgpack.UnpackException, ValueError) as exc:
                raise WireError(f"undecodable message: {exc}") from None
            yield item


class MessageReader(FrameReader):
    """Bytes in (`receive_data`), messages out (iterate)."""

    def __iter__(self) -> Iterator[Message]:
        for item in self.frames():
            yield _build(item)


# -- what the service puts in a worker's environment besides the allow-list ---------------


@dataclass(frozen=True)
class WorkerLimits:
    """Resource limits a session worker sets on itself before it reads anything
    (relay/worker/limits.py), as hard limits it cannot raise again: a decoder bug
    exploited by a hostile stream stays inside them. 0 turns one off."""

    memory_mb: int = 4096  # address space (RLIMIT_AS); a live worker maps ~1.4 GiB
    cpu_seconds: int = 0  # CPU time (RLIMIT_CPU); off: a 24/7 stream has no end

    ENV_MEMORY: ClassVar[str] = "INGRESS_WORKER_MEMORY_MB"
    ENV_CPU: ClassVar[str] = "INGRESS_WORKER_CPU_SECONDS"

    def environment(self) -> dict[str, str]:
        return {self.ENV_MEMORY: str(self.memory_mb), self.ENV_CPU: str(self.cpu_seconds)}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerLimits:
        def number(name: str) -> int:
            try:
                return max(0, int(environ.get(name, "0")))
            except ValueError:
                return 0

        return cls(number(cls.ENV_MEMORY), number(cls.ENV_CPU))
