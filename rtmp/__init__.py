"""Sans-IO RTMP ingest core: bytes in, typed events out (no sockets, clocks or threads).

Typical server loop::

    session = rtmp.ServerSession(rtmp.SessionConfig())
    while data := await stream.receive_some():
        session.receive_data(data)
        while isinstance(event := session.next_event(), rtmp.Event):
            if isinstance(event, rtmp.PublishRequested):
                if known(event.stream_key):
                    session.accept_publish()
                else:
                    session.reject_publish("unknown stream key")
            elif isinstance(event, rtmp.MEDIA_EVENTS):
                pipeline.push(event)
        # here event is rtmp.NEED_DATA, or rtmp.PAUSED if a publish is still undecided
        await stream.send_all(session.data_to_send())

``next_event`` returns an event (an instance of one of the :data:`Event` types) or one of
two sentinels, as h11 does: :data:`NEED_DATA` (feed more bytes) or :data:`PAUSED` (a
publish awaits an answer). Test them with ``is``; ``isinstance(x, rtmp.Event)`` is false
for both and is the loop condition to use.

Publish decisions: ``PublishRequested`` pauses the session (``next_event`` returns
:data:`PAUSED`) until ``accept_publish`` / ``reject_publish``; media on streams that are
not accepted is dropped (counted in ``ServerSession.dropped_messages``), never an error.

Errors: any malformed, hostile or unsupported input raises :class:`RTMPProtocolError`
(a ``ValueError``) from ``receive_data``/``next_event``, and the session stays failed
afterwards. Any other exception is a bug in this package, not the peer's doing: it
escapes as itself (nothing re-labels it as bad input) and leaves the session failed
(further calls raise ``RuntimeError``). Calling ``accept_publish``/``reject_publish``
with no publish pending is a local bug and raises ``RuntimeError``. Connection and
stream states move only through the transition table in ``rtmp/_state.py``.

Media-event boundary (what the media pipeline consumes; identical for a live RTMP
publish and for an FLV file read with :class:`FLVReader` + :func:`parse_tag`):

* :class:`VideoConfig` ``(codec, config, dts, pts, record_type, profile, level,
  nal_length_size, parameter_sets, track_id, stream_id)``: decoder configuration;
  ``codec`` in ``h264 | hevc | av1 | vp9 | vp8 | vvc``; ``config`` is the avcC / hvcC /
  av1C / vpcC record. Comes before the first frame and again when it changes.
* :class:`VideoFrame` ``(codec, dts, pts, keyframe, data, track_id, stream_id)``: one
  access unit; h264/hevc data are length-prefixed NAL units (AVCC form, prefix size
  ``nal_length_size`` of the last config), av1 OBUs, vp8/vp9 frames.
* :class:`AudioConfig` ``(codec, config, dts, sample_rate, channels, object_type, ...)``:
  ``codec`` in ``aac | opus | mp3 | flac | ac3 | eac3``; AAC's AudioSpecificConfig parsed.
* :class:`AudioFrame` ``(codec, dts, data, sample_rate, channels, ...)``: raw AAC access
  unit / Opus packet / MP3 frame (MP3 and G.711 carry their own rate and channels).
* :class:`VideoSequenceEnd`, :class:`AudioSequenceEnd`, :class:`VideoMetadata`,
  :class:`UnsupportedMedia` (a codec this core does not parse: fail or ignore).

All times are ``int`` milliseconds on a per-stream 64-bit clock: it does not wrap at
2^32 ms, and ``pts = dts + composition offset`` (B-frames make ``pts > dts``).
"""

from __future__ import annotations

from ._amf import (
    UNDEFINED,
    AMFDate,
    AVMPlus,
    ECMAArray,
    TypedObject,
    Undefined,
    XMLDocument,
    amf0_decode,
    amf0_decode_all,
    amf0_encode,
    amf3_decode,
    amf3_encode,
)
from ._chunks import ChunkReader, ChunkWriter, RTMPMessage
from ._errors import RTMPProtocolError
from ._events import (
    AudioConfig,
    AudioFrame,
    AudioSequenceEnd,
    CommandReceived,
    Connected,
    DataMessage,
    Event,
    HandshakeComplete,
    MediaEvent,
    Metadata,
    PingResponse,
    PublishRequested,
    StreamEnded,
    UnknownMessage,
    UnsupportedMedia,
    VideoConfig,
    VideoFrame,
    VideoMetadata,
    VideoSequenceEnd,
)
from ._flv import (
    AACConfig,
    FLVReader,
    FLVTag,
    parse_aac_config,
    parse_audio_tag,
    parse_tag,
    parse_video_tag,
)
from ._session import STATUS_BAD_NAME, STATUS_DENIED, ServerSession, SessionConfig
from ._state import NEED_DATA, PAUSED

MEDIA_EVENTS = (
    VideoConfig,
    VideoFrame,
    VideoSequenceEnd,
    VideoMetadata,
    AudioConfig,
    AudioFrame,
    AudioSequenceEnd,
    UnsupportedMedia,
)

__all__ = [
    "MEDIA_EVENTS",
    "NEED_DATA",
    "PAUSED",
    "STATUS_BAD_NAME",
    "STATUS_DENIED",
    "UNDEFINED",
    "AACConfig",
    "AMFDate",
    "AVMPlus",
    "AudioConfig",
    "AudioFrame",
    "AudioSequenceEnd",
    "ChunkReader",
    "ChunkWriter",
    "CommandReceived",
    "Connected",
    "DataMessage",
    "ECMAArray",
    "Event",
    "FLVReader",
    "FLVTag",
    "HandshakeComplete",
    "MediaEvent",
    "Metadata",
    "PingResponse",
    "PublishRequested",
    "RTMPMessage",
    "RTMPProtocolError",
    "ServerSession",
    "SessionConfig",
    "StreamEnded",
    "TypedObject",
    "Undefined",
    "UnknownMessage",
    "UnsupportedMedia",
    "VideoConfig",
    "VideoFrame",
    "VideoMetadata",
    "VideoSequenceEnd",
    "XMLDocument",
    "amf0_decode",
    "amf0_decode_all",
    "amf0_encode",
    "amf3_decode",
    "amf3_encode",
    "parse_aac_config",
    "parse_audio_tag",
    "parse_tag",
    "parse_video_tag",
]
