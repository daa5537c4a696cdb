"""The media boundary: what an ingest front (RTMP, WHIP, URL) hands its media to.

A `SinkFactory` is called once per accepted publish with its `PublishContext` and
returns an async context manager yielding a `MediaSink`; the front awaits
`sink.send(event)` for every media event in arrival order (rtmp's media events:
VideoConfig, VideoFrame, AudioConfig, AudioFrame, and onMetaData). A sink that
blocks pushes back on the publisher. A sink whose pipeline fails raises
`MediaFailure`; its text becomes the ingress' error.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from livekit.protocol import ingress as pb

import rtmp

SinkEvent = rtmp.MediaEvent | rtmp.Metadata


class MediaFailure(Exception):
    """The media pipeline of a session failed; the message is the ingress' error text."""


@dataclass(frozen=True)
class PublishContext:
    """What a sink learns about the publish it serves."""

    info: pb.IngressInfo
    resource_id: str
    started_at: int
    peer: str
    tls: bool
    publish_name: str
    app: str


class MediaSink(Protocol):
    """Consumes the media events of one accepted publish, in arrival order."""

    async def send(self, event: SinkEvent) -> None:
        """Take one event; may block to push back on the publisher (see module docs)."""


SinkFactory = Callable[[PublishContext], AbstractAsyncContextManager[MediaSink]]
