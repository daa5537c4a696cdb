"""What an open console costs the node: the list's refresh (`/console/rows`, which
each open list page fetches every 2 s) and the first page load, with N ingresses.

Starts the real service (a child process with a fresh store, no LiveKit server),
creates N ingresses over the Twirp API (10 per room), signs in as a browser would
(the sign-in form, its CSRF cookie, the session cookie), then fetches, one request
at a time: the rows of everything, the rows of one room, the whole list page.
Prints p50/p99 latency and the service's CPU time per request, and from that the
share of one core that one open list page takes at one refresh every 2 s.
Run: .venv/bin/python bench/console.py [--ingresses 1000] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from livekit.protocol import ingress as pb

from tests.service import ServiceProcess

REFRESH_SECONDS = 2.0  # console.js
PER_ROOM = 10


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create(service: ServiceProcess, count: int) -> None:
    async def call(client: Any) -> None:
        for i in range(count):
            await client.create_ingress(pb.CreateIngressRequest(
                input_type=pb.IngressInput.RTMP_INPUT, name=f"stream {i}",
                room_name=f"room-{i // PER_ROOM}", participant_identity=f"obs-{i}"))

    service.api(call)


def sign_in(http: httpx.Client, service: ServiceProcess) -> None:
    form = http.get("/console/sign-in").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    reply = http.post("/console/sign-in", data={
        "csrf": csrf.group(1), "api_key": service.api_key, "api_secret": service.api_secret})
    assert reply.status_code == 302, reply.text


def measure(http: httpx.Client, pid: int, path: str, requests: int) -> None:
    http.get(path).raise_for_status()  # templates compiled, caches warm
    latencies = []
    cpu_before = cpu_seconds(pid)
    for _ in range(requests):
        began = time.perf_counter()
        reply = http.get(path)
        latencies.append((time.perf_counter() - began) * 1000)
        reply.raise_for_status()
    cpu = (cpu_seconds(pid) - cpu_before) / requests
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"  {path:<28} {len(reply.content) / 1024:7.1f} KiB  p50 "
          f"{statistics.median(latencies):6.1f} ms  p99 {p99:6.1f} ms  CPU "
          f"{cpu * 1000:6.1f} ms/request  one open page every {REFRESH_SECONDS:.0f} s: "
          f"{cpu / REFRESH_SECONDS * 100:.2f}% of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingresses", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        service = ServiceProcess(Path(workdir))
        service.start()
        try:
            assert service.proc is not None
            create(service, args.ingresses)
            print(f"{args.ingresses} ingresses, {PER_ROOM} per room; "
                  f"{args.requests} sequential requests each")
            with httpx.Client(base_url=service.url, follow_redirects=False) as http:
                sign_in(http, service)
                measure(http, service.proc.pid, "/console/rows", args.requests)
                measure(http, service.proc.pid, "/console/rows?room=room-7", args.requests)
                measure(http, service.proc.pid, "/console/", args.requests)
        finally:
            service.stop()


if __name__ == "__main__":
    main()
