"""The ingress participant in its LiveKit room, seen from trio.

The livekit SDK is asyncio-only; this is the one place that reaches it, on the
worker's asyncio thread (callers must run inside `aio_thread.open_asyncio_thread()`).
SDK objects that bind the asyncio loop at construction (Room, AudioSource) are
built on that loop. The sources' `capture_frame` for video is a synchronous FFI
call and is made straight from trio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio
from livekit import rtc
from livekit.protocol import models
from livekit.rtc._proto.room_pb2 import (
    DEGRADATION_PREFERENCE_MAINTAIN_FRAMERATE_AND_RESOLUTION,
    ENCODER_BACKEND_PRE_ENCODED,
    AudioEncoding,
)
from livekit.rtc._proto.video_frame_pb2 import ENCODED_FRAME_DELTA, ENCODED_FRAME_KEY

from . import aio_thread

log = logging.getLogger(__name__)


_ENCODED_CODECS = {"h264": rtc.VideoCodec.H264, "vp8": rtc.VideoCodec.VP8}
AUDIO_QUEUE_MS = 100  # the SDK's default (1 s) would let audio latency grow that far

_SOURCES = {
    models.TrackSource.CAMERA: rtc.TrackSource.SOURCE_CAMERA,
    models.TrackSource.SCREEN_SHARE: rtc.TrackSource.SOURCE_SCREENSHARE,
    models.TrackSource.MICROPHONE: rtc.TrackSource.SOURCE_MICROPHONE,
    models.TrackSource.SCREEN_SHARE_AUDIO: rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO,
}


class PublishError(Exception):
    """The room could not be joined or a track not published."""


@dataclass(frozen=True)
class PublishedTrack:
    sid: str
    kind: str  # "video" | "audio"
    name: str
    source: int  # livekit.protocol.models.TrackSource
    width: int = 0
    height: int = 0
    simulcast: bool = False
    mime_type: str = ""

    def to_track_info(self) -> models.TrackInfo:
        return models.TrackInfo(
            sid=self.sid, name=self.name, source=self.source,  # type: ignore[arg-type]
            type=models.TrackType.VIDEO if self.kind == "video" else models.TrackType.AUDIO,
            width=self.width, height=self.height, simulcast=self.simulcast,
            mime_type=self.mime_type)


async def _new_room() -> rtc.Room:
    return rtc.Room()


async def _room_sid(room: rtc.Room) -> str:
    return await room.sid  # a property that waits for the server's answer


async def _new_audio_source(rate: int, channels: int) -> rtc.AudioSource:
    return rtc.AudioSource(rate, channels, queue_size_ms=AUDIO_QUEUE_MS)


class RoomPublisher:
    """Join once, publish at most one video and one audio track, leave once."""

    def __init__(self) -> None:
        self._room: rtc.Room | None = None
        self._publishing = trio.Lock()
        self._video: rtc.VideoSource | None = None
        self._audio: rtc.AudioSource | None = None
        self._encoded: rtc.EncodedVideoSource | None = None
        self._encoded_codec = 0
        self._new_video_subscriber = False
        self.tracks: list[PublishedTrack] = []
        self.room_sid = ""

    async def connect(self, ws_url: str, token: str) -> None:
        self._room = await aio_thread.call(_new_room)

        @self._room.on("local_track_subscribed")
        def subscribed(track: Any) -> None:
            if isinstance(track, rtc.LocalVideoTrack):
                self._new_video_subscriber = True
        try:
            await aio_thread.call(self._room.connect, ws_url, token)
            self.room_sid = await aio_thread.call(_room_sid, self._room)
        except Exception as exc:  # the SDK raises its own ConnectError and others
            raise PublishError(f"cannot join the room at {ws_url}: {exc}") from exc
        log.info("joined room %s as %s", self._room.name,
                 self._room.local_participant.identity)

    async def publish_video(self, width: int, height: int, *, name: str, source: int,
                            codec: str, max_bitrate: int, max_framerate: float,
                            simulcast: bool) -> PublishedTrack:
        assert self._room is not None
        self._video = rtc.VideoSource(width, height, is_screencast=(
            source == models.TrackSource.SCREEN_SHARE))
        track = rtc.LocalVideoTrack.create_video_track(name or "video", self._video)
        options = rtc.TrackPublishOptions(
            source=_SOURCES.get(source, rtc.TrackSource.SOURCE_CAMERA),
            simulcast=simulcast,
            video_encoding=rtc.VideoEncoding(max_bitrate=max_bitrate,
                                             max_framerate=max_framerate),
            video_codec=rtc.VideoCodec.VP8 if codec == "vp8" else rtc.VideoCodec.H264,
            # No silent CPU adaptation: libwebrtc's default trades frame rate for CPU
            # headroom (we saw the top layer fall to ~6 fps on a busy machine). An
            # ingress owes subscribers its preset; when the node cannot keep up, the
            # pipeline drops frames by its own rule and says so.
            degradation_preference=DEGRADATION_PREFERENCE_MAINTAIN_FRAMERATE_AND_RESOLUTION,
        )
        return await self._publish_video(track, options, width, height, codec, source)

    def capture_video(self, width: int, height: int, i420: bytes | bytearray,
                      timestamp_us: int) -> None:
        assert self._video is not None
        self._video.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, i420),
                                  timestamp_us=timestamp_us)

    async def publish_encoded_video(self, width: int, height: int, *, name: str, source: int,
                                    codec: str) -> PublishedTrack:
        """A single-layer track fed with the publisher's own encoded frames (passthrough)."""
        assert self._room is not None
        self._encoded = rtc.EncodedVideoSource(width, height)
        self._encoded_codec = _ENCODED_CODECS[codec]
        track = rtc.LocalVideoTrack.create_video_track(name or "video", self._encoded)
        options = rtc.TrackPublishOptions(
            source=_SOURCES.get(source, rtc.TrackSource.SOURCE_CAMERA), simulcast=False,
            video_codec=rtc.VideoCodec.VP8 if codec == "vp8" else rtc.VideoCodec.H264,
            video_encoder=ENCODER_BACKEND_PRE_ENCODED)
        return await self._publish_video(track, options, width, height, codec, source)

    def capture_encoded_video(self, data: bytes, width: int, height: int, keyframe: bool,
                              timestamp_us: int) -> bool:
        """One access unit as the publisher encoded it; whether the SDK accepted it."""
        assert self._encoded is not None
        return self._encoded.capture_frame(rtc.EncodedVideoFrame(
            data=data, width=width, height=height, codec=self._encoded_codec,
            frame_type=ENCODED_FRAME_KEY if keyframe else ENCODED_FRAME_DELTA,
            timestamp_us=timestamp_us))

    def keyframe_requested(self) -> bool:
        """Whether a subscriber needs a keyframe since the last call (passthrough): it
        asked (the SFU's PLI, as the SDK's feedback), or it has just subscribed. The
        subscription counts on its own: in about 1 run of 7 of the H.264 WHIP
        passthrough test no request came through for a new viewer at all, and the
        publisher's own next keyframe was seconds away."""
        if self._encoded is None:
            return False
        new_subscriber, self._new_video_subscriber = self._new_video_subscriber, False
        return self._encoded.take_feedback().keyframe_requested or new_subscriber

    async def publish_audio(self, sample_rate: int, channels: int, *, name: str,
                            source: int, max_bitrate: int, dtx: bool) -> PublishedTrack:
        assert self._room is not None
        self._audio = await aio_thread.call(_new_audio_source, sample_rate, channels)
        track = rtc.LocalAudioTrack.create_audio_track(name or "audio", self._audio)
        options = rtc.TrackPublishOptions(
            source=_SOURCES.get(source, rtc.TrackSource.SOURCE_MICROPHONE), dtx=dtx,
            audio_encoding=AudioEncoding(max_bitrate=max_bitrate))
        publication = await self._publish(track, options)
        published = PublishedTrack(publication.sid, "audio", publication.name, source or
                                   models.TrackSource.MICROPHONE, mime_type="audio/opus")
        self.tracks.append(published)
        return published

    async def capture_audio(self, pcm: bytes, sample_rate: int, channels: int) -> None:
        assert self._audio is not None
        frame = rtc.AudioFrame(pcm, sample_rate, channels, len(pcm) // (2 * channels))
        await aio_thread.call(self._audio.capture_frame, frame)

    async def _publish_video(self, track: rtc.LocalVideoTrack,
                             options: rtc.TrackPublishOptions, width: int, height: int,
                             codec: str, source: int) -> PublishedTrack:
        publication = await self._publish(track, options)
        published = PublishedTrack(publication.sid, "video", publication.name, source or
                                   models.TrackSource.CAMERA, width, height, options.simulcast,
                                   "video/" + ("VP8" if codec == "vp8" else "H264"))
        self.tracks.append(published)
        return published

    async def _publish(self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions
                       ) -> rtc.LocalTrackPublication:
        """One publication at a time. The SDK (livekit 1.2.1) negotiates two tracks
        published at once in one offer, and then now and then ignores the video
        track's codec: seen in livekit-server's log as an H.264 passthrough track
        received as VP8, which no viewer can decode (the WHIP H.264 test's viewer
        got no video in ~1 run of 10; WHIP publishes audio and video within a
        millisecond of each other)."""
        assert self._room is not None
        try:
            async with self._publishing:
                return await aio_thread.call(self._room.local_participant.publish_track,
                                            track, options)
        except Exception as exc:
            raise PublishError(f"cannot publish track {track.name}: {exc}") from exc

    async def close(self) -> None:
        """Leave the room (the participant disappears for subscribers at once)."""
        room, self._room = self._room, None
        if room is not None:
            try:
                await aio_thread.call(room.disconnect)
            except Exception:  # leaving must not mask why we are leaving
                log.exception("error while leaving the room")
