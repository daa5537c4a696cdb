"""psrpc servers and clients on the Redis bus: the sans-IO machines of relay/psrpc
driven by trio (one task per machine, handlers in a nursery of their own).

Times: psrpc's expiries are the client's wall clock (unix ns), so the machines get
`time.time_ns()`; waits are turned into trio deadlines from it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from google.protobuf.message import Message

from relay import psrpc

from .redis_bus import RedisBus

log = logging.getLogger(__name__)

# seconds: the caller's loop looks at its deadlines at least this often. A new call's
# first deadline is psrpc's 1 s selection timeout (the 200 ms claim window starts
# with a claim, a message, which wakes the loop), so a look this often is at most
# 20% late on it, for 5 wake-ups a second instead of 50 on an idle node.
TICK = 0.2
Handler = Callable[[psrpc.Call], Awaitable[Message | psrpc.RpcError | None]]
Affinity = Callable[[psrpc.Call], float]


def _deadline(wall_ns: int | None) -> float:
    """A trio deadline for a unix-ns instant (inf for None)."""
    if wall_ns is None:
        return math.inf
    return trio.current_time() + (wall_ns - time.time_ns()) / 1e9


@dataclass(frozen=True)
class Served:
    """One method (and topic) a server answers, with its handler."""

    method: psrpc.Method
    handler: Handler
    topic: str | Sequence[str] = ()
    affinity: Affinity | None = None  # for methods with affinity; default 1.0


async def serve_rpc(bus: RedisBus, server: psrpc.RpcServer, served: Sequence[Served], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer `served` methods until cancelled; started once Redis confirmed the
    subscriptions (a request published after that reaches this server)."""
    by_method = {(s.method.service, s.method.name): s for s in served}
    subscriptions = [sub for s in served for sub in server.register(s.method, s.topic)]
    queues = {sub.channel for sub in subscriptions if sub.queue}
    async with bus.subscription(sub.channel for sub in subscriptions) as messages, \
            trio.open_nursery() as handlers:

        async def perform(events: Sequence[psrpc.ServerEvent]) -> None:
            for event in events:
                if isinstance(event, psrpc.Publish):
                    await bus.publish(event.channel, event.payload)
                elif isinstance(event, psrpc.AffinityWanted):
                    entry = by_method[(event.call.method.service, event.call.method.name)]
                    affinity = entry.affinity(event.call) if entry.affinity else 1.0
                    await perform(server.claim(event.call.request_id, affinity,
                                               time.time_ns()))
                elif isinstance(event, psrpc.HandleRequest):
                    handlers.start_soon(handle, event.call)
                elif isinstance(event, psrpc.CallTimedOut):
                    log.warning("psrpc %s.%s: request %s expired in its handler",
                                event.call.method.service, event.call.method.name,
                                event.call.request_id)

        async def handle(call: psrpc.Call) -> None:
            entry = by_method[(call.method.service, call.method.name)]
            try:
                result = await entry.handler(call)
            except Exception as exc:  # the handler's bug: the caller gets an error
                log.exception("psrpc %s.%s: handler failed", call.method.service,
                              call.method.name)
                result = psrpc.RpcError("internal", f"{type(exc).__name__}: {exc}")
            await perform(server.respond(call.request_id, result, time.time_ns()))

        async def receive(channel: str, payload: bytes) -> Sequence[psrpc.ServerEvent]:
            if channel in queues and not await bus.set_nx(
                    psrpc.queue_lock_key(payload), psrpc.QUEUE_LOCK_TTL_NS // 1_000_000):
                return []  # another subscriber of the cluster took it
            try:
                return server.receive(channel, payload, time.time_ns())
            except psrpc.PsrpcProtocolError as exc:
                log.debug("psrpc: dropped a malformed message on %s: %s", channel, exc)
                return []

        task_status.started()
        while True:
            arrived = await _next_message(messages, _deadline(server.next_deadline()))
            if arrived is not None:  # performed outside the wait: never cut halfway
                await perform(await receive(*arrived))
            await perform(server.tick(time.time_ns()))


class RpcFailed(Exception):
    """A psrpc call ended in an error (its psrpc code and message)."""

    def __init__(self, error: psrpc.RpcError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class RpcCaller:
    """Calls of one psrpc service (``IOInfo``...) from this node: `run` it in a nursery
    (`await nursery.start(caller.run)`), then `await caller.call(...)` from any task."""

    def __init__(self, bus: RedisBus, client: psrpc.RpcClient) -> None:
        self._bus = bus
        self._client = client
        self._waiting: dict[str, trio.MemorySendChannel[Any]] = {}

    async def call(self, method: psrpc.Method, request: Message, *,
                   topic: str | Sequence[str] = (), timeout: float | None = None) -> Message:
        """The response, or RpcFailed with psrpc's error (no retry here)."""
        send, receive = trio.open_memory_channel[psrpc.Result](1)
        request_id, actions = self._client.request(
            method, request, time.time_ns(), topic=topic,
            timeout_ns=None if timeout is None else int(timeout * 1e9))
        self._waiting[request_id] = send
        try:
            await self._perform(actions)
            result = await receive.receive()
        finally:
            self._waiting.pop(request_id, None)
            self._client.cancel(request_id)
        if result.error is not None:
            raise RpcFailed(result.error)
        assert result.response is not None
        return result.response

    async def call_all(self, method: psrpc.Method, request: Message, *,
                       timeout: float = 1.0) -> list[Message]:
        """A multi method (ListActiveIngress): every server's answer within `timeout`
        (errors left out)."""
        send, receive = trio.open_memory_channel[psrpc.ClientEvent](math.inf)
        request_id, actions = self._client.request(method, request, time.time_ns(),
                                                   timeout_ns=int(timeout * 1e9))
        self._waiting[request_id] = send
        answers: list[Message] = []
        try:
            await self._perform(actions)
            while not isinstance(event := await receive.receive(), psrpc.MultiDone):
                if isinstance(event, psrpc.MultiReply) and event.response is not None:
                    answers.append(event.response)
        finally:
            self._waiting.pop(request_id, None)
            self._client.cancel(request_id)
        return answers

    async def _perform(self, events: Sequence[psrpc.ClientEvent]) -> None:
        for event in events:
            if isinstance(event, psrpc.Publish):
                await self._bus.publish(event.channel, event.payload)
            elif isinstance(event, psrpc.Result | psrpc.MultiReply | psrpc.MultiDone):
                waiter = self._waiting.get(event.request_id)
                if waiter is not None:
                    waiter.send_nowait(event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Feed the client its channels and its deadlines until cancelled."""
        channels = [sub.channel for sub in self._client.subscriptions()]
        async with self._bus.subscription(channels) as messages:
            task_status.started()
            while True:
                # a call made meanwhile may have an earlier deadline: look at least
                # every TICK (the machine's own deadlines are 200 ms and up)
                deadline = min(_deadline(self._client.next_deadline()),
                               trio.current_time() + TICK)
                arrived = await _next_message(messages, deadline)
                if arrived is not None:  # performed outside the wait: never cut halfway
                    channel, payload = arrived
                    try:
                        events = self._client.receive(channel, payload, time.time_ns())
                    except psrpc.PsrpcProtocolError as exc:
                        log.debug("psrpc: dropped a malformed message on %s: %s", channel,
                                  exc)
                        events = []
                    await self._perform(events)
                await self._perform(self._client.tick(time.time_ns()))


async def _next_message(messages: trio.MemoryReceiveChannel[tuple[str, bytes]],
                        deadline: float) -> tuple[str, bytes] | None:
    """The next (channel, payload), or None once `deadline` passed."""
    with trio.move_on_at(deadline):
        return await messages.receive()
    return None
