"""The link between the service process and one API replica: calls over a socketpair.

A replica (relay/api_replica.py) answers ListIngress itself and asks the service
process for everything else. Frames are msgpack arrays, like the session workers'
pipes (relay/wire.py):

- service -> replica, once, first: the settings map the replica starts from;
- replica -> service: `[call_id, op, args]`; `call_id` 0 is a notice (no answer);
- service -> replica: `[call_id, ok, value]`; when not ok, `value` is
  `[twirp_code, message]`.

The sans-IO part is relay/wire.py's `FrameReader`: bytes in, frames out, bounded
(a `WireError` past the bound or on bytes that are not msgpack). `LinkClient`
(replica side) and `serve_link` (service side) put it on a trio stream. The
service side answers each call in a task of its own, so a slow WHIP offer does not
hold up a CreateIngress behind it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import outcome
import trio

from api.errors import TwirpError

from .wire import FrameReader, WireError

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 8 << 20  # a CreateIngress body is at most 1 MiB, a WHIP offer 64 KiB

Handler = Callable[[str, list[Any]], Awaitable[Any]]


class LinkClosed(Exception):
    """The other process closed the link (it exited)."""


def pack(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


async def _frames(stream: trio.abc.ReceiveStream) -> Any:
    reader = FrameReader(MAX_FRAME_BYTES)
    while data := await stream.receive_some(65536):
        reader.receive_data(data)
        for frame in reader.frames():
            yield frame


class LinkClient:
    """The replica's end: `run()` reads answers, `call()` asks and waits for one."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[outcome.Outcome]]] = {}
        self._closed = False

    async def run(self, *, task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Report the settings frame through `task_status`, then deliver answers until
        the service process closes the link (returns) or breaks it (WireError)."""
        started = False
        try:
            async for frame in _frames(self._stream):
                if not started:
                    if not isinstance(frame, dict):
                        raise WireError("the first frame is not the settings map")
                    task_status.started(frame)
                    started = True
                    continue
                call_id, ok, value = _answer_fields(frame)
                waiter = self._waiting.pop(call_id, None)
                if waiter is not None:
                    waiter[1].append(outcome.Value(value) if ok else
                                     outcome.Error(_twirp_error(value)))
                    waiter[0].set()
            if not started:
                raise LinkClosed("the service process closed the link before its settings")
        finally:
            self._closed = True
            for event, result in self._waiting.values():
                result.append(outcome.Error(_unreachable()))
                event.set()
            self._waiting.clear()

    async def call(self, op: str, *args: Any) -> Any:
        """Ask the service process; its answer, or the TwirpError it refused with."""
        if self._closed:
            raise _unreachable()
        call_id = next(self._ids)
        event, result = self._waiting[call_id] = (trio.Event(), [])
        try:
            await self._send(pack(call_id, op, list(args)))
            await event.wait()
        finally:
            self._waiting.pop(call_id, None)
        return result[0].unwrap()

    async def notify(self, op: str, *args: Any) -> None:
        """Tell the service process something; no answer comes."""
        if not self._closed:
            await self._send(pack(0, op, list(args)))

    async def _send(self, frame: bytes) -> None:
        try:
            async with self._send_lock:
                await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _unreachable() from None


async def serve_link(stream: trio.abc.Stream, settings: dict[str, Any], handle: Handler
                     ) -> None:
    """The service's end: send `settings`, then answer calls until the replica closes
    the link. A refused call answers with its TwirpError; any other exception is
    logged and answers `internal`."""
    send_lock = trio.Lock()

    async def answer(call_id: int, op: str, args: list[Any]) -> None:
        try:
            value, ok = await handle(op, args), True
        except TwirpError as err:
            value, ok = [err.code, err.msg], False
        except Exception:
            log.exception("api replica call %r failed", op)
            value, ok = ["internal", "internal error"], False
        if call_id:
            async with send_lock:
                await stream.send_all(pack(call_id, ok, value))

    await stream.send_all(msgpack.packb(settings, use_bin_type=True))
    async with trio.open_nursery() as nursery:
        async for frame in _frames(stream):
            if not (isinstance(frame, list) and len(frame) == 3 and isinstance(frame[0], int)
                    and isinstance(frame[1], str) and isinstance(frame[2], list)):
                raise WireError(f"not a call frame: {frame!r:.80}")
            nursery.start_soon(answer, *frame)


def _answer_fields(frame: Any) -> tuple[int, bool, Any]:
    if not (isinstance(frame, list) and len(frame) == 3 and isinstance(frame[0], int)):
        raise WireError(f"not an answer frame: {frame!r:.80}")
    return frame[0], bool(frame[1]), frame[2]


def _twirp_error(value: Any) -> TwirpError:
    try:
        code, msg = value
        return TwirpError(code, msg)
    except (TypeError, ValueError):
        return TwirpError("internal", "internal error")


def _unreachable() -> TwirpError:
    return TwirpError("unavailable", "the service process is not reachable")
