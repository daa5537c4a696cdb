"""RTMP input of a worker: the front's demuxed media events into the session's stages.

The service's RTMP front (relay/service/ingest/rtmp_front.py) forwards rtmp's
VideoConfig/VideoFrame/AudioConfig/AudioFrame over stdin (relay/wire.py). Here they
are counted, gated for lag and queued to the decode stages (or, with transcoding
off, to the passthrough stage) through bounded channels: when the video stage is
behind, video is dropped up to the next keyframe, never audio.
"""

from __future__ import annotations

import trio

import rtmp
from relay.wire import EndOfStream, MessageReader

from .passthrough import rtmp_passthrough_stage
from .session import AUDIO_QUEUE, NO_MEDIA_TIMEOUT, VIDEO_QUEUE, Session, SessionFailed


async def route(session: Session, reader: MessageReader, stdin: trio.abc.ReceiveStream,
                video: trio.MemorySendChannel, audio: trio.MemorySendChannel) -> EndOfStream:
    """Feed the stages until the session ends; returns how it ended."""
    skip_video = False
    async with video, audio:
        while True:
            with trio.move_on_after(NO_MEDIA_TIMEOUT) as timeout:
                data = await stdin.receive_some(1 << 16)
            if timeout.cancelled_caught:
                raise SessionFailed(f"no media received for {NO_MEDIA_TIMEOUT:.0f} s")
            if not data:
                return EndOfStream("the service closed the session", drain=False)
            reader.receive_data(data)
            for message in reader:
                if isinstance(message, EndOfStream):
                    return message
                if isinstance(message, rtmp.VideoConfig | rtmp.VideoFrame):
                    if isinstance(message, rtmp.VideoFrame):
                        session.video_in.count(message.dts, len(message.data))
                        session.video_lag.observe(message.dts)
                        if skip_video and not message.keyframe:
                            session.dropped_video += 1
                            continue
                    try:
                        video.send_nowait(message)
                        skip_video = False
                    except trio.WouldBlock:
                        # Behind: drop video (never audio), up to the next keyframe
                        # so the decoder resumes on a clean picture.
                        skip_video = True
                        session.dropped_video += 1
                elif isinstance(message, rtmp.AudioConfig | rtmp.AudioFrame):
                    if isinstance(message, rtmp.AudioFrame):
                        session.audio_in.count(message.dts, len(message.data))
                        session.audio_lag.observe(message.dts)
                    try:
                        audio.send_nowait(message)
                    except trio.WouldBlock:
                        # the audio stage is seconds behind: a stalled audio stage
                        # must not hold up video too
                        session.dropped_audio += 1

async def run_rtmp(session: Session, stages: trio.Nursery, reader: MessageReader,
                   stdin: trio.abc.ReceiveStream) -> EndOfStream:
    """RTMP: the decode (or passthrough) stages, fed with the front's media events."""
    video_send, video_recv = trio.open_memory_channel[object](VIDEO_QUEUE)
    audio_send, audio_recv = trio.open_memory_channel[object](AUDIO_QUEUE)
    if session.start.transcode:
        stages.start_soon(session.video_stage, video_recv)
    else:
        stages.start_soon(rtmp_passthrough_stage, session, video_recv)
    stages.start_soon(session.audio_stage, audio_recv)
    return await route(session, reader, stdin, video_send, audio_send)

