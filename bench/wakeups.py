"""What one wake-up from idle costs Python on this machine, by way of waking.

A live pipeline sleeps between frames, so each frame starts with wake-ups: of the
event loop (the next message from the front) and of each thread it hands work to.
On a KVM guest a wake-up from idle is expensive, and more so for code with a large
working set (the trio run loop) than for a bare `time.sleep`. This prints the CPU
time per wake-up (getrusage: all threads; /proc's schedstat agrees) of a loop that
wakes --rate times a second for --seconds:

- `time.sleep`: the floor, nothing but the wake-up;
- asyncio and trio: a task sleeping until its next deadline;
- trio + `to_thread.run_sync`: each wake also runs an empty function in a worker
  thread and waits for it (what the worker did per frame, twice, until 2026-12-03);
- trio + `ThreadInbox`: each wake hands an item to a long-lived thread without
  waiting for it (relay/worker/handoff.py, what the worker does now).

Run: .venv/bin/python bench/wakeups.py [--rate 60] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.worker.handoff import ThreadInbox


def cpu_seconds() -> float:
    """This process' CPU time so far, all its threads, ended ones too."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain(rate: float, count: int) -> None:
    began = time.monotonic()
    for i in range(count):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def asyncio_task(rate: float, count: int) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, began + i / rate - loop.time()))


async def trio_task(rate: float, count: int,
                    each: Callable[[], Awaitable[object]] | None = None) -> None:
    began = trio.current_time()
    for i in range(count):
        await trio.sleep_until(began + i / rate)
        if each is not None:
            await each()


async def trio_hops(rate: float, count: int) -> None:
    await trio_task(rate, count, lambda: trio.to_thread.run_sync(lambda: None))


async def trio_inbox(rate: float, count: int) -> None:
    inbox = ThreadInbox[int](4)

    def consume() -> None:
        while inbox.get() is not None:
            pass

    async def put() -> None:
        inbox.put(1)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        await trio_task(rate, count, put)
    finally:
        inbox.close()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=60.0, help="wake-ups a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="per way, per round")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    ways: dict[str, Callable[[], object]] = {
        "time.sleep": lambda: plain(args.rate, count),
        "asyncio task": lambda: asyncio.run(asyncio_task(args.rate, count)),
        "trio task": lambda: trio.run(trio_task, args.rate, count),
        "trio task + to_thread.run_sync": lambda: trio.run(trio_hops, args.rate, count),
        "trio task + ThreadInbox.put": lambda: trio.run(trio_inbox, args.rate, count),
    }
    print("command:", " ".join(sys.argv))
    print(f"{'way':32} CPU per wake-up (us), 2 rounds")
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(2):  # interleaved: the machine's speed drifts
        for name, run in ways.items():
            before = cpu_seconds()
            run()
            results[name].append((cpu_seconds() - before) / count * 1e6)
    for name, values in results.items():
        print(f"{name:32} " + " ".join(f"{v:6.0f}" for v in values))


if __name__ == "__main__":
    main()
