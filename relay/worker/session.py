"""One session inside its worker: decode, shape and publish into the room.

`Session` holds what every input shares: the ingress' encoding options, the
publisher, the input statistics and state reports, and the decode stages
(`video_stage`, `audio_stage`) with their outputs (`PictureOutput`: one encoder
per simulcast layer; `AudioOutput`: Opus), whose frames the publisher
(relay/worker/room) sends into the room. The inputs (rtmp_input.py,
url_input.py, whip_input.py) feed it; main.py picks the input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import av
import trio
from livekit.protocol import ingress as pb
from livekit.protocol import models

import rtmp
from relay.wire import (
    Message,
    Start,
    StateReport,
    encode,
)

from .decode import AudioDecoder, DecodeError, VideoDecoder
from .encode import EncodeError, LayerEncoder, OpusEncoder
from .handoff import ThreadInbox, consume_in_thread
from .layers import (
    AudioEncoding,
    LayerSpec,
    VideoEncoding,
    audio_encoding,
    fit_layers,
    video_encoding,
)
from .room import PublishedTrack, RoomPublisher, VideoLayer

log = logging.getLogger("relay.worker")

NO_MEDIA_TIMEOUT = 30.0
VIDEO_QUEUE = 120  # coded frames waiting for the decoder (~4 s at 30 fps): absorbs bursts
MAX_VIDEO_LAG_MS = 500  # decoded pictures further behind the newest arrival are skipped
# Coded audio further behind the newest audio arrival is skipped before decoding: a
# backlog (the media that queues while the worker joins the room, a stall) is stale by
# the time it could be sent, and a burst of it would only fill subscribers' jitter
# buffers. (With the SDK's AudioSource, which released audio at exactly real time, it
# stayed for the whole session: +0.6 to +2.4 s audio behind video, bench/avsync.py.)
MAX_AUDIO_LAG_MS = 50
AUDIO_QUEUE = 100  # coded audio frames (~2 s of AAC)
MAX_CONSECUTIVE_DECODE_ERRORS = 30  # audio
MAX_FRAMES_WITHOUT_PICTURE = 150  # ~5 s at 30 fps of video that decodes to nothing
STATS_INTERVAL = 5.0
DRAIN_SECONDS = 1.0


class SessionFailed(Exception):
    """The session cannot go on; the message becomes the ingress' error text."""


class FrameRateLimiter:
    """Keeps frames no closer than 1/fps apart in source time (pts in ms).

    The cadence follows the source (a 30 fps source stays at 30 fps despite the
    millisecond rounding of its timestamps); a gap or a jump backwards (an encoder
    restart) restarts the cadence instead of freezing the picture.
    """

    def __init__(self, fps: float) -> None:
        self.interval = 1000.0 / fps if fps > 0 else 0.0
        self._next: float | None = None

    def accept(self, pts: int) -> bool:
        if not self.interval:
            return True
        tolerance = self.interval / 4
        if self._next is not None and (
                self._next - 10 * self.interval <= pts < self._next - tolerance):
            return False
        if self._next is None or abs(pts - self._next) > self.interval:
            self._next = pts + self.interval
        else:
            self._next += self.interval
        return True


class MonotonicClock:
    """Source timestamps (ms) -> timestamps that only move forward, for RTP.

    A subscriber's jitter buffer drops frames whose RTP time goes back, and waits on
    one that leaps ahead; sources do both (an encoder restarting at 0, a clock that
    jumps). While the source runs normally its timestamps pass as they are (offset);
    after a step back or a leap of more than `MAX_STEP_MS`, the line continues from
    the last output by the wall time that passed (`now`, seconds), at least 1 ms.
    """

    MAX_STEP_MS = 1000

    def __init__(self) -> None:
        self._offset = 0
        self._last_in: int | None = None
        self._last_out = 0
        self._last_now = 0.0

    def __call__(self, pts_ms: int, now: float) -> int:
        if self._last_in is not None:
            step = pts_ms - self._last_in
            if step < 0 or step > self.MAX_STEP_MS:
                elapsed = max(1, round((now - self._last_now) * 1000))
                self._offset = self._last_out + elapsed - pts_ms
        self._last_in, self._last_now = pts_ms, now
        self._last_out = pts_ms + self._offset
        return self._last_out


class LagGate:
    """Lets a decoded picture through only while the pipeline is not behind the source.

    `observe()` sees every coded frame as it arrives; `admit()` asks, for a decoded
    picture, whether its time is within `max_lag_ms` of the newest arrival. When the
    encode/publish side falls behind, pictures are skipped (they are still decoded,
    so the reference chain stays whole) until the pipeline has caught up: latency
    stays bounded instead of growing with the backlog.
    """

    def __init__(self, max_lag_ms: int) -> None:
        self.max_lag_ms = max_lag_ms
        self.newest: int | None = None
        self.skipped = 0

    def observe(self, dts: int) -> None:
        # RTMP dts never goes back within a stream: a jump back is an encoder restart,
        # which restarts the clock instead of holding pictures back
        if self.newest is None or dts > self.newest or dts < self.newest - self.max_lag_ms:
            self.newest = dts

    def admit(self, pts: int) -> bool:
        if self.newest is not None and self.newest - pts > self.max_lag_ms:
            self.skipped += 1
            return False
        return True


@dataclass
class InputStats:
    """What the source sends, for IngressState.video/audio (refreshed periodically).

    Rates are measured in media time (first to last timestamp), not wall time, so a
    publisher's initial burst does not show as a frame rate above the source's.
    """

    mime: str = ""
    width: int = 0
    height: int = 0
    frames: int = 0
    bytes: int = 0
    sample_rate: int = 0
    channels: int = 0
    first_ms: int | None = None
    last_ms: int = 0

    def count(self, timestamp_ms: int, size: int) -> None:
        if self.first_ms is None:
            self.first_ms = timestamp_ms
        self.last_ms = max(self.last_ms, timestamp_ms)
        self.frames += 1
        self.bytes += size

    def _seconds(self) -> float:
        return max((self.last_ms - (self.first_ms or 0)) / 1000, 1e-3)

    def as_video(self) -> dict[str, object]:
        fps = (self.frames - 1) / self._seconds() if self.frames > 1 else 0.0
        return {"mime_type": self.mime, "width": self.width, "height": self.height,
                "framerate": round(fps, 2),
                "average_bitrate": int(self.bytes * 8 / self._seconds())}

    def as_audio(self) -> dict[str, object]:
        return {"mime_type": self.mime, "channels": self.channels,
                "sample_rate": self.sample_rate,
                "average_bitrate": int(self.bytes * 8 / self._seconds())}


MIME = {"h264": "video/h264", "hevc": "video/h265", "av1": "video/av1", "vp8": "video/vp8",
        "vp9": "video/vp9", "aac": "audio/aac", "mp3": "audio/mpeg", "opus": "audio/opus"}


def _open_decoder(kind: type[VideoDecoder] | type[AudioDecoder], config: Any,
                  codec: str | None = None) -> Any:
    """A decoder, or SessionFailed: a stream we cannot decode cannot go on."""
    try:
        return kind(config, codec)
    except DecodeError as exc:
        raise SessionFailed(str(exc)) from exc


class PictureOutput:
    """Decoded pictures -> lag gate -> frame-rate limit -> one encoder per layer -> room.

    The first picture publishes the video track: its size decides the layers
    (`fit_layers`), which are announced to the room and kept for the session (a
    later size change is scaled to them). The layers are encoded one after the
    other, the top layer first, each sent as soon as it is encoded, by one thread
    that lives as long as the output (fed through a `ThreadInbox`: no wake-up of the
    loop per picture; the decoder runs meanwhile): on 2 cores one thread for all
    layers measured the same CPU as a thread per layer (docs/DESIGN.md, "The
    publisher") with a third of the thread hand-offs.
    A picture that comes while one is still waiting to be encoded is skipped
    (counted in the `video_encoder` drops) rather than queued behind it. Layers above
    the bandwidth estimate (`RoomPublisher.layers_allowed`, from the room's
    transport-wide CC feedback) are neither encoded nor sent; one that comes back
    starts at an IDR.
    """

    def __init__(self, session: Session, nursery: trio.Nursery) -> None:
        self.session = session
        self.nursery = nursery
        self.limiter = FrameRateLimiter(session.video_encoding.frame_rate)
        self.layers: tuple[LayerSpec, ...] = ()
        self.input: ThreadInbox[tuple[av.VideoFrame, int]] | None = None
        self.track: PublishedTrack | None = None
        self.clock = MonotonicClock()
        self.sending = 0  # layers sent at the last picture (congestion control)
        self.resumed: set[int] = set()  # layers sent again, owed a keyframe

    async def show(self, picture: av.VideoFrame, pts_ms: int) -> None:
        """A decoded picture, from the trio loop (URL and WHIP inputs)."""
        if not self._admit(picture, pts_ms):
            return
        if self.track is None:
            await self._publish(picture.width, picture.height)
        self._offer(picture, pts_ms)

    def show_from_thread(self, picture: av.VideoFrame, pts_ms: int) -> None:
        """A decoded picture, from a decoder's thread run by trio (the RTMP input):
        only the first picture, which publishes the track, waits for the loop."""
        if not self._admit(picture, pts_ms):
            return
        if self.track is None:
            trio.from_thread.run(self._publish, picture.width, picture.height)
        self._offer(picture, pts_ms)

    def _admit(self, picture: av.VideoFrame, pts_ms: int) -> bool:
        session = self.session
        session.video_in.width, session.video_in.height = picture.width, picture.height
        return session.video_lag.admit(pts_ms) and self.limiter.accept(pts_ms)

    def _offer(self, picture: av.VideoFrame, pts_ms: int) -> None:
        assert self.input is not None
        if not self.input.put((picture, self.clock(pts_ms, time.monotonic()))):
            self.session.dropped_encoder += 1

    async def _publish(self, width: int, height: int) -> None:
        session = self.session
        encoding = session.video_encoding
        self.layers = fit_layers(encoding, width, height)
        codec = "vp8" if encoding.codec == models.VideoCodec.VP8 else "h264"
        encoders = [await trio.to_thread.run_sync(
            _open_encoder, codec, layer.width, layer.height, layer.bitrate,
            encoding.frame_rate) for layer in self.layers]
        self.track = await session.publisher.publish_video(
            [VideoLayer(layer.quality, layer.width, layer.height, layer.bitrate)
             for layer in self.layers],
            codec=codec, name=session.info.video.name, source=session.info.video.source)
        self.sending = len(self.layers)
        self.input = ThreadInbox(1)
        self.nursery.start_soon(self._encode, encoders, self.input)
        await session.report_state("publishing")

    async def _encode(self, encoders: list[LayerEncoder],
                      pictures: ThreadInbox[tuple[av.VideoFrame, int]]) -> None:
        """The encoders' thread, until the output closes (its last picture encoded)."""
        def encode_pictures() -> None:
            while (item := pictures.get()) is not None:
                self._encode_layers(encoders, *item)
                self.session.captured_video += 1

        await consume_in_thread(encode_pictures, pictures, "layer encoders")

    def _encode_layers(self, encoders: list[LayerEncoder], picture: av.VideoFrame,
                       rtp_ms: int) -> None:
        """In a worker thread: every layer, top first, each sent when done (the
        publisher's `send` and `take_keyframe_request` are safe from any thread)."""
        publisher, track = self.session.publisher, self.track
        assert track is not None
        allowed = publisher.layers_allowed(track)
        if allowed != self.sending:
            log.info("sending %d of %d layers (bandwidth estimate %s kbit/s)", allowed,
                     len(encoders), int((publisher.estimate or 0) / 1000))
            self.resumed |= set(range(self.sending, allowed))  # they restart at an IDR
            self.sending = allowed
        source = picture  # each layer is scaled from the one above it
        for index in reversed(range(len(encoders))):
            if index >= allowed:  # above the estimate: not encoded, not sent
                continue
            keyframe = publisher.take_keyframe_request(track, index) or index in self.resumed
            self.resumed.discard(index)
            source = encoders[index].scaled(source)
            try:
                frames = encoders[index].encode(source, rtp_ms * 90, keyframe)
            except EncodeError as exc:
                raise SessionFailed(str(exc)) from exc
            for frame in frames:
                publisher.send(track, index, frame.payloads, frame.timestamp)

    def close(self) -> None:
        if self.input is not None:
            self.input.close()


@asynccontextmanager
async def open_picture_output(session: Session) -> AsyncIterator[PictureOutput]:
    """A PictureOutput whose layer encoders run in a nursery of their own, closed (the
    encoders finish their last picture) when the block ends."""
    async with trio.open_nursery() as encoders:
        output = PictureOutput(session, encoders)
        try:
            yield output
        finally:
            output.close()


def _open_encoder(codec: str, width: int, height: int, bitrate: int,
                  fps: float) -> LayerEncoder:
    try:
        return LayerEncoder(codec, width, height, bitrate, fps)
    except EncodeError as exc:
        raise SessionFailed(str(exc)) from exc


class AudioOutput:
    """Decoded samples -> Opus at the options' bitrate and channels -> the room."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.encoding = session.audio_encoding
        self.encoder: OpusEncoder | None = None
        self.track: PublishedTrack | None = None

    async def play(self, decoded: list[av.AudioFrame]) -> None:
        session, encoding = self.session, self.encoding
        if self.encoder is None:
            self.encoder = OpusEncoder(encoding.channels, encoding.bitrate,
                                       dtx=not encoding.disable_dtx)
        packets: list[tuple[bytes, int]] = []
        for samples in decoded:
            session.audio_in.sample_rate = samples.sample_rate
            session.audio_in.channels = samples.layout.nb_channels
            try:
                # here, not in a thread: 20-40 ms of audio take libopus ~0.1 ms, less
                # than a thread's round trip
                packets += self.encoder.encode(samples)
            except EncodeError as exc:
                raise SessionFailed(str(exc)) from exc
        if self.track is None and packets:
            self.track = await session.publisher.publish_audio(
                name=session.info.audio.name, source=session.info.audio.source,
                stereo=encoding.channels == 2, dtx=not encoding.disable_dtx)
            await session.report_state("publishing")
        for packet, timestamp in packets:
            assert self.track is not None
            session.publisher.send(self.track, 0, (packet,), timestamp, marker=False)


class Session:
    """The stages of one session, connected by bounded channels."""

    def __init__(self, start: Start, out: trio.abc.SendStream) -> None:
        self.start = start
        self.info = pb.IngressInfo.FromString(start.ingress)
        self.video_encoding: VideoEncoding = video_encoding(
            self.info.video if self.info.HasField("video") else None)
        self.audio_encoding: AudioEncoding = audio_encoding(
            self.info.audio if self.info.HasField("audio") else None)
        self.publisher = RoomPublisher()
        self._out = out
        self._send_lock = trio.Lock()
        self.video_in = InputStats()
        self.audio_in = InputStats()
        self.dropped_video = 0
        self.dropped_encoder = 0
        self.dropped_audio = 0
        self.captured_video = 0
        self.video_lag = LagGate(MAX_VIDEO_LAG_MS)
        self.audio_lag = LagGate(MAX_AUDIO_LAG_MS)

    async def report(self, report: Message) -> None:
        async with self._send_lock:
            await self._out.send_all(encode(report))

    async def report_state(self, status: str, error: str = "") -> None:
        await self.report(StateReport(
            status, error=error, room_id=self.publisher.room_sid,
            tracks=tuple(t.to_track_info().SerializeToString() for t in self.publisher.tracks),
            video=self.video_in.as_video() if self.video_in.mime else {},
            audio=self.audio_in.as_audio() if self.audio_in.mime else {},
            drops={"video_queue": self.dropped_video, "video_lag": self.video_lag.skipped,
                   "video_encoder": self.dropped_encoder,
                   "audio_queue": self.dropped_audio, "audio_lag": self.audio_lag.skipped}))

    # -- video ---------------------------------------------------------------------

    async def video_stage(self, frames: ThreadInbox[object]) -> None:
        """Decode the coded frames the RTMP router puts in `frames` in a thread of the
        stage's own (no wake-up of the loop per frame), until the inbox closes."""
        async with open_picture_output(self) as output:
            await consume_in_thread(lambda: self._decode_video(frames, output), frames,
                                    "video decoder")

    def _decode_video(self, frames: ThreadInbox[object], output: PictureOutput) -> None:
        decoder: VideoDecoder | None = None
        blind = 0
        last_error: DecodeError | None = None
        while (event := frames.get()) is not None:
            if isinstance(event, rtmp.VideoConfig):
                decoder = _open_decoder(VideoDecoder, event)
                self.video_in.mime = MIME.get(event.codec, event.codec)
                continue
            assert isinstance(event, rtmp.VideoFrame)
            if decoder is None:
                decoder = _open_decoder(VideoDecoder, None, event.codec)
                self.video_in.mime = MIME.get(event.codec, event.codec)
            try:
                pictures = decoder.decode(event)
            except DecodeError as exc:
                pictures, last_error = [], exc
            # FFmpeg conceals much broken input instead of failing: a stream that gives
            # no picture for seconds is broken whether or not the decoder said so.
            blind = 0 if pictures else blind + 1
            if blind >= MAX_FRAMES_WITHOUT_PICTURE:
                raise SessionFailed(str(last_error) if last_error else
                                    f"{decoder.codec} decoding failed: no picture from "
                                    f"{blind} frames")
            for picture in pictures:
                output.show_from_thread(picture, int(picture.pts or 0))

    # -- audio ---------------------------------------------------------------------

    async def audio_stage(self, frames: trio.MemoryReceiveChannel) -> None:
        decoder: AudioDecoder | None = None
        output = AudioOutput(self)
        errors = 0
        async for event in frames:
            if isinstance(event, rtmp.AudioConfig):
                decoder = _open_decoder(AudioDecoder, event)
                self.audio_in.mime = MIME.get(event.codec, event.codec)
                self.audio_in.sample_rate, self.audio_in.channels = (event.sample_rate,
                                                                     event.channels)
                continue
            if decoder is None:
                decoder = _open_decoder(AudioDecoder, None, event.codec)
                self.audio_in.mime = MIME.get(event.codec, event.codec)
            if not self.audio_lag.admit(event.dts):
                continue  # stale: the room hears the live edge, in step with the video
            try:
                # here, not in a thread: an AAC frame decodes in ~20 us (17 measured
                # for 1024 stereo samples), a tenth of a thread's round trip
                decoded = decoder.decode(event)
                errors = 0
            except DecodeError as exc:
                errors += 1
                if errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise SessionFailed(str(exc)) from exc
                continue
            await output.play(decoded)

    async def report_stats(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            await self.report_state("stats")
