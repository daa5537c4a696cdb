"""Fuzz harness for the sans-IO psrpc core (relay/psrpc/): what Redis may deliver.

Byte 0 picks the channel (mod 4), the rest is one Redis message on it:

* 0 ``req``: a server's REQ channels (``IngressInternal|StartIngress|REQ``, then the same
  bytes on ``IngressInternal|ListActiveIngress|REQ``);
* 1 ``rclaim``: the server's ``IngressInternal|StartIngress|RCLAIM``;
* 2 ``claim``: the client's ``IngressInternal|CLI_...|CLAIM``;
* 3 ``res``: the client's ``IngressInternal|CLI_...|RES``.

Before it, a fixed exchange leaves state for the message to meet: the client has three
requests (REQ_000000000001 StartIngress selecting, ...002 ListActiveIngress collecting,
...003 StartIngress waiting for SRV_fuzzserver0001's response); the server holds ...001
claimed and ...002 with the handler. Events the message causes are answered as a program
would (``claim`` with affinity 0.7, ``respond`` with an empty response).

Oracle (raises OracleFailure, i.e. a crash): ``receive`` raises only
PsrpcProtocolError, with a printable one-line message of at most 1200 characters; every
returned item is an event/action type of the API; every Publish is on a channel made only
of ``[0-9A-Za-z_+|]`` and its payload decodes as the type its channel suffix says; the
server and client never hold more than their bounds; ticking to the end of time leaves
both empty (``pending == 0``, no deadline) and by then each of the client's three
requests has ended exactly once (a Result, or MultiDone after its MultiReplys); after
that a fresh GetIngressInfo-style exchange through the same objects still completes.
Optionally a tracemalloc bound (FUZZ_MEMCHECK=1).

Run: ``python fuzz/run.py psrpc --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import OracleFailure, expect, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.psrpc"])
      if atheris and __name__ == "__main__" else nullcontext()):
    from livekit.protocol import ingress as lk

    from relay import psrpc

MODES = ("req", "rclaim", "claim", "res")
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_LIMIT = 4 * 1024 * 1024

MS = 1_000_000
T0 = 1_780_000_000 * 1_000_000_000
NOW = T0 + 200 * MS  # when the fuzz message arrives
END = (1 << 63) - 1  # past every int64 expiry
SERVICE = "IngressInternal"
SERVER_ID = "SRV_fuzzserver0001"
CLIENT_ID = "CLI_fuzzclient0001"
RID = [f"REQ_{n:012d}" for n in (1, 2, 3)]
CHANNELS = {
    "req": ("IngressInternal|StartIngress|REQ", "IngressInternal|ListActiveIngress|REQ"),
    "rclaim": ("IngressInternal|StartIngress|RCLAIM",),
    "claim": (f"IngressInternal|{CLIENT_ID}|CLAIM",),
    "res": (f"IngressInternal|{CLIENT_ID}|RES",),
}
SUFFIX_TYPES = {"|REQ": psrpc.Request, "|RCLAIM": psrpc.ClaimResponse,
                "|CLAIM": psrpc.ClaimRequest, "|RES": psrpc.Response}
CHANNEL_CHARS = re.compile(r"[0-9A-Za-z_+|]+")
SERVER_TYPES = (psrpc.Publish, psrpc.AffinityWanted, psrpc.HandleRequest, psrpc.CallTimedOut)
CLIENT_TYPES = (psrpc.Publish, psrpc.Result, psrpc.MultiReply, psrpc.MultiDone)


def start_request() -> Any:
    return psrpc.StartIngressRequest(token="t", ws_url="ws://lk")


class World:
    """One server and one client of IngressInternal, with the fixed state before the
    fuzz message, and the book of how each of the client's requests ended."""

    def __init__(self) -> None:
        ids = iter(RID + [f"REQ_fresh{n:07d}" for n in range(100)])
        self.server = psrpc.RpcServer(SERVICE, SERVER_ID)
        self.server.register(psrpc.START_INGRESS)
        self.server.register(psrpc.LIST_ACTIVE_INGRESS)
        self.client = psrpc.RpcClient(SERVICE, CLIENT_ID, request_ids=lambda: next(ids))
        self.ended: dict[str, int] = {}
        self.replies: dict[str, int] = {}
        first = self.request(psrpc.START_INGRESS, start_request())
        multi = self.request(psrpc.LIST_ACTIVE_INGRESS, psrpc.ListActiveIngressRequest())
        self.request(psrpc.START_INGRESS, start_request())  # ...003: claimed by hand below
        self.server_in(first, T0)  # ...001: AffinityWanted -> claimed
        self.server_in(multi, T0)  # ...002: with the handler, unanswered
        claim = psrpc.ClaimRequest(request_id=RID[2], server_id=SERVER_ID, affinity=0.5)
        self.client_events(self.client.receive(CHANNELS["claim"][0], psrpc.encode(claim), T0))
        self.client_events(self.client.tick(NOW))  # ...003 chosen: waiting
        expect(self.client.pending == 3 and self.server.pending == 2, "setup")

    def request(self, method: psrpc.Method, body: Any) -> psrpc.Publish:
        _, events = self.client.request(method, body, T0)
        return only(events, psrpc.Publish, "setup request")

    def server_in(self, publish: psrpc.Publish, now: int) -> None:
        self.server_events(self.server.receive(publish.channel, publish.payload, now), now)

    def server_events(self, events: Sequence[object], now: int) -> None:
        for event in events:
            expect(isinstance(event, SERVER_TYPES), f"server returned {event!r:.200}")
            if isinstance(event, psrpc.Publish):
                check_publish(event)
            elif isinstance(event, psrpc.AffinityWanted):
                self.server_events(self.server.claim(event.call.request_id, 0.7, now), now)
            elif isinstance(event, psrpc.HandleRequest) and event.call.request_id != RID[1]:
                answer = event.call.method.response_type()
                self.server_events(self.server.respond(event.call.request_id, answer, now), now)
        expect(self.server.pending <= self.server.max_calls, "server over its bound")

    def client_events(self, events: Sequence[object]) -> Sequence[object]:
        for event in events:
            expect(isinstance(event, CLIENT_TYPES), f"client returned {event!r:.200}")
            if isinstance(event, psrpc.Publish):
                check_publish(event)
            elif isinstance(event, psrpc.Result | psrpc.MultiDone):
                self.ended[event.request_id] = self.ended.get(event.request_id, 0) + 1
                expect(self.ended[event.request_id] == 1, f"{event.request_id} ended twice")
            elif isinstance(event, psrpc.MultiReply):
                expect(event.request_id == RID[1] and RID[1] not in self.ended,
                       f"reply out of place: {event!r:.200}")
        expect(self.client.pending <= self.client.max_requests, "client over its bound")
        return events


def check_publish(publish: psrpc.Publish) -> None:
    expect(bool(CHANNEL_CHARS.fullmatch(publish.channel)),
           f"unescaped channel {publish.channel!r:.300}")
    for suffix, message_type in SUFFIX_TYPES.items():
        if publish.channel.endswith(suffix):
            try:
                psrpc.decode(publish.payload, message_type)
            except psrpc.PsrpcProtocolError as exc:
                raise OracleFailure(f"our own {suffix} message does not decode: {exc}") from exc
            return
    raise OracleFailure(f"publish on an unknown kind of channel {publish.channel!r:.300}")


def protocol_error(exc: Exception) -> None:
    if not isinstance(exc, psrpc.PsrpcProtocolError):
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc!s:.300}") from exc
    message = str(exc)
    expect(bool(message) and message.isprintable() and len(message) <= 1200,
           f"error message: {message!r:.300}")


def only(events: Sequence[object], kind: type, step: str) -> Any:
    expect(len(events) == 1 and isinstance(events[0], kind),
           f"fresh exchange, {step}: {events!r:.300}")
    return events[0]


def fresh_exchange(world: World) -> None:
    """The objects still work: a new StartIngress goes request -> claim -> choice ->
    response -> Result."""
    now = T0 + 10_000 * MS
    server, client = world.server, world.client
    rid, events = client.request(psrpc.START_INGRESS, start_request(), now)
    sent = only(events, psrpc.Publish, "request")
    only(server.receive(sent.channel, sent.payload, now), psrpc.AffinityWanted, "receive")
    sent = only(server.claim(rid, 1.0, now), psrpc.Publish, "claim")
    expect(client.receive(sent.channel, sent.payload, now) == [], "claim answered early")
    sent = only(client.tick(now + 200 * MS), psrpc.Publish, "choice")
    only(server.receive(sent.channel, sent.payload, now), psrpc.HandleRequest, "chosen")
    sent = only(server.respond(rid, None, now), psrpc.Publish, "respond")
    result = client.receive(sent.channel, sent.payload, now)
    expect(result == [psrpc.Result(rid, lk.IngressInfo())], f"fresh exchange: {result!r:.300}")


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode = MODES[data[0] % len(MODES)]
    payload = data[1:]
    with memory_bound(MEM_LIMIT if MEMCHECK else None):
        world = World()
        for channel in CHANNELS[mode]:
            try:
                if mode in ("req", "rclaim"):
                    world.server_events(world.server.receive(channel, payload, NOW), NOW)
                else:
                    world.client_events(world.client.receive(channel, payload, NOW))
            except OracleFailure:
                raise
            except Exception as exc:
                protocol_error(exc)
        world.server_events(world.server.tick(END), END)
        world.client_events(world.client.tick(END))
        expect(world.server.pending == 0 and world.server.next_deadline() is None,
               f"server holds {world.server.pending} at the end of time")
        expect(world.client.pending == 0 and world.client.next_deadline() is None,
               f"client holds {world.client.pending} at the end of time")
        expect(world.ended == dict.fromkeys(RID, 1), f"requests ended: {world.ended}")
        fresh_exchange(world)


def main() -> None:
    libfuzzer_main(atheris, "psrpc", run_one)


if __name__ == "__main__":
    main()
