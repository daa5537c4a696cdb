"""Events produced by the RTMP core: frozen dataclasses, compared by value.

Media events (``VideoConfig``, ``VideoFrame``, ``AudioConfig``, ``AudioFrame``, ...) are
produced both by :class:`rtmp.ServerSession` and by the standalone FLV parser, so a file
and a live publish feed the media pipeline the same way. Times are integer
milliseconds on a 64-bit clock (never wrapping).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AudioConfig",
    "AudioFrame",
    "AudioSequenceEnd",
    "CommandReceived",
    "Connected",
    "DataMessage",
    "Event",
    "HandshakeComplete",
    "MediaEvent",
    "Metadata",
    "PingResponse",
    "PublishRequested",
    "StreamEnded",
    "UnknownMessage",
    "UnsupportedMedia",
    "VideoConfig",
    "VideoFrame",
    "VideoMetadata",
    "VideoSequenceEnd",
]


# -- media ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoConfig:
    """A video decoder configuration (FLV sequence header / E-RTMP SequenceStart).

    ``record_type`` names the bytes in ``config``: ``"avcC"`` (h264), ``"hvcC"`` (hevc),
    ``"av1C"`` (av1), ``"vpcC"`` (vp8/vp9), ``"vvcC"`` or ``"av1-mpeg2ts"`` (an
    AV1VideoDescriptor). ``parameter_sets`` holds the SPS/PPS (and VPS) NAL units of
    avcC/hvcC records, ``nal_length_size`` the size of the NAL length prefixes used by
    the frames that follow.
    """

    codec: str
    config: bytes
    dts: int
    pts: int
    record_type: str
    profile: int | None = None
    level: int | None = None
    nal_length_size: int | None = None
    parameter_sets: tuple[bytes, ...] = ()
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class VideoFrame:
    """One coded video access unit.

    ``data`` is what the codec's MP4 sample would hold: h264/hevc/vvc as length-prefixed
    NAL units (prefix size from the config), av1 as OBUs, vp8/vp9 as a frame.
    """

    codec: str
    dts: int
    pts: int
    keyframe: bool
    data: bytes
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class VideoSequenceEnd:
    """The encoder ended the video sequence (a new config may follow)."""

    codec: str
    dts: int
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class VideoMetadata:
    """E-RTMP VideoPacketType.Metadata: AMF name/value pairs (e.g. ``colorInfo``)."""

    codec: str
    dts: int
    values: tuple[Any, ...]
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class AudioConfig:
    """An audio decoder configuration (AAC AudioSpecificConfig, OpusHead, ...).

    ``sample_rate`` / ``channels`` come from the configuration itself (0 if it does not
    say); ``object_type`` is the AAC audio object type (2 = LC, 5 = HE/SBR, 29 = HEv2).
    """

    codec: str
    config: bytes
    dts: int
    sample_rate: int
    channels: int
    object_type: int | None = None
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class AudioFrame:
    """One coded audio frame (AAC raw, Opus packet, MP3 frame, ...).

    ``sample_rate``/``channels`` are set when the frame itself tells (MP3 header, G.711);
    for AAC and Opus use the preceding :class:`AudioConfig`.
    """

    codec: str
    dts: int
    data: bytes
    sample_rate: int | None = None
    channels: int | None = None
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class AudioSequenceEnd:
    """The encoder ended the audio sequence."""

    codec: str
    dts: int
    track_id: int = 0
    stream_id: int = 0


@dataclass(frozen=True)
class UnsupportedMedia:
    """A media tag this core does not parse (e.g. Sorenson H.263, Speex, VP6).

    ``codec`` is the FLV codec id as text (``"flv-video-2"``) or the FourCC.
    """

    kind: str
    codec: str
    dts: int
    track_id: int = 0
    stream_id: int = 0


# frames first: ``isinstance(x, Event)`` tries the members in order, per event
MediaEvent = (
    VideoFrame
    | AudioFrame
    | VideoConfig
    | VideoSequenceEnd
    | VideoMetadata
    | AudioConfig
    | AudioSequenceEnd
    | UnsupportedMedia
)


# -- session ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeComplete:
    """C2 arrived; ``digest`` tells whether the Flash digest form was used."""

    digest: bool


@dataclass(frozen=True)
class Connected:
    """The client sent ``connect``; the session already answered with success.

    E-RTMP clients declare codecs via ``fourcc_list`` and/or the FourCC info maps.
    ``properties`` is the whole command object.
    """

    app: str
    tc_url: str
    flash_ver: str
    object_encoding: int
    fourcc_list: tuple[str, ...] | None = None
    video_fourcc_info_map: dict[str, Any] | None = None
    audio_fourcc_info_map: dict[str, Any] | None = None
    caps_ex: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishRequested:
    """The client wants to publish; answer with ``accept_publish`` or ``reject_publish``.

    ``stream_key`` is the last path segment of ``publish_name`` without its query string
    (the app name plays no part); ``query`` is the raw query string, if any.
    """

    stream_id: int
    stream_key: str
    publish_name: str
    publish_type: str
    app: str
    query: str = ""


@dataclass(frozen=True)
class Metadata:
    """``@setDataFrame``/``onMetaData`` (or a bare ``onMetaData``) with its values."""

    timestamp: int
    values: dict[str, Any]
    stream_id: int = 0


@dataclass(frozen=True)
class DataMessage:
    """Any other data message (e.g. ``onTextData``, ``onCuePoint``)."""

    timestamp: int
    name: str
    args: tuple[Any, ...]
    stream_id: int = 0


@dataclass(frozen=True)
class CommandReceived:
    """A command this session does not handle itself (e.g. ``play``, ``_checkbw``)."""

    name: str
    transaction_id: float
    command_object: Any
    args: tuple[Any, ...]
    stream_id: int = 0


@dataclass(frozen=True)
class StreamEnded:
    """A publish ended: FCUnpublish, closeStream or deleteStream (emitted once)."""

    stream_id: int
    stream_key: str
    reason: str


@dataclass(frozen=True)
class PingResponse:
    """The client answered our ``send_ping(timestamp)``."""

    timestamp: int


@dataclass(frozen=True)
class UnknownMessage:
    """A message type this core skips (shared objects, unknown types)."""

    type_id: int
    stream_id: int
    timestamp: int
    length: int


Event = (
    MediaEvent
    | HandshakeComplete
    | Connected
    | PublishRequested
    | Metadata
    | DataMessage
    | CommandReceived
    | StreamEnded
    | PingResponse
    | UnknownMessage
)
"""Every event type: ``isinstance(x, Event)`` is how a caller tells an event from the
:data:`NEED_DATA`/:data:`PAUSED` sentinels that ``next_event`` returns otherwise."""
