"""psrpc over a real Redis (Debian's redis-server), and a stock livekit-server 1.13.5
reaching a psrpc server of ours over it (issue 13, first steps).

These check the protocol core (relay/psrpc) and its Redis edge
(relay/service/cluster) against real peers; the worker mode built on them comes next.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from livekit import api
from livekit.protocol import ingress as lk

from relay import psrpc
from relay.service.cluster.redis_bus import RedisBus, open_redis_bus
from relay.service.cluster.rpc import RpcCaller, RpcFailed, Served, serve_rpc
from relay.service.config import RedisConfig
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, cluster_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@asynccontextmanager
async def bus_of(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    async with open_redis_bus(RedisConfig(address=redis_server.address)) as bus:
        yield bus


async def test_a_call_goes_to_the_server_with_the_best_affinity(redis_server: RedisServer
                                                               ) -> None:
    """Two servers claim an affinity method (StartIngress): the higher one runs the
    handler, the caller gets its answer; all through Redis pub/sub."""
    seen: list[str] = []

    def server(name: str, affinity: float) -> tuple[psrpc.RpcServer, list[Served]]:
        async def handler(call: psrpc.Call) -> lk.IngressInfo:
            seen.append(name)
            return lk.IngressInfo(ingress_id=call.request.info.ingress_id, name=name)

        return (psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_")),
                [Served(psrpc.START_INGRESS, handler, affinity=lambda call: affinity)])

    async with bus_of(redis_server) as bus, trio.open_nursery() as nursery:
        for name, affinity in (("low", 0.3), ("high", 0.9)):
            machine, served = server(name, affinity)
            await nursery.start(partial(serve_rpc, bus, machine, served))
        caller = RpcCaller(bus, psrpc.RpcClient("IngressInternal", psrpc.new_id("CLI_")))
        await nursery.start(caller.run)
        with trio.fail_after(5):
            answer = await caller.call(psrpc.START_INGRESS, psrpc.StartIngressRequest(
                info=lk.IngressInfo(ingress_id="IN_test")))
        assert (answer.ingress_id, answer.name) == ("IN_test", "high")
        assert seen == ["high"]
        nursery.cancel_scope.cancel()


async def test_nobody_serving_is_unavailable_and_a_handler_error_reaches_the_caller(
        redis_server: RedisServer) -> None:
    async def failing(call: psrpc.Call) -> psrpc.RpcError:
        return psrpc.RpcError("not_found", "no such stream key")

    async with bus_of(redis_server) as bus, trio.open_nursery() as nursery:
        caller = RpcCaller(bus, psrpc.RpcClient("IOInfo", psrpc.new_id("CLI_")))
        await nursery.start(caller.run)
        with trio.fail_after(5), pytest.raises(RpcFailed) as nobody:
            await caller.call(psrpc.GET_INGRESS_INFO,
                              psrpc.GetIngressInfoRequest(stream_key="k"))
        assert nobody.value.error.code == "unavailable"
        await nursery.start(partial(serve_rpc, bus, psrpc.RpcServer("IOInfo", "SRV_io"),
                                    [Served(psrpc.GET_INGRESS_INFO, failing)]))
        with trio.fail_after(5), pytest.raises(RpcFailed) as refused:
            await caller.call(psrpc.GET_INGRESS_INFO,
                              psrpc.GetIngressInfoRequest(stream_key="k"))
        assert (refused.value.error.code, refused.value.error.message) == (
            "not_found", "no such stream key")
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def cluster_livekit(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[LiveKitServer]:
    """livekit-server 1.13.5 on the test Redis, with an ingress block: its Ingress API
    answers CreateIngress itself and starts URL pulls over psrpc."""
    server = LiveKitServer(tmp_path_factory.mktemp("livekit-cluster"),
                           extra_config=cluster_config(redis_server.address))
    server.start()
    yield server
    server.stop()


def create_url_ingress(livekit: LiveKitServer, url: str) -> lk.IngressInfo:
    async def main() -> lk.IngressInfo:
        client = api.LiveKitAPI(livekit.url.replace("ws://", "http://"), API_KEY, API_SECRET)
        try:
            return await client.ingress.create_ingress(lk.CreateIngressRequest(
                input_type=lk.IngressInput.URL_INPUT, url=url, name="pulled",
                room_name="cluster-room", participant_identity="puller"))
        finally:
            await client.aclose()

    return asyncio.run(main())


async def test_livekit_server_starts_a_url_pull_on_our_psrpc_server(
        redis_server: RedisServer, cluster_livekit: LiveKitServer) -> None:
    """CreateIngress(URL) at the LiveKit server (the official client, talking only to
    it) reaches our IngressInternal.StartIngress through Redis, and our answer is what
    the client gets. Without a psrpc server it is 'no response from servers'."""
    started: list[Any] = []

    async def start_ingress(call: psrpc.Call) -> lk.IngressInfo:
        started.append(call.request)
        info = lk.IngressInfo()
        info.CopyFrom(call.request.info)
        info.state.status = lk.IngressState.ENDPOINT_BUFFERING
        return info

    url = "http://media.example/stream.mp4"
    with pytest.raises(api.TwirpError) as nobody:
        await trio.to_thread.run_sync(create_url_ingress, cluster_livekit, url)
    assert "no response from servers" in str(nobody.value)

    async with bus_of(redis_server) as bus, trio.open_nursery() as nursery:
        await nursery.start(partial(
            serve_rpc, bus, psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_")),
            [Served(psrpc.START_INGRESS, start_ingress, affinity=lambda call: 1.0)]))
        with trio.fail_after(30):
            info = await trio.to_thread.run_sync(create_url_ingress, cluster_livekit, url)
        nursery.cancel_scope.cancel()
    (request,) = started
    assert request.info.url == url and request.info.room_name == "cluster-room"
    assert info.ingress_id == request.info.ingress_id and info.url == url


def test_the_live_journal_keeps_live_states_only(tmp_path: Path) -> None:
    from relay.service.cluster.journal import LiveJournal

    path = tmp_path / "data" / "cluster-sessions.json"
    journal = LiveJournal(path)
    live = lk.IngressState(status=lk.IngressState.ENDPOINT_PUBLISHING, resource_id="RT_a",
                           started_at=123)
    journal.record("IN_a", live)
    journal.record("IN_b", lk.IngressState(status=lk.IngressState.ENDPOINT_BUFFERING))
    journal.record("IN_b", lk.IngressState(status=lk.IngressState.ENDPOINT_INACTIVE))
    assert LiveJournal(path).load() == {"IN_a": live}
    written = path.read_bytes()
    refreshed = lk.IngressState()
    refreshed.CopyFrom(live)
    refreshed.video.width = 640  # the input statistics of a live session, refreshed
    journal.record("IN_a", refreshed)
    assert path.read_bytes() == written  # the same session: nothing rewritten
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    path.write_text("{not json")
    assert LiveJournal(path).load() == {}


@pytest.fixture(scope="module")
def sentinel(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[int]:
    """A real Sentinel (Debian's redis-server in sentinel mode) watching the test Redis
    as master `relay`: its port."""
    import socket
    import subprocess
    import time

    from tests.livekit import free_port

    workdir = tmp_path_factory.mktemp("sentinel")
    port = free_port()
    conf = workdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor relay 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=(workdir / "sentinel.log").open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


async def test_a_call_through_the_master_a_sentinel_names(sentinel: int) -> None:
    """redis.sentinel_* (LiveKit's keys): the bus finds the master through a real
    Sentinel and a psrpc call goes through (StartIngress: no livekit-server of this
    module serves it)."""
    async def handler(call: psrpc.Call) -> lk.IngressInfo:
        return lk.IngressInfo(ingress_id=call.request.info.ingress_id, name="via sentinel")

    config = RedisConfig(sentinel_master_name="relay",
                         sentinel_addresses=(f"127.0.0.1:{sentinel}",))
    async with open_redis_bus(config) as bus, trio.open_nursery() as nursery:
        await nursery.start(partial(
            serve_rpc, bus, psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_")),
            [Served(psrpc.START_INGRESS, handler)]))
        caller = RpcCaller(bus, psrpc.RpcClient("IngressInternal", psrpc.new_id("CLI_")))
        await nursery.start(caller.run)
        with trio.fail_after(5):
            reply = await caller.call(psrpc.START_INGRESS, psrpc.StartIngressRequest(
                info=lk.IngressInfo(ingress_id="IN_sentinel")))
        assert (reply.ingress_id, reply.name) == ("IN_sentinel", "via sentinel")
        nursery.cancel_scope.cancel()


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus twins (port + 10000, Redis' rule) are free too."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 40000)
        if port not in ports and free(port) and free(port + 10000):
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A real three-master Redis Cluster (Debian's redis-server and redis-cli)."""
    import subprocess
    import time

    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = cluster_ports(3)
    procs = [subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(workdir),
         "--cluster-config-file", f"nodes-{port}.conf"],
        stdout=(workdir / f"{port}.log").open("wb"), stderr=subprocess.STDOUT)
        for port in ports]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    try:
        for port in ports:  # each node answers before the cluster is made
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                 timeout=5).stdout.strip() != b"PONG":
                time.sleep(0.05)
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas",
                        "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while b"cluster_state:ok" not in subprocess.run(
                ["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                capture_output=True, timeout=5).stdout:
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.2)
        yield addresses
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


async def test_a_call_through_a_redis_cluster(redis_cluster: list[str]) -> None:
    """redis.cluster_addresses (LiveKit's key): pub/sub and the queue lock of psrpc
    over a real three-master Redis Cluster."""
    seen: list[str] = []

    async def handler(call: psrpc.Call) -> lk.IngressState:
        seen.append(call.request.ingress_id)
        return lk.IngressState(status=lk.IngressState.ENDPOINT_INACTIVE)

    config = RedisConfig(cluster_addresses=tuple(redis_cluster[:1]))
    async with open_redis_bus(config) as bus, trio.open_nursery() as nursery:
        for _ in range(2):  # a queue method: one of the two takes each request
            await nursery.start(partial(
                serve_rpc, bus, psrpc.RpcServer("IngressHandler", psrpc.new_id("SRV_")),
                [Served(psrpc.DELETE_INGRESS, handler, topic="IN_cluster")]))
        caller = RpcCaller(bus, psrpc.RpcClient("IngressHandler", psrpc.new_id("CLI_")))
        await nursery.start(caller.run)
        with trio.fail_after(5):
            reply = await caller.call(psrpc.DELETE_INGRESS, lk.DeleteIngressRequest(
                ingress_id="IN_cluster"), topic="IN_cluster")
        assert reply.status == lk.IngressState.ENDPOINT_INACTIVE
        assert seen == ["IN_cluster"]
        nursery.cancel_scope.cancel()
