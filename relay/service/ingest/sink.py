"""The media boundary of a push front: demuxed media events into the session worker.

The RTMP front awaits ``sink.send(event)`` for every media event (rtmp's
VideoConfig, VideoFrame, AudioConfig, AudioFrame, and onMetaData) in arrival
order. A sink that blocks (the worker's stdin pipe is full) stops the front from
reading, which pushes back on the publisher over TCP. A sink whose worker has gone
raises SessionFailure with the worker's reason, which becomes the ingress' error.
"""

from __future__ import annotations

import rtmp

from .lifetime import SessionFailure
from .worker_client import SessionWorker

SinkEvent = rtmp.MediaEvent | rtmp.Metadata
FORWARDED = (rtmp.VideoConfig, rtmp.VideoFrame, rtmp.AudioConfig, rtmp.AudioFrame)


class WorkerSink:
    """Forwards the events a worker decodes to the session's worker process."""

    def __init__(self, worker: SessionWorker) -> None:
        self.worker = worker

    async def send(self, event: SinkEvent) -> None:
        if not isinstance(event, FORWARDED):
            return  # onMetaData and friends: the worker learns sizes from the decoder
        if self.worker.exited.is_set() or not await self.worker.send(event):
            await self.worker.exited.wait()
            raise SessionFailure(self.worker.failure or "the session worker ended")
