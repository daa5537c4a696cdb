"""relay/worker/handoff.py: the inbox that feeds a stage's long-lived thread."""

from __future__ import annotations

import threading

import pytest
import trio

from relay.worker.handoff import ThreadInbox, consume_in_thread


def test_inbox_is_fifo_and_bounded_without_waiting() -> None:
    inbox = ThreadInbox[int](2)
    assert inbox.put(1) and inbox.put(2)
    assert not inbox.put(3)  # full: the caller's drop
    assert len(inbox) == 2
    assert inbox.get() == 1 and inbox.put(3)
    assert [inbox.get(), inbox.get()] == [2, 3]


def test_close_lets_the_consumer_drain_then_end() -> None:
    inbox = ThreadInbox[str](4)
    inbox.put("a")
    inbox.put("b")
    inbox.close()
    assert not inbox.put("c")
    assert [inbox.get(), inbox.get(), inbox.get(), inbox.get()] == ["a", "b", None, None]


def test_close_dropping_what_is_queued() -> None:
    inbox = ThreadInbox[str](4)
    inbox.put("a")
    inbox.close(drop_queued=True)
    assert inbox.get() is None


def test_a_waiting_consumer_wakes_for_an_item_and_for_close() -> None:
    inbox = ThreadInbox[int](1)
    got: list[int | None] = []
    consumer = threading.Thread(target=lambda: got.extend([inbox.get(), inbox.get()]))
    consumer.start()
    inbox.put(7)
    inbox.close()
    consumer.join(5)
    assert not consumer.is_alive() and got == [7, None]


def test_an_inbox_holds_something() -> None:
    with pytest.raises(ValueError):
        ThreadInbox[int](0)


async def test_consume_in_thread_returns_what_the_consumer_returns() -> None:
    inbox = ThreadInbox[int](8)
    for n in (1, 2, 3):
        inbox.put(n)
    inbox.close()

    def total() -> int:
        result = 0
        while (n := inbox.get()) is not None:
            result += n
        return result

    assert await consume_in_thread(total, inbox, "sum") == 6


async def test_cancelling_ends_the_thread_after_its_item_dropping_the_rest() -> None:
    """The stage waits for its thread (never leaves it running), and the thread ends
    after the item it holds: what is still queued is dropped, not worked through."""
    inbox = ThreadInbox[int](8)
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def work() -> None:
        while (n := inbox.get()) is not None:
            started.set()
            release.wait(5)
            done.append(n)

    for n in range(5):
        inbox.put(n)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume_in_thread, work, inbox, "worker")
        await trio.to_thread.run_sync(started.wait, 5)
        nursery.cancel_scope.cancel()
        # the item in hand is released only once the cancellation has closed the
        # inbox: released at once, the thread could take the next item first
        with trio.CancelScope(shield=True):
            while len(inbox):
                await trio.sleep(0.001)
        release.set()
    assert done == [0]
    assert not inbox.put(9)  # closed


async def test_the_consumers_error_reaches_the_stage() -> None:
    inbox = ThreadInbox[int](1)
    inbox.put(1)

    def fail() -> None:
        inbox.get()
        raise RuntimeError("encoder broke")

    with pytest.raises(RuntimeError, match="encoder broke"):
        await consume_in_thread(fail, inbox, "failing")
