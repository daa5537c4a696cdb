"""RTMP input of a worker: the front's demuxed media events into the session's stages.

The service's RTMP front (relay/service/ingest/rtmp_front.py) forwards rtmp's
VideoConfig/VideoFrame/AudioConfig/AudioFrame over stdin (relay/wire.py). Here they
are counted, gated for lag and queued to the decode stages (or, with transcoding
off, to the passthrough stage) through bounded queues: when the video stage is
behind, video is dropped up to the next keyframe, never audio. The video decoder
runs in a thread of its own, fed through a `ThreadInbox`; audio and passthrough
are trio tasks, fed through memory channels.
"""

from __future__ import annotations

from typing import Protocol

import trio

import rtmp
from relay.wire import EndOfStream, MessageReader

from .front import receive_from_front
from .handoff import ThreadInbox
from .passthrough import rtmp_passthrough_stage
from .session import AUDIO_QUEUE, NO_MEDIA_TIMEOUT, VIDEO_QUEUE, Session, SessionFailed


class VideoQueue(Protocol):
    """Where the router puts video: a trio channel or a decoder thread's inbox."""

    def put(self, message: object) -> bool: ...

    def close(self) -> None: ...


class ChannelQueue:
    """A trio memory channel as a `VideoQueue` (the passthrough stage)."""

    def __init__(self, channel: trio.MemorySendChannel) -> None:
        self.channel = channel

    def put(self, message: object) -> bool:
        try:
            self.channel.send_nowait(message)
        except trio.WouldBlock:
            return False
        return True

    def close(self) -> None:
        self.channel.close()


class _Router:
    """Counts, lag-gates and queues each media event to its stage, without waiting."""

    def __init__(self, session: Session, video: VideoQueue,
                 audio: trio.MemorySendChannel) -> None:
        self.session, self.video, self.audio = session, video, audio
        self.skip_video = False

    def route(self, message: object) -> None:
        session = self.session
        if isinstance(message, rtmp.VideoConfig | rtmp.VideoFrame):
            if isinstance(message, rtmp.VideoFrame):
                session.video_in.count(message.dts, len(message.data))
                session.video_lag.observe(message.dts)
                if self.skip_video and not message.keyframe:
                    session.dropped_video += 1
                    return
            if self.video.put(message):
                self.skip_video = False
            else:
                # Behind: drop video (never audio), up to the next keyframe so the
                # decoder resumes on a clean picture.
                self.skip_video = True
                session.dropped_video += 1
        elif isinstance(message, rtmp.AudioConfig | rtmp.AudioFrame):
            if isinstance(message, rtmp.AudioFrame):
                session.audio_in.count(message.dts, len(message.data))
                session.audio_lag.observe(message.dts)
            try:
                self.audio.send_nowait(message)
            except trio.WouldBlock:
                # the audio stage is seconds behind: a stalled audio stage must not
                # hold up video too
                session.dropped_audio += 1


async def route(session: Session, reader: MessageReader, stdin: trio.abc.ReceiveStream,
                video: VideoQueue, audio: trio.MemorySendChannel) -> EndOfStream:
    """Feed the stages until the session ends (then close their queues); returns how
    it ended."""
    router = _Router(session, video, audio)
    try:
        # one scope for the session, its deadline pushed on by each read (cheaper than
        # a scope per read, at ~80 reads a second)
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + NO_MEDIA_TIMEOUT
                for message in await receive_from_front(reader, stdin):
                    if isinstance(message, EndOfStream):
                        return message
                    router.route(message)
        raise SessionFailed(f"no media received for {NO_MEDIA_TIMEOUT:.0f} s")
    finally:
        video.close()
        audio.close()


async def run_rtmp(session: Session, stages: trio.Nursery, reader: MessageReader,
                   stdin: trio.abc.ReceiveStream) -> EndOfStream:
    """RTMP: the decode (or passthrough) stages, fed with the front's media events."""
    video: VideoQueue
    if session.start.transcode:
        video = inbox = ThreadInbox[object](VIDEO_QUEUE)
        stages.start_soon(session.video_stage, inbox)
    else:
        video_send, video_recv = trio.open_memory_channel[object](VIDEO_QUEUE)
        video = ChannelQueue(video_send)
        stages.start_soon(rtmp_passthrough_stage, session, video_recv)
    audio_send, audio_recv = trio.open_memory_channel[object](AUDIO_QUEUE)
    stages.start_soon(session.audio_stage, audio_recv)
    return await route(session, reader, stdin, video, audio_send)

