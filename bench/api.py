"""Control API throughput and latency, 16 concurrent clients on loopback.

Starts the real service (a child process with a fresh store), then:
  1. CreateIngress x N (default 10,000) from 16 clients: creates/s, p50/p99 latency;
  2. ListIngress by room (100 ingresses per room) from 16 clients: p50/p99;
  3. the same ListIngress by room at a paced load (--rate req/s over the 16 clients),
     which shows service latency rather than queueing: a saturated closed loop of 16
     clients always measures p50 ~= 16 / throughput (Little's law);
  4. ListIngress of everything (N ingresses) from 1 client: p50/p99.
Clients are raw HTTP/1.1 keep-alive connections sending the protobuf bodies that
livekit-api sends, so the figures measure the service, not a client library.
The load generator runs in its own process (--procs) so it does not share the
service's core. Run: .venv/bin/python bench/api.py [--creates 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.protocol import ingress as pb

from tests.service import ServiceProcess

ROOMS = 100


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                   body: bytes) -> tuple[bytes, bool]:
    """One call; returns the payload and whether the server closes the connection
    (hypercorn does after keep_alive_max_requests, 1,000 by default; the service
    no longer runs on it, but the bench keeps working against servers that do)."""
    writer.write(head + body)
    status_and_headers = await reader.readuntil(b"\r\n\r\n")
    length, close = 0, False
    for line in status_and_headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    payload = await reader.readexactly(length)
    if not status_and_headers.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(status_and_headers + payload)
    return payload, close


def _head(host: str, method: str, token: str, length: int) -> bytes:
    return (f"POST /twirp/livekit.Ingress/{method} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/protobuf\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def _client(host: str, port: int, token: str, jobs: list[tuple[str, bytes]],
                  latencies: list[float], interval: float, phase: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    next_at = time.perf_counter() + phase * interval  # clients spread over the interval
    for method, body in jobs:
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        started = time.perf_counter()
        _, close = await _request(reader, writer, _head(f"{host}:{port}", method, token,
                                                        len(body)), body)
        latencies.append(time.perf_counter() - started)
        if close:  # a real client reconnects; the time to do so is not a call's latency
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


def _worker(host: str, port: int, token: str, jobs: list[tuple[str, bytes]], clients: int,
            interval: float, nice: int, out: mp.Queue) -> None:
    async def main() -> list[float]:
        latencies: list[float] = []
        shares = [jobs[i::clients] for i in range(clients)]
        await asyncio.gather(*(_client(host, port, token, share, latencies, interval,
                                       i / clients) for i, share in enumerate(shares)))
        return latencies

    if nice:
        os.nice(nice)
    try:
        out.put(asyncio.run(main()))
    except BaseException as exc:
        out.put(exc)  # the parent must not wait forever for a load process that failed
        raise


def run_load(url: str, token: str, jobs: list[tuple[str, bytes]], clients: int = 16,
             procs: int = 1, rate: float = 0.0, nice: int = 0) -> tuple[float, list[float]]:
    """Run `jobs` over `clients` connections; `rate` > 0 paces them (req/s in total);
    `nice` < 0 lets the load generator run ahead of the service's processes."""
    host, port = url.removeprefix("http://").split(":")
    out: mp.Queue = mp.Queue()
    interval = clients / rate if rate else 0.0
    workers = [mp.Process(target=_worker, args=(host, int(port), token, jobs[i::procs],
                                                clients // procs, interval, nice, out))
               for i in range(procs)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for result in results:
        if isinstance(result, BaseException):
            raise SystemExit(f"load generator failed: {result!r}")
    latencies = [x for result in results for x in result]
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join()
    return elapsed, latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1] * 1000


def report(name: str, elapsed: float, latencies: list[float]) -> None:
    print(f"{name:<34} {len(latencies) / elapsed:9.0f} req/s   p50 {pct(latencies, 50):7.2f} ms"
          f"   p99 {pct(latencies, 99):7.2f} ms   ({len(latencies)} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=10_000)
    parser.add_argument("--lists", type=int, default=4_000)
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="offered load of the paced ListIngress phase, req/s")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice value of the load generator (-10: it is not queued "
                             "behind the service on a 2-core machine; needs root)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        service = ServiceProcess(Path(tmp))
        service.start()
        try:
            token = service.token(ttl=3600)
            creates = [("CreateIngress", pb.CreateIngressRequest(
                input_type=pb.IngressInput.RTMP_INPUT, name=f"bench {i}",
                room_name=f"room-{i % ROOMS}", participant_identity=f"p{i}",
            ).SerializeToString()) for i in range(args.creates)]
            elapsed, lat = run_load(service.url, token, creates, procs=args.procs,
                                    nice=args.client_nice)
            report("CreateIngress (16 clients)", elapsed, lat)

            by_room = [("ListIngress", pb.ListIngressRequest(
                room_name=f"room-{i % ROOMS}").SerializeToString()) for i in range(args.lists)]
            elapsed, lat = run_load(service.url, token, by_room, procs=args.procs,
                                    nice=args.client_nice)
            report(f"ListIngress by room ({args.creates // ROOMS}/room)", elapsed, lat)
            elapsed, lat = run_load(service.url, token, by_room[: args.lists // 2],
                                    rate=args.rate)
            report(f"  same, paced at {args.rate:.0f} req/s", elapsed, lat)

            everything = [("ListIngress", b"")] * 50
            elapsed, lat = run_load(service.url, token, everything, clients=1)
            report(f"ListIngress all ({args.creates} items)", elapsed, lat)
        finally:
            service.stop()


if __name__ == "__main__":
    main()
