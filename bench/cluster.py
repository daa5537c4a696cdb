"""Cluster mode against a real Redis and livekit-server 1.13.5 (issue 13).

Starts Debian's redis-server, livekit-server (with `redis:` and `ingress:` blocks)
and a media file server, then measures:

1. CreateIngress(URL) at the LiveKit server to the first video frame a subscriber
   gets, through one real node of ours (`--runs` times);
2. what that node costs when idle: its CPU, and the Redis commands per second it
   adds (10 s with the node, 10 s without);
3. placement: 20 simulated workers (real psrpc on the same Redis, each a stand-in
   that only holds its declared cost: capacity 12 pulls) and 200 URL
   CreateIngress calls made with livekit-api at the server, one after another:
   the claim latency (the request's sent_at to each worker's claim on the bus, and
   to the chosen worker learning it won), the CreateIngress latency the client
   sees, how many pulls each worker holds (max/min), and whether any went over
   its capacity.

Run: .venv/bin/python bench/cluster.py [--runs 3] [--ingresses 200] [--workers 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import redis
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as lk

from bench.rtmp import cpu_seconds
from bench.url import time_to_first_frame
from relay import psrpc
from relay.service.cluster.redis_bus import open_redis_bus
from relay.service.cluster.rpc import RpcCaller, RpcFailed, Served, serve_rpc
from relay.service.config import RedisConfig
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, cluster_config, free_port
from tests.media_http import serve_media
from tests.redis_server import RedisServer
from tests.service import ServiceProcess
from tests.test_cluster_e2e import at_server
from tests.test_cluster_nodes import create_pull

CAPACITY = 12  # pulls a simulated worker holds


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def first_frame(server: LiveKitServer, url: str, room: str) -> float | None:
    return time_to_first_frame(
        server.url, room, lambda: create_pull(server, url, room),
        lambda info: at_server(server, lambda c: c.ingress.delete_ingress(
            lk.DeleteIngressRequest(ingress_id=info.ingress_id))))


def commands_per_second(client: redis.Redis, seconds: float) -> tuple[float, float]:
    """Redis commands and input bytes per second over `seconds`."""
    before = client.info("stats")
    time.sleep(seconds)
    after = client.info("stats")
    return ((after["total_commands_processed"] - before["total_commands_processed"]) / seconds,
            (after["total_net_input_bytes"] - before["total_net_input_bytes"]) / seconds)


class SimulatedWorkers:
    """`count` psrpc servers of IngressInternal.StartIngress on one bus, each with
    CAPACITY slots; a pull claimed is stored at the server (IOInfo.CreateIngress) and
    then only held."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.held: Counter[int] = Counter()
        self.over_capacity = 0
        self.claim_ms: list[float] = []  # sent_at -> our claim on the bus
        self.chosen_ms: list[float] = []  # sent_at -> the chosen worker knows it won

    def affinity(self, worker: int, call: psrpc.Call) -> float:
        self.claim_ms.append((time.time_ns() - call.sent_at) / 1e6)
        free = CAPACITY - self.held[worker]
        return free / CAPACITY if free > 0 else -1.0

    async def run(self, address: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with open_redis_bus(RedisConfig(address=address)) as bus, \
                trio.open_nursery() as nursery:
            io = RpcCaller(bus, psrpc.RpcClient("IOInfo", psrpc.new_id("CLI_")))
            await nursery.start(io.run)
            for worker in range(self.count):

                async def start(call: psrpc.Call, worker: int = worker) -> Any:
                    self.chosen_ms.append((time.time_ns() - call.sent_at) / 1e6)
                    if self.held[worker] >= CAPACITY:
                        self.over_capacity += 1
                        return psrpc.RpcError("unavailable", "full")
                    self.held[worker] += 1
                    try:
                        await io.call(psrpc.CREATE_INGRESS, call.request.info, timeout=5)
                    except RpcFailed as exc:
                        return exc.error
                    return call.request.info

                await nursery.start(partial(
                    serve_rpc, bus, psrpc.RpcServer("IngressInternal", psrpc.new_id("SRV_")),
                    [Served(psrpc.START_INGRESS, start,
                            affinity=partial(self.affinity, worker))]))
            task_status.started()
            await trio.sleep_forever()


def run_placement(server: LiveKitServer, redis_address: str, url: str, workers: int,
                  ingresses: int) -> None:
    sim = SimulatedWorkers(workers)
    create_ms: list[float] = []
    failures: Counter[str] = Counter()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run, redis_address)
            for i in range(ingresses):
                began = time.monotonic()
                try:
                    await trio.to_thread.run_sync(create_pull, server, url, f"place-{i}")
                    create_ms.append((time.monotonic() - began) * 1000)
                except Exception as exc:  # counted and printed: a figure, not a crash
                    failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            nursery.cancel_scope.cancel()

    trio.run(main)
    counts = [sim.held[w] for w in range(workers)]
    print(f"placement, {workers} simulated workers x {CAPACITY}, {ingresses} URL "
          f"CreateIngress one after another:")
    print(f"  claim (sent_at -> claim published): p50 {percentile(sim.claim_ms, .5):.1f} ms, "
          f"p99 {percentile(sim.claim_ms, .99):.1f} ms ({len(sim.claim_ms)} claims)")
    print(f"  chosen (sent_at -> the winner handles it): p50 "
          f"{percentile(sim.chosen_ms, .5):.1f} ms, p99 {percentile(sim.chosen_ms, .99):.1f} ms")
    print(f"  CreateIngress at the client: p50 {percentile(create_ms, .5):.1f} ms, "
          f"p99 {percentile(create_ms, .99):.1f} ms")
    print(f"  pulls per worker: min {min(counts)}, max {max(counts)}, "
          f"max/min {max(counts) / max(1, min(counts)):.2f}; over capacity: "
          f"{sim.over_capacity}; failed calls: {dict(failures) or 0}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="first-frame runs")
    parser.add_argument("--ingresses", type=int, default=200)
    parser.add_argument("--workers", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_server = RedisServer(work)
        redis_server.start()
        node_http = free_port()
        livekit = LiveKitServer(work, extra_config=cluster_config(
            redis_server.address, http_port=node_http))

        livekit.start()
        media = work / "media"
        media.mkdir()
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                        "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "10",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        "-g", "30", "-bf", "0", str(media / "clip.mp4")], check=True)
        node = ServiceProcess(work / "node", api_key=API_KEY, api_secret=API_SECRET,
                              ws_url=livekit.url, http_port=node_http,
                              redis={"address": redis_server.address},
                              url_allow_private_addresses=True)
        (work / "node").mkdir()
        client = redis.Redis(port=redis_server.port)
        try:
            with serve_media(media) as served:
                url = f"{served.base}/clip.mp4"
                node.start()
                got = []
                for i in range(args.runs):
                    took = first_frame(livekit, url, f"first-frame-{i}")
                    print(f"first frame run {i + 1}: "
                          f"{'none' if took is None else f'{took * 1000:.0f} ms'}", flush=True)
                    if took is not None:
                        got.append(took)
                if got:
                    print(f"CreateIngress(URL) -> first frame through the cluster: median "
                          f"{statistics.median(got) * 1000:.0f} ms, min {min(got) * 1000:.0f}, "
                          f"max {max(got) * 1000:.0f} ({len(got)}/{args.runs} runs)")
                assert node.proc is not None
                cpu0 = cpu_seconds(node.proc.pid)
                with_node = commands_per_second(client, 10)
                cpu = (cpu_seconds(node.proc.pid) - cpu0) / 10
                node.stop()
                without = commands_per_second(client, 10)
                print(f"an idle node: {cpu * 100:.2f}% of a core; Redis: "
                      f"{with_node[0] - without[0]:.1f} commands/s and "
                      f"{with_node[1] - without[1]:.0f} B/s in, more than without it "
                      f"({without[0]:.1f} commands/s)")
                run_placement(livekit, redis_server.address, url, args.workers,
                              args.ingresses)
        finally:
            node.stop()
            livekit.stop()
            redis_server.stop()


if __name__ == "__main__":
    main()
