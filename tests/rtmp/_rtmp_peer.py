"""Test-only: a tiny trio RTMP listener driving ServerSession against a real publisher.

It accepts every publish, records every byte the client sent (the capture) and every
event. Used by the slow real-peer tests and by ``make_captures.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

import rtmp

HERE = Path(__file__).resolve().parent
CAPTURES = HERE / "captures"
PYAV_PUBLISHER = HERE / "_pyav_publisher.py"


def det_random(seed: bytes = b"rtmp-tests") -> Callable[[int], bytes]:
    """Deterministic randbytes for handshakes (SHA-256 counter stream)."""
    counter = 0

    def randbytes(n: int) -> bytes:
        nonlocal counter
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return bytes(out[:n])

    return randbytes


@dataclass
class PeerRun:
    """What one publisher run produced."""

    raw: bytes
    events: list[rtmp.Event] = field(default_factory=list)
    returncode: int | None = None
    stderr: str = ""
    error: str | None = None


def ffmpeg_cmd(url: str, seconds: float = 3.0, size: str = "320x240") -> list[str]:
    """Debian ffmpeg 5.1 publishing H.264 + AAC as fast as it can (no -re)."""
    return [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "30",
        "-bf",
        "0",
        "-preset",
        "ultrafast",
        "-b:v",
        "150k",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "flv",
        url,
    ]


def pyav_cmd(url: str, vcodec: str, acodec: str, seconds: float = 1.0) -> list[str]:
    """PyAV's bundled FFmpeg 8 publishing Enhanced RTMP, in a subprocess."""
    return [sys.executable, str(PYAV_PUBLISHER), url, vcodec, acodec, str(seconds)]


async def run_publisher(
    make_cmd: Callable[[str], list[str]],
    *,
    key: str = "KEY",
    app: str = "live",
    timeout: float = 120.0,
) -> PeerRun:
    """Listen on 127.0.0.1, start the publisher, serve one connection, return the capture."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    url = f"rtmp://127.0.0.1:{port}/{app}/{key}"
    session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=det_random()))
    run = PeerRun(raw=b"")
    raw = bytearray()
    with tempfile.TemporaryFile() as errf, trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                    make_cmd(url),
                    check=False,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errf,
                    task_status=task_status,
                )
            )
            stream = await listener.accept()
            async with stream:
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        break
                    if not data:
                        break
                    raw += data
                    try:
                        session.receive_data(data)
                        while isinstance(ev := session.next_event(), rtmp.Event):
                            run.events.append(ev)
                            if isinstance(ev, rtmp.PublishRequested):
                                session.accept_publish()
                    except rtmp.RTMPProtocolError as exc:
                        run.error = str(exc)
                        break
                    out = session.data_to_send()
                    if out:
                        try:
                            await stream.send_all(out)
                        except trio.BrokenResourceError:
                            break
            await proc.wait()
            run.returncode = proc.returncode
        errf.seek(0)
        run.stderr = errf.read().decode(errors="replace")
    await listener.aclose()
    run.raw = bytes(raw)
    return run


def replay(raw: bytes, chunks: list[int] | None = None) -> list[rtmp.Event]:
    """Feed a capture to a fresh session (accepting publishes) and return the events.

    ``chunks`` gives the sizes of successive receive_data calls (rest fed at the end).
    """
    session = rtmp.ServerSession(rtmp.SessionConfig(randbytes=det_random()))
    events: list[rtmp.Event] = []

    def pump() -> None:
        while isinstance(ev := session.next_event(), rtmp.Event):
            events.append(ev)
            if isinstance(ev, rtmp.PublishRequested):
                session.accept_publish()

    pos = 0
    for size in chunks or []:
        session.receive_data(raw[pos : pos + size])
        pos += size
        pump()
    session.receive_data(raw[pos:])
    pump()
    return events
