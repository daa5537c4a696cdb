"""Concurrency and bad input: the service answers every call cleanly and stays up."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from livekit import api
from livekit.protocol import ingress as pb

from tests.service import ServiceProcess, run_asyncio

PREFIX = "/twirp/livekit.Ingress/"


def bad_requests(service: ServiceProcess) -> list[tuple[str, str, dict[str, str], bytes,
                                                        int, str]]:
    """(name, method+path, headers, body, expected status, expected twirp code)."""
    auth = {"Authorization": "Bearer " + service.token()}
    proto = {**auth, "Content-Type": "application/protobuf"}
    js = {**auth, "Content-Type": "application/json"}
    return [
        ("malformed protobuf", "POST " + PREFIX + "CreateIngress", proto,
         b"\x0a\xff\xff\xff\xff\x0f", 400, "malformed"),
        ("truncated protobuf", "POST " + PREFIX + "CreateIngress", proto, b"\x1a\x10abc",
         400, "malformed"),
        ("invalid json", "POST " + PREFIX + "CreateIngress", js, b'{"inputType": ', 400,
         "malformed"),
        ("json wrong type", "POST " + PREFIX + "CreateIngress", js, b'{"inputType": [1]}', 400,
         "malformed"),
        ("json not utf-8", "POST " + PREFIX + "CreateIngress", js, b'{"name": "\xff"}', 400,
         "malformed"),
        ("10 MB body", "POST " + PREFIX + "CreateIngress", proto, b"\x00" * (10 << 20), 400,
         "malformed"),
        ("unknown route", "POST " + PREFIX + "DropIngress", proto, b"", 404, "bad_route"),
        ("unknown service", "POST /twirp/livekit.Egress/ListEgress", proto, b"", 404,
         "bad_route"),
        ("GET instead of POST", "GET " + PREFIX + "ListIngress", proto, b"", 404, "bad_route"),
        ("wrong content type", "POST " + PREFIX + "ListIngress",
         {**auth, "Content-Type": "text/plain"}, b"", 404, "bad_route"),
    ]


async def _bad(session: aiohttp.ClientSession, url: str, case: tuple) -> None:
    name, target, headers, body, status, code = case
    method, path = target.split(" ", 1)
    async with session.request(method, url + path, data=body, headers=headers) as r:
        payload = json.loads(await r.read())
        assert (r.status, payload["code"]) == (status, code), (name, payload)
        assert payload["msg"], name


def test_bad_input_gets_clean_twirp_errors(service: ServiceProcess) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            for case in bad_requests(service):
                await _bad(session, service.url, case)

    run_asyncio(main())
    assert service.alive


def test_200_creates_from_16_clients_with_bad_input_mixed_in(service: ServiceProcess) -> None:
    bad = bad_requests(service)

    async def client(n: int) -> list[pb.IngressInfo]:
        made = []
        async with api.LiveKitAPI(service.url, service.api_key, service.api_secret) as lk, \
                aiohttp.ClientSession() as raw:
            for i in range(200 // 16 + 1):
                k = n * 13 + i
                if k >= 200:
                    break
                made.append(await lk.ingress.create_ingress(pb.CreateIngressRequest(
                    input_type=k % 2, room_name=f"conc-{k % 5}",
                    participant_identity=f"p{k}")))
                await _bad(raw, service.url, bad[k % len(bad)])
        return made

    async def main() -> list[pb.IngressInfo]:
        results = await asyncio.gather(*(client(n) for n in range(16)))
        return [info for batch in results for info in batch]

    made = run_asyncio(main())
    assert len(made) == 200
    assert len({i.ingress_id for i in made}) == 200
    assert len({i.stream_key for i in made}) == 200

    async def listed(client: api.IngressService) -> list[pb.IngressInfo]:
        items = []
        for room in range(5):
            items += (await client.list_ingress(pb.ListIngressRequest(
                room_name=f"conc-{room}"))).items
        return items

    stored = service.api(listed)
    assert sorted(i.SerializeToString() for i in stored) == sorted(
        i.SerializeToString() for i in made)
    assert service.alive
