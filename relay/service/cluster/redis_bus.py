"""Redis pub/sub for psrpc, as trio sees it: the thin edge under relay/psrpc.

redis-py is the field's standard client; we use its synchronous client, not its
asyncio one: the service process runs trio and has no asyncio loop (the one asyncio
bridge lives in the session worker), and redis-py's sync client brings what a
deployment needs (TLS, ACL users, Sentinel) without a second event loop. Two kinds
of thread do its blocking work:

* one reader thread owns the pub/sub connection: it applies (un)subscriptions
  between reads (a redis-py PubSub is not thread-safe), reads messages and hands
  them to the trio side, each to the memory channel of the subscription that asked
  for its channel, with back-pressure (a full channel holds the reader);
* commands (PUBLISH, SET NX) run in trio's worker threads on the client's
  connection pool.

A lost connection is retried by the reader with a growing pause (redis-py
re-subscribes on reconnect); subscribers see a gap, not an error.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.cluster
import redis.sentinel
import trio

from ..config import RedisConfig

log = logging.getLogger(__name__)

READ_POLL = 0.05  # seconds the reader waits for a message before applying (un)subscribes
RETRY_PAUSES = (0.1, 0.2, 0.5, 1.0, 2.0)  # after a lost connection, then 2 s each
SUBSCRIPTION_BUFFER = 256  # messages held per subscription before the reader waits


def _host_port(address: str, default_port: int = 6379) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or default_port)


def redis_client(config: RedisConfig) -> redis.Redis:
    """A client of `config`'s Redis: one node, the master a Sentinel names, or a
    cluster (as LiveKit's go-redis UniversalClient picks from the same keys)."""
    common: dict[str, Any] = {"username": config.username or None,
                              "password": config.password or None, "ssl": config.use_tls,
                              "socket_connect_timeout": 5}
    if config.sentinel_addresses:
        sentinel = redis.sentinel.Sentinel(
            [_host_port(a, 26379) for a in config.sentinel_addresses],
            sentinel_kwargs={"username": config.sentinel_username or None,
                             "password": config.sentinel_password or None,
                             "socket_connect_timeout": 5},
            **common)
        return sentinel.master_for(config.sentinel_master_name, db=config.db,
                                   health_check_interval=10)
    if config.cluster_addresses:
        nodes = [redis.cluster.ClusterNode(*_host_port(a)) for a in config.cluster_addresses]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **common)  # type: ignore[return-value]
    host, port = _host_port(config.address)
    return redis.Redis(host=host, port=port, db=config.db, health_check_interval=10,
                       **common)


class RedisBus:
    """Subscriptions and commands on one Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, token: trio.lowlevel.TrioToken) -> None:
        self._client = client
        self._token = token
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._changes: queue.SimpleQueue[tuple[str, list[bytes]]] = queue.SimpleQueue()
        # the subscriptions of each channel (several local subscribers share one
        # Redis subscription) and the confirmation Redis sent for it
        self._routes: dict[bytes, list[trio.MemorySendChannel[tuple[str, bytes]]]] = {}
        self._acks: dict[bytes, trio.Event] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="redis-bus", daemon=True)
        self.reconnects = 0

    # -- the trio side ----------------------------------------------------------------

    @asynccontextmanager
    async def subscription(self, channels: Iterable[str]
                           ) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        """Subscribe to `channels` for the block; messages come as (channel, payload)
        once Redis has confirmed every subscription."""
        names = list(dict.fromkeys(c.encode() for c in channels))
        send, receive = trio.open_memory_channel[tuple[str, bytes]](SUBSCRIPTION_BUFFER)
        new = [name for name in names if name not in self._routes]  # Redis is asked once
        acks = {name: self._acks.setdefault(name, trio.Event()) for name in names}
        for name in names:
            self._routes.setdefault(name, []).append(send)
        try:
            if new:
                self._changes.put(("subscribe", new))
            for event in acks.values():
                await event.wait()
            async with receive:
                yield receive
        finally:
            gone = []
            for name in names:
                routes = self._routes.get(name, [])
                if send in routes:
                    routes.remove(send)
                if not routes:
                    self._routes.pop(name, None)
                    self._acks.pop(name, None)
                    gone.append(name)
            if gone:
                self._changes.put(("unsubscribe", gone))

    async def publish(self, channel: str, payload: bytes) -> None:
        await trio.to_thread.run_sync(self._client.publish, channel, payload)

    async def set_nx(self, key: str, ttl_ms: int) -> bool:
        """SET key NX PX ttl: whether this caller was first (psrpc's queue lock)."""
        return bool(await trio.to_thread.run_sync(
            lambda: self._client.set(key, b"1", nx=True, px=ttl_ms)))

    # -- the reader thread ------------------------------------------------------------

    def _read(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                self._apply_changes()
                message = self._pubsub.get_message(timeout=READ_POLL)
                failures = 0
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                pause = RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)]
                if failures == 0:
                    log.warning("redis bus: connection lost (%s); retrying", exc)
                failures += 1
                self.reconnects += 1
                self._closing.wait(pause)
                continue
            if message is not None:
                self._deliver(message)

    def _apply_changes(self) -> None:
        while True:
            try:
                kind, names = self._changes.get_nowait()
            except queue.Empty:
                return
            if kind == "subscribe":
                self._pubsub.subscribe(*names)
            else:
                live = [n for n in names if n not in self._routes]
                if live:
                    self._pubsub.unsubscribe(*live)

    def _deliver(self, message: dict[str, object]) -> None:
        name = message.get("channel")
        if not isinstance(name, bytes):
            return
        if message.get("type") == "subscribe":
            ack = self._acks.get(name)
            if ack is not None:
                self._call(ack.set)
        elif message.get("type") == "message":
            data = message.get("data")
            if not isinstance(data, bytes):
                return
            for route in list(self._routes.get(name, ())):
                # ClosedResource...: the subscription ended meanwhile
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError,
                                         trio.RunFinishedError):
                    trio.from_thread.run(route.send, (name.decode(), data),
                                         trio_token=self._token)

    def _call(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(fn, trio_token=self._token)

    # -- lifetime ---------------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _stop(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


@asynccontextmanager
async def open_redis_bus(config: RedisConfig) -> AsyncIterator[RedisBus]:
    """A bus on `config`'s Redis for the block; fails at once if Redis does not answer."""
    client = redis_client(config)
    began = time.monotonic()
    await trio.to_thread.run_sync(client.ping)
    log.info("redis bus: connected to %s in %.0f ms", config.describe(),
             (time.monotonic() - began) * 1000)
    bus = RedisBus(client, trio.lowlevel.current_trio_token())
    bus._start()
    try:
        yield bus
    finally:
        await trio.to_thread.run_sync(bus._stop)
