"""The asyncio-only libraries (aiortc, the livekit SDK) on a native asyncio loop.

A session worker runs trio on its main thread and, for the libraries that need
asyncio, one asyncio event loop on a thread of its own (`open_asyncio_thread`).
Trio code reaches it only through `call()` (run a coroutine function there, await
its result) and `call_soon()`; asyncio callbacks hand results back with
`to_trio()`. Nothing else crosses the two threads.

Why a thread and not trio-asyncio (which the worker used until 2026-11-24): under
trio-asyncio every asyncio callback and every socket wakeup passes through trio's
scheduler. Measured on this machine (docs/PERFORMANCE.md, "WHIP"): a UDP
datagram costs asyncio's receive path 22-39 us natively and 106-129 us under
trio-asyncio, and a WHIP session's worker handles ~200 RTP packets a second plus
RTCP, ICE and the SDK's callbacks. The media packets stay on the asyncio thread;
only whole frames (~80 a second) and control cross to trio.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

T = TypeVar("T")

SHUTDOWN_SECONDS = 2.0  # how long the loop's leftover tasks get to finish when it closes


class AsyncioThread:
    """An asyncio loop running on its own thread, and the trio run that owns it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self.loop = loop
        self.token = token

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)` on the asyncio loop. A trio cancellation cancels it there."""
        async def invoke() -> T:
            return await fn(*args)  # the coroutine is made on the loop's thread

        future = asyncio.run_coroutine_threadsafe(invoke(), self.loop)
        done = trio.Event()
        future.add_done_callback(lambda _: self.token.run_sync_soon(done.set))
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the asyncio loop soon; from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def to_trio(self, fn: Callable[..., Any], *args: Any) -> None:
        """From the asyncio thread: run the synchronous `fn(*args)` in trio soon.

        Trio objects (channels, events) are not thread-safe: asyncio callbacks touch
        them only through here."""
        self.token.run_sync_soon(fn, *args)


_current: contextvars.ContextVar[AsyncioThread] = contextvars.ContextVar("asyncio_thread")


def current() -> AsyncioThread:
    """The asyncio thread of the enclosing `open_asyncio_thread()`."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("not inside open_asyncio_thread()") from None


async def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`await fn(*args)` on the current asyncio thread (see `AsyncioThread.call`)."""
    return await current().call(fn, *args)


async def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
    await loop.shutdown_asyncgens()


@asynccontextmanager
async def open_asyncio_thread() -> AsyncIterator[AsyncioThread]:
    """Start an asyncio loop on a new thread for the body; stop and join it after."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asyncio", daemon=True)
    thread.start()
    edge = AsyncioThread(loop, trio.lowlevel.current_trio_token())
    reset = _current.set(edge)
    try:
        yield edge
    finally:
        _current.reset(reset)
        with trio.CancelScope(shield=True):
            try:
                await edge.call(_shutdown, loop)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                await trio.to_thread.run_sync(thread.join)
                loop.close()
