"""Publishing into the LiveKit room: our own WebRTC publisher (worker process).

LiveKit's client signalling (relay/lksignal) over a WebSocket, aiortc for ICE,
DTLS and SRTP, and our own RTP streams: one per simulcast layer (rid), each
announced to the server with its quality, size and bitrate, so the SFU forwards
the layer each subscriber selects. The frames are already encoded (by our layer
encoders, or by the publisher for passthrough); nothing here encodes.

The trio side is :class:`RoomPublisher`; the asyncio side (aiortc) stays behind
the worker's asyncio thread (relay/worker/aio_thread.py).
"""

from ._publisher import PublishedTrack, PublishError, RoomPublisher, VideoLayer

__all__ = ["PublishError", "PublishedTrack", "RoomPublisher", "VideoLayer"]
