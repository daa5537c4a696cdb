"""The asyncio edge of a session worker (relay/worker/aio_thread.py), without a peer."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from relay.worker import aio_thread


async def test_call_runs_on_the_asyncio_thread_and_returns_its_result() -> None:
    async def where(x: int) -> tuple[str, bool, int]:
        asyncio.get_running_loop()  # raises outside a running loop
        return threading.current_thread().name, True, x * 2

    async with aio_thread.open_asyncio_thread():
        name, ran, doubled = await aio_thread.call(where, 21)
    assert (name, ran, doubled) == ("asyncio", True, 42)
    assert threading.current_thread().name != "asyncio"


async def test_an_exception_on_the_asyncio_side_reaches_the_trio_caller() -> None:
    async def fails() -> None:
        raise ValueError("from asyncio")

    async with aio_thread.open_asyncio_thread():
        with pytest.raises(ValueError, match="from asyncio"):
            await aio_thread.call(fails)


async def sleep_until_cancelled(cancelled: threading.Event) -> None:
    """On the asyncio side: wait for a cancellation and say that it came."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def test_a_trio_cancellation_cancels_the_asyncio_task() -> None:
    cancelled = threading.Event()
    async with aio_thread.open_asyncio_thread():
        with trio.move_on_after(0.2):
            await aio_thread.call(sleep_until_cancelled, cancelled)
        await trio.to_thread.run_sync(cancelled.wait, 5)
    assert cancelled.is_set()


async def test_to_trio_hands_asyncio_callbacks_to_trio_in_order() -> None:
    send, receive = trio.open_memory_channel[int](10)

    async with aio_thread.open_asyncio_thread() as edge:
        def from_asyncio() -> None:  # a callback on the asyncio thread, like aiortc's
            for i in range(5):
                edge.to_trio(send.send_nowait, i)

        edge.call_soon(from_asyncio)
        with trio.fail_after(5):
            got = [await receive.receive() for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]


async def test_leaving_cancels_leftover_tasks_and_stops_the_thread() -> None:
    cancelled = threading.Event()

    async def start_task() -> None:
        asyncio.get_running_loop().create_task(sleep_until_cancelled(cancelled))

    async with aio_thread.open_asyncio_thread() as edge:
        await edge.call(start_task)
        thread_count = threading.active_count()
    assert cancelled.is_set() and edge.loop.is_closed()
    assert threading.active_count() == thread_count - 1
    with pytest.raises(RuntimeError, match="open_asyncio_thread"):
        aio_thread.current()


async def test_a_negative_call_later_delay_runs_now() -> None:
    """A delay computed by subtraction (the SDK's AudioSource did, when it published)
    comes out a hair below zero on a busy machine (seen: -0.0019 s): asyncio runs it
    now (trio-asyncio, used before, asserted on it and killed the session)."""
    fired = trio.Event()

    async def schedule() -> None:
        edge = aio_thread.current()
        asyncio.get_running_loop().call_later(-0.002, edge.to_trio, fired.set)

    async with aio_thread.open_asyncio_thread():
        await aio_thread.call(schedule)
        with trio.fail_after(2):
            await fired.wait()
