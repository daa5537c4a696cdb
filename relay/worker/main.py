"""The session worker process: read `Start`, run the session's input, exit.

Runs in a process of its own, one per live session, forked by the worker
template (template.py) or started as `python -m relay.worker`: FFmpeg's decoders
are C and may crash or hang on hostile input, and one Python process runs on one
core. A crash here ends this session only; the service sees the exit and records
ERROR.

Protocol (relay/wire.py, msgpack on stdin/stdout): the front sends `Start`, then
media events (RTMP), then `EndOfStream` (or just closes stdin); the worker sends
`StateReport`s. One input per worker: RTMP events from the front
(rtmp_input.py), a URL it pulls itself (url_input.py), or a WHIP offer it answers
and receives over its own peer connection (whip_input.py). Exit status 0: clean
end; 1: an error it reported; anything else (a signal, a crash) is the front's to
report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import trio

from api.redaction import scrub
from relay.wire import MessageReader, Start, StateReport, WireError

from . import aio_thread
from .decode import DecodeError
from .limits import apply_limits
from .room import PublishError
from .rtmp_input import run_rtmp
from .session import DRAIN_SECONDS, Session, SessionFailed
from .url_input import UrlPull
from .whip_input import run_whip

log = logging.getLogger("relay.worker")

SERVICE_PID = "INGRESS_SERVICE_PID"  # set by the service: it may be gone before we look


async def run(stdin: trio.abc.ReceiveStream, stdout: trio.abc.SendStream) -> int:
    reader = MessageReader()
    start: Start | None = None
    while start is None:
        data = await stdin.receive_some(1 << 16)
        if not data:
            return 0
        reader.receive_data(data)
        for message in reader:
            if not isinstance(message, Start):
                raise WireError(f"expected Start, got {type(message).__name__}")
            start = message
            break
    if start.offer:
        return await run_whip(start, reader, stdin, stdout)
    session = Session(start, stdout)
    # the worker pulls the URL itself
    pull = (UrlPull(session, start.url, allow_private=start.allow_private_addresses)
            if start.url else None)
    failed = False
    # a pull serves its egress gate for the whole session (relay/worker/egress_gate.py)
    async with aio_thread.open_asyncio_thread(), pull or contextlib.nullcontext():
        try:
            async with trio.open_nursery() as room:  # cancelled: the participant leaves
                async with trio.open_nursery() as joining:  # open a URL while joining
                    if pull is not None:
                        joining.start_soon(pull.open)
                    await room.start(session.publisher.run, start.ws_url, start.token)
                async with trio.open_nursery() as outer:
                    outer.start_soon(session.report_stats)
                    async with trio.open_nursery() as stages:
                        if pull is not None:
                            end = await pull.run(reader, stdin)
                        else:
                            end = await run_rtmp(session, stages, reader, stdin)
                        log.info("session ended: %s (video frames: %d in, %d sent, "
                                 "dropped %d queued, %d late, %d by the encoders; audio "
                                 "frames: %d in, %d late)", end.reason or "source ended",
                                 session.video_in.frames, session.captured_video,
                                 session.dropped_video, session.video_lag.skipped,
                                 session.dropped_encoder, session.audio_in.frames,
                                 session.audio_lag.skipped)
                        # a clean end publishes what is queued (for at most a second)
                        stages.cancel_scope.deadline = trio.current_time() + (
                            DRAIN_SECONDS if end.drain else 0)
                    outer.cancel_scope.cancel()
                room.cancel_scope.cancel()
        except* (SessionFailed, PublishError, DecodeError, WireError) as group:
            failed = True
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            # no key material of the ingress in the log or the state (api/redaction.py)
            message = scrub(str(first), start.url, session.info.stream_key)
            log.error("session failed: %s", message)
            with trio.CancelScope(shield=True):
                await session.report(StateReport("error", error=message))
    return 1 if failed else 0


def main() -> int:
    apply_limits(os.environ)  # before any input is read
    logging.basicConfig(level=os.environ.get("INGRESS_WORKER_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s worker[%(process)d] %(name)s: "
                               "%(message)s", stream=sys.stderr)
    # aioice narrates every candidate pair at INFO: ten lines per session for nothing
    # an operator acts on (its warnings still show)
    logging.getLogger("aioice").setLevel(logging.WARNING)

    async def entry() -> int:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        stdout = trio.lowlevel.FdStream(os.dup(1))
        async with stdin, stdout, trio.open_nursery() as nursery:
            service = int(os.environ.get(SERVICE_PID, "0")) or os.getppid()
            nursery.start_soon(exit_with_the_service, service)
            code = await run(stdin, stdout)
            nursery.cancel_scope.cancel()
            return code

    return trio.run(entry)


async def exit_with_the_service(service_pid: int) -> None:
    """Leave at once when the service process is gone (killed, crashed), whatever the
    session is doing: its stdin EOF is only read between media, not while joining the
    room. The service is watched through a pidfd, not as our parent: a worker forked
    by the template (template.py) is the template's child. (PR_SET_PDEATHSIG would
    follow the parent too.)"""
    try:
        pidfd = os.pidfd_open(service_pid)
    except ProcessLookupError:
        pidfd = None
    try:
        if pidfd is not None:
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    log.warning("the service process %d is gone: leaving", service_pid)
    os._exit(3)
