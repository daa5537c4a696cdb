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
from tests.livekit import API_KEY, API_SECRET, LiveKitServer
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
    server = LiveKitServer(tmp_path_factory.mktemp("livekit-cluster"), extra_config=f"""
redis:
  address: {redis_server.address}
ingress:
  rtmp_base_url: rtmp://127.0.0.1:1935/x
  whip_base_url: http://127.0.0.1:8080/w
""")
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
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    path.write_text("{not json")
    assert LiveJournal(path).load() == {}
