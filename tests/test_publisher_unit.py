"""The trio-asyncio edge: asyncio's semantics where the SDK relies on them."""

from __future__ import annotations

import asyncio

import trio
import trio_asyncio

import relay.publisher  # noqa: F401  (installs the call_later clamp)


async def test_negative_call_later_delay_runs_now() -> None:
    fired = trio.Event()

    async def schedule() -> None:
        asyncio.get_event_loop().call_later(-0.002, fired.set)

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(schedule)()
        with trio.fail_after(2):
            await fired.wait()
