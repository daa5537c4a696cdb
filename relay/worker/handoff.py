"""A bounded hand-off from the trio loop (or any thread) to one long-lived thread.

Why not `trio.to_thread.run_sync` per item: each call wakes a cached thread and then
wakes the trio loop again with the result, and on this kind of machine (a KVM guest)
every wake-up from idle costs 100-300 us of CPU before any work is done (measured:
a trio task sleeping and waking 60 times a second spends 0.3 ms per wake, a thread
hop 0.3 ms more). A media stage that only needs to *give* work to its thread (the
layer encoders: they send what they encode themselves) saves the way back by
running one thread for the stage's lifetime and feeding it through this inbox.

Producers never wait: `put` says whether the item was taken (a full inbox is the
caller's drop, counted as such). The consumer thread blocks in `get`, which
returns `None` once the inbox is closed and empty. `consume_in_thread` runs the
consumer as a trio task's thread, ended by closing the inbox when cancelled.
(`queue.Queue` has the bound but no closing until Python 3.13's `shutdown`; the
worker runs on 3.11.)
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


class ThreadInbox(Generic[T]):
    """A FIFO of at most `size` items, for one consumer thread."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an inbox holds at least one item")
        self.size = size
        self._items: collections.deque[T] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, item: T) -> bool:
        """Queue `item`; False (nothing queued) if the inbox is full or closed."""
        with self._ready:
            if self._closed or len(self._items) >= self.size:
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def get(self) -> T | None:
        """The next item, waiting for one; None once closed and drained."""
        with self._ready:
            while not self._items:
                if self._closed:
                    return None
                self._ready.wait()
            return self._items.popleft()

    def close(self, drop_queued: bool = False) -> None:
        """No more items: the consumer drains what is queued (or, with `drop_queued`,
        nothing more), then gets None."""
        with self._ready:
            self._closed = True
            if drop_queued:
                self._items.clear()
            self._ready.notify_all()

    def __len__(self) -> int:
        return len(self._items)


async def consume_in_thread(consume: Callable[[], R], inbox: ThreadInbox[Any],
                            name: str) -> R:
    """`consume()` (which reads `inbox` until it gets None) in a thread of its own.

    Cancelling the caller closes the inbox and drops what is queued, so the thread
    ends after the item it is working on; the caller waits for it either way (a
    thread is never left running behind its stage).
    """
    async def close_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            inbox.close(drop_queued=True)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_when_cancelled)
            try:
                return await trio.to_thread.run_sync(consume, thread_name=name)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the thread's own error, as it raised it
            raise group.exceptions[0] from None
        raise
