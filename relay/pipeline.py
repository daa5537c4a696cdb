"""The media pipeline as the ingest fronts see it: a MediaSink backed by a worker.

For each accepted publish, `WorkerSinkFactory` starts a session worker process
(relay/worker.py) that decodes, shapes and publishes into the ingress' room, feeds
it the demuxed media events, and turns the worker's reports into IngressState
updates (PUBLISHING with room id, tracks and input state). A worker failure ends
the session with `MediaFailure`, whose text becomes the ingress' error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from livekit.protocol import ingress as pb
from livekit.protocol import models

import rtmp
from api.store import IngressStore
from api.validation import transcoding_enabled

from .sink import MediaFailure, PublishContext
from .tokens import participant_token
from .trio_util import unwrap_single_exception
from .wire import Start, StateReport
from .worker_client import SessionWorker, open_session_worker

log = logging.getLogger(__name__)

FORWARDED = (rtmp.VideoConfig, rtmp.VideoFrame, rtmp.AudioConfig, rtmp.AudioFrame)


class WorkerSink:
    """MediaSink: forwards media events to the session's worker process."""

    def __init__(self, worker: SessionWorker) -> None:
        self.worker = worker

    async def send(self, event: Any) -> None:
        if not isinstance(event, FORWARDED):
            return  # onMetaData and friends: the worker learns sizes from the decoder
        if self.worker.exited.is_set() or not await self.worker.send(event):
            await self.worker.exited.wait()
            raise MediaFailure(self.worker.failure or "the session worker ended")


def publishing_state(report: StateReport, resource_id: str, started_at: int,
                     now_ns: int) -> pb.IngressState:
    state = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING,
                            resource_id=resource_id, started_at=started_at,
                            updated_at=now_ns, room_id=report.room_id)
    state.tracks.extend(models.TrackInfo.FromString(t) for t in report.tracks)
    if report.video:
        state.video.CopyFrom(pb.InputVideoState(**report.video))
    if report.audio:
        state.audio.CopyFrom(pb.InputAudioState(**report.audio))
    return state


class WorkerSinkFactory:
    """The SinkFactory the ingest fronts are given when a LiveKit server is configured."""

    def __init__(self, store: IngressStore, ws_url: str, api_key: str, api_secret: str,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.ws_url = ws_url
        self.api_key = api_key
        self.api_secret = api_secret
        self.clock_ns = clock_ns

    def __call__(self, ctx: PublishContext) -> Any:
        return self._sink(ctx)

    @asynccontextmanager
    async def _sink(self, ctx: PublishContext) -> AsyncIterator[WorkerSink]:
        info = ctx.info
        start = Start(self.ws_url, participant_token(self.api_key, self.api_secret, info,
                                                     ctx.resource_id),
                      info.SerializeToString(), transcode=transcoding_enabled(info))
        with unwrap_single_exception():
            async with open_session_worker(start) as worker, trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_reports, worker, ctx)
                sink = WorkerSink(worker)
                try:
                    yield sink
                except BaseException:
                    worker.drain = False  # cancelled or failed: leave the room at once
                    raise
                finally:
                    nursery.cancel_scope.cancel()
        if worker.failure:
            raise MediaFailure(worker.failure)

    async def _apply_reports(self, worker: SessionWorker, ctx: PublishContext) -> None:
        await apply_reports(self.store, worker, ctx.info.ingress_id, ctx.resource_id,
                            ctx.started_at, self.clock_ns)


async def apply_reports(store: IngressStore, worker: SessionWorker, ingress_id: str,
                        resource_id: str, started_at: int, clock_ns: Callable[[], int]
                        ) -> None:
    """The worker's reports as IngressState (PUBLISHING, with input stats) until it exits."""
    async for report in worker.reports:
        if report.status not in ("publishing", "stats"):
            continue
        state = publishing_state(report, resource_id, started_at, clock_ns())
        if not await store.update_state(ingress_id, state):
            log.info("state of %s not written: a newer session owns it", ingress_id)
