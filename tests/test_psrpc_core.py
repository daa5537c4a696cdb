"""The sans-IO psrpc core (relay/psrpc/): messages byte for byte as Go marshals them,
channel names as livekit-server 1.13.5 was seen using them, and the claim protocol between
a client and servers wired together in memory (no Redis), time passed in by hand."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from livekit.protocol import ingress as lk

from relay import psrpc
from tests.test_layout import graph

MS = 1_000_000
T0 = 1_780_000_000 * 1_000_000_000  # unix ns


def counter(prefix: str) -> Callable[[], str]:
    """Deterministic request ids."""
    n = iter(range(1, 10_000))
    return lambda: f"{prefix}{next(n):012d}"


# -- messages -----------------------------------------------------------------------------

GO_FIELDS = {  # psrpc internal/internal.proto; protocol rpc/ingress.proto, rpc/io.proto
    psrpc.Msg: ("internal.Msg", {"type_url": 1, "value": 2, "channel": 3}),
    psrpc.ChannelMsg: ("internal.Channel", {"channel": 3}),
    psrpc.Request: ("internal.Request", {"request_id": 1, "client_id": 2, "sent_at": 3,
                                         "expiry": 4, "multi": 5, "request": 6, "metadata": 7,
                                         "raw_request": 8}),
    psrpc.Response: ("internal.Response", {"request_id": 1, "server_id": 2, "sent_at": 3,
                                           "response": 4, "error": 5, "code": 6,
                                           "raw_response": 7, "error_details": 8}),
    psrpc.ClaimRequest: ("internal.ClaimRequest",
                         {"request_id": 1, "server_id": 2, "affinity": 3}),
    psrpc.ClaimResponse: ("internal.ClaimResponse", {"request_id": 1, "server_id": 2}),
    psrpc.StartIngressRequest: ("rpc.StartIngressRequest", {
        "info": 1, "token": 2, "ws_url": 3, "logging_fields": 4, "feature_flags": 5}),
    psrpc.ListActiveIngressRequest: ("rpc.ListActiveIngressRequest", {}),
    psrpc.ListActiveIngressResponse: ("rpc.ListActiveIngressResponse",
                                      {"ingress_ids": 1, "ingress_sessions": 2}),
    psrpc.IngressSession: ("rpc.IngressSession", {"ingress_id": 1, "resource_id": 2}),
    psrpc.DeleteWHIPResourceRequest: ("rpc.DeleteWHIPResourceRequest",
                                      {"resource_id": 1, "stream_key": 2}),
    psrpc.ICERestartWHIPResourceRequest: ("rpc.ICERestartWHIPResourceRequest", {
        "resource_id": 1, "stream_key": 2, "user_fragment": 3, "password": 4, "candidates": 5,
        "raw_trickle_ice_sdpfrag": 6, "if_match": 7}),
    psrpc.ICERestartWHIPResourceResponse: ("rpc.ICERestartWHIPResourceResponse",
                                           {"trickle_ice_sdpfrag": 1, "etag": 2}),
    psrpc.WHIPRTCConnectionNotifyRequest: ("rpc.WHIPRTCConnectionNotifyRequest", {
        "participant_id": 1, "closed": 2, "video": 3, "audio": 4}),
    psrpc.KillIngressSessionRequest: ("rpc.KillIngressSessionRequest", {"session": 1}),
    psrpc.CreateIngressResponse: ("rpc.CreateIngressResponse", {"info": 1}),
    psrpc.GetIngressInfoRequest: ("rpc.GetIngressInfoRequest", {"ingress_id": 1, "stream_key": 2}),
    psrpc.GetIngressInfoResponse: ("rpc.GetIngressInfoResponse", {
        "info": 1, "token": 2, "ws_url": 3, "project_id": 6, "logging_fields": 4,
        "feature_flags": 5}),
    psrpc.UpdateIngressStateRequest: ("rpc.UpdateIngressStateRequest",
                                      {"ingress_id": 1, "state": 2}),
}


@pytest.mark.parametrize("cls", list(GO_FIELDS), ids=lambda c: c.DESCRIPTOR.full_name)
def test_names_and_field_numbers(cls: type) -> None:
    full_name, fields = GO_FIELDS[cls]
    assert cls.DESCRIPTOR.full_name == full_name
    assert {f.name: f.number for f in cls.DESCRIPTOR.fields} == fields


def test_livekit_fields_are_livekit_protocol_classes() -> None:
    start = psrpc.StartIngressRequest(info=lk.IngressInfo(ingress_id="IN_x"))
    assert type(start.info) is lk.IngressInfo
    assert type(psrpc.UpdateIngressStateRequest().state) is lk.IngressState
    assert psrpc.GetIngressInfoResponse.DESCRIPTOR.fields_by_name["feature_flags"] \
        .message_type.GetOptions().map_entry


def s(text: str) -> bytes:
    """A length-delimited string body: length byte + UTF-8 (all short here)."""
    raw = text.encode()
    assert len(raw) < 128
    return bytes([len(raw)]) + raw


def varint(n: int) -> bytes:
    """Base 128, least significant group first, high bit = more."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


# Vectors from the Go definitions: tag = field << 3 | wire type (0 varint, 2 bytes,
# 5 fixed32), fields in number order, proto3 zero values omitted.
VECTORS = [
    (psrpc.ClaimRequest(request_id="REQ_abcdefghijkl", server_id="SRV_mnopqrstuvwx",
                        affinity=0.5),
     b"\x0a" + s("REQ_abcdefghijkl") + b"\x12" + s("SRV_mnopqrstuvwx") + b"\x1d\x00\x00\x00\x3f"),
    (psrpc.ClaimRequest(request_id="R", server_id="S", affinity=1.0),
     b"\x0a\x01R\x12\x01S\x1d\x00\x00\x80\x3f"),
    (psrpc.ClaimResponse(request_id="R", server_id="S"), b"\x0a\x01R\x12\x01S"),
    (psrpc.Request(request_id="REQ_1", client_id="CLI_1", sent_at=1, expiry=300, multi=True,
                   metadata={"k": "v"}, raw_request=b"\x12\x01k"),
     b"\x0a" + s("REQ_1") + b"\x12" + s("CLI_1") + b"\x18\x01" + b"\x20\xac\x02" + b"\x28\x01"
     + b"\x3a\x06\x0a\x01k\x12\x01v" + b"\x42\x03\x12\x01k"),
    (psrpc.Request(sent_at=T0, expiry=-1), b"\x18" + varint(T0) + b"\x20" + b"\xff" * 9 + b"\x01"),
    (psrpc.Response(request_id="R", server_id="S", sent_at=150, error="nope", code="not_found"),
     b"\x0a\x01R\x12\x01S\x18\x96\x01\x2a" + s("nope") + b"\x32" + s("not_found")),
    (psrpc.Response(request_id="R", raw_response=b"\x0a\x00"), b"\x0a\x01R\x3a\x02\x0a\x00"),
    (psrpc.GetIngressInfoRequest(stream_key="abc"), b"\x12\x03abc"),
    (psrpc.GetIngressInfoResponse(token="t", project_id="p"), b"\x12\x01t\x32\x01p"),
    (psrpc.UpdateIngressStateRequest(ingress_id="IN_x", state=lk.IngressState(
        status=lk.IngressState.ENDPOINT_PUBLISHING, room_id="r")),
     b"\x0a" + s("IN_x") + b"\x12\x05" + b"\x08\x02" + b"\x2a\x01r"),
    (psrpc.StartIngressRequest(info=lk.IngressInfo(ingress_id="IN_x"), token="t",
                               ws_url="ws://h"),
     b"\x0a\x06\x0a" + s("IN_x") + b"\x12\x01t\x1a" + s("ws://h")),
    (psrpc.ListActiveIngressResponse(ingress_sessions=[psrpc.IngressSession(
        ingress_id="IN_a", resource_id="RS_b")]),
     b"\x12\x0c\x0a" + s("IN_a") + b"\x12" + s("RS_b")),
    (psrpc.DeleteWHIPResourceRequest(resource_id="RS_1", stream_key="k"),
     b"\x0a" + s("RS_1") + b"\x12\x01k"),
    (psrpc.WHIPRTCConnectionNotifyRequest(participant_id="PA_1", closed=True),
     b"\x0a" + s("PA_1") + b"\x10\x01"),
    (psrpc.ListActiveIngressRequest(), b""),
]


@pytest.mark.parametrize(("message", "wire"), VECTORS,
                         ids=lambda v: v.DESCRIPTOR.name if hasattr(v, "DESCRIPTOR") else "")
def test_bytes_match_go_encoding(message: Message, wire: bytes) -> None:
    assert message.SerializeToString() == wire
    again = type(message)()
    again.ParseFromString(wire)
    assert again == message


def test_envelope_is_an_any_with_the_full_name() -> None:
    claim = psrpc.ClaimResponse(request_id="R", server_id="S")
    url = b"type.googleapis.com/internal.ClaimResponse"
    value = b"\x0a\x01R\x12\x01S"
    assert psrpc.encode(claim) == b"\x0a" + bytes([len(url)]) + url + b"\x12\x06" + value
    assert psrpc.decode(psrpc.encode(claim), psrpc.ClaimResponse) == claim
    # Go resolves by the name after the last '/', and discards unknown fields (channel)
    other = psrpc.Msg(type_url="x/y/internal.ClaimResponse", value=value, channel="c")
    assert psrpc.decode(other.SerializeToString(), psrpc.ClaimResponse) == claim


@pytest.mark.parametrize("message", [m for m, _ in VECTORS] + [
    psrpc.Request(request_id="R", metadata={"a": "1", "b": "2"}),
    psrpc.GetIngressInfoResponse(info=lk.IngressInfo(ingress_id="I", state=lk.IngressState(
        status=lk.IngressState.ENDPOINT_ERROR, error="x")), feature_flags={"f": "on"}),
    empty_pb2.Empty(),
])
def test_envelope_round_trips(message: Message) -> None:
    payload = psrpc.encode(message)
    assert psrpc.decode(payload, type(message), psrpc.Request) == message


@pytest.mark.parametrize(("payload", "why"), [
    (b"\xff\xff", "not a psrpc envelope"),
    (b"\x0a\x05abc", "not a psrpc envelope"),  # truncated
    (psrpc.encode(psrpc.ClaimRequest(request_id="R")), "where internal.Request was expected"),
    (psrpc.Msg(type_url="type.googleapis.com/internal.Request",
               value=b"\x0a\x02\xc3\x28").SerializeToString(), "malformed internal.Request"),
    (psrpc.Msg(type_url="type.googleapis.com/internal.Request",
               value=b"\x08" * 5).SerializeToString(), "malformed internal.Request"),
    (b"\x00" * (psrpc.MAX_PAYLOAD + 1), "limit"),
])
def test_bad_envelopes(payload: bytes, why: str) -> None:
    with pytest.raises(psrpc.PsrpcProtocolError, match=why):
        psrpc.decode(payload, psrpc.Request)


# -- channels and ids -----------------------------------------------------------------------

def test_channel_names_seen_on_livekit_server() -> None:
    """Channels livekit-server 1.13.5 subscribed to (../shared/CLUSTER-NOTES.md)."""
    get_info, update_state = psrpc.GET_INGRESS_INFO, psrpc.UPDATE_INGRESS_STATE
    assert psrpc.claim_response_channel("IOInfo", get_info.name) == "IOInfo|GetIngressInfo|RCLAIM"
    assert psrpc.claim_response_channel("IOInfo", update_state.name) \
        == "IOInfo|UpdateIngressState|RCLAIM"
    assert psrpc.request_channel("IOInfo", "CreateIngress") == "IOInfo|CreateIngress|REQ"
    assert psrpc.claim_response_channel("IOInfo", "CreateIngress") == "IOInfo|CreateIngress|RCLAIM"
    cli = "CLI_aB3dE5fG7hJ9"
    assert psrpc.claim_request_channel("IngressInternal", cli) == f"IngressInternal|{cli}|CLAIM"
    assert psrpc.response_channel("IngressInternal", cli) == f"IngressInternal|{cli}|RES"
    assert psrpc.claim_request_channel("IngressHandler", cli) == f"IngressHandler|{cli}|CLAIM"
    assert psrpc.response_channel("IngressHandler", cli) == f"IngressHandler|{cli}|RES"


def test_channel_topics_and_escaping() -> None:
    assert psrpc.request_channel("IngressInternal", "StartIngress") \
        == "IngressInternal|StartIngress|REQ"
    assert psrpc.request_channel("IngressInternal", "ListActiveIngress", "") \
        == "IngressInternal|ListActiveIngress|REQ"
    assert psrpc.request_channel("IngressHandler", "UpdateIngress", "IN_abc") \
        == "IngressHandler|UpdateIngress|IN_abc|REQ"
    assert psrpc.request_channel("S", "M", ["a", "b"]) == "S|M|a|b|REQ"
    assert psrpc.request_channel("S", "M", ["", "b"]) == "S|M|b|REQ"
    assert psrpc.request_channel("S", "M", ["a", ""]) == "S|M|a||REQ"  # as Go's appendChannelParts
    assert psrpc.sanitize("a-b.c|d") == "au+002dbu+002ecu+007cd"
    assert psrpc.sanitize("é😀_Z9") == "u+00e9U+0001f600_Z9"
    assert psrpc.sanitize("\ud800") == "u+fffd"
    assert psrpc.request_channel("S", "M", "x y") == "S|M|xu+0020y|REQ"


def test_ids() -> None:
    for prefix in ("CLI_", "SRV_", "REQ_"):
        assert re.fullmatch(prefix + "[a-zA-Z0-9]{12}", psrpc.new_id(prefix))
    assert len(set(psrpc.ID_ALPHABET)) == 62


def test_queue_lock_key() -> None:
    # base64 of sha256(b"hello") = 2cf24dba...938b9824
    assert psrpc.queue_lock_key(b"hello") == "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
    assert psrpc.QUEUE_LOCK_TTL_NS == 5_000_000_000


def test_methods_flags() -> None:
    m = psrpc
    assert (m.START_INGRESS.affinity, m.START_INGRESS.claim, m.START_INGRESS.queue) \
        == (True, True, False)
    assert m.LIST_ACTIVE_INGRESS.multi and not m.LIST_ACTIVE_INGRESS.claim
    for method in (m.UPDATE_INGRESS, m.DELETE_INGRESS, m.DELETE_WHIP_RESOURCE,
                   m.ICE_RESTART_WHIP_RESOURCE, m.GET_INGRESS_INFO, m.UPDATE_INGRESS_STATE,
                   m.CREATE_INGRESS):
        assert method.claim and method.queue and not method.affinity and not method.multi
    assert m.WHIP_RTC_CONNECTION_NOTIFY.queue and not m.WHIP_RTC_CONNECTION_NOTIFY.claim


def test_core_imports_no_process_code() -> None:
    for name, deps in graph().items():
        if name.startswith("relay.psrpc"):
            assert not {d for d in deps if d.startswith(("relay.service", "relay.worker",
                                                         "relay.wire", "api"))}, name


# -- the protocol, wired in memory ----------------------------------------------------------

class Bus:
    """Redis pub/sub as psrpc's Redis bus uses it: queue subscribers SET NX the payload's
    key first (one wins per message). Events other than publishes are collected."""

    def __init__(self) -> None:
        self.subs: dict[str, list[tuple[Any, bool]]] = defaultdict(list)
        self.locks: set[str] = set()
        self.events: list[tuple[Any, Any]] = []
        self.published: list[psrpc.Publish] = []

    def subscribe(self, node: Any, actions: Iterable[object]) -> None:
        for action in actions:
            assert isinstance(action, psrpc.Subscribe)
            self.subs[action.channel].append((node, action.queue))

    def run(self, node: Any, actions: Iterable[object], now: int) -> None:
        for action in actions:
            if isinstance(action, psrpc.Publish):
                self.published.append(action)
                for target, queue in list(self.subs[action.channel]):
                    if queue:
                        key = psrpc.queue_lock_key(action.payload)
                        if key in self.locks:
                            continue
                        self.locks.add(key)
                    self.run(target, target.receive(action.channel, action.payload, now), now)
            else:
                self.events.append((node, action))

    def tick(self, nodes: Iterable[Any], now: int) -> None:
        for node in nodes:
            self.run(node, node.tick(now), now)

    def take(self, kind: type) -> list[tuple[Any, Any]]:
        found = [(n, e) for n, e in self.events if isinstance(e, kind)]
        self.events = [(n, e) for n, e in self.events if not isinstance(e, kind)]
        return found


def setup(method: psrpc.Method, servers: int = 2, **register: Any) -> tuple[
        Bus, psrpc.RpcClient, list[psrpc.RpcServer]]:
    bus = Bus()
    client = psrpc.RpcClient(method.service, "CLI_client000001",
                             request_ids=counter("REQ_"))
    bus.subscribe(client, client.subscriptions())
    nodes = []
    for i in range(servers):
        server = psrpc.RpcServer(method.service, f"SRV_server{i:06d}")
        bus.subscribe(server, server.register(method, **register))
        nodes.append(server)
    return bus, client, nodes


def start_request() -> Message:
    return psrpc.StartIngressRequest(info=lk.IngressInfo(ingress_id="IN_url", url="http://x"),
                                     token="tok", ws_url="ws://lk")


def test_affinity_claim_picks_the_highest_after_the_short_circuit() -> None:
    bus, client, (low, high) = setup(psrpc.START_INGRESS)
    assert [a.channel for a in low.register(psrpc.START_INGRESS, "other")] \
        == ["IngressInternal|StartIngress|other|REQ", "IngressInternal|StartIngress|other|RCLAIM"]
    rid, actions = client.request(psrpc.START_INGRESS, start_request(), T0)
    assert actions[0].channel == "IngressInternal|StartIngress|REQ"
    bus.run(client, actions, T0)
    wanted = bus.take(psrpc.AffinityWanted)
    assert [n for n, _ in wanted] == [low, high]
    call = wanted[0][1].call
    assert call.request == start_request() and call.expiry == T0 + 3000 * MS
    assert call.client_id == "CLI_client000001" and call.topic == ()
    bus.run(low, low.claim(rid, 0.5, T0 + 1 * MS), T0 + 1 * MS)
    assert bus.published[-1].channel == "IngressInternal|CLI_client000001|CLAIM"
    bus.run(high, high.claim(rid, 0.9, T0 + 2 * MS), T0 + 2 * MS)
    assert client.next_deadline() == T0 + 201 * MS  # 200 ms after the first claim
    bus.tick([client, low, high], T0 + 200 * MS)
    assert not bus.take(psrpc.HandleRequest) and len(bus.published) == 3
    bus.tick([client, low, high], T0 + 201 * MS)
    choice = bus.published[3]
    assert choice.channel == "IngressInternal|StartIngress|RCLAIM"
    assert psrpc.decode(choice.payload, psrpc.ClaimResponse) == psrpc.ClaimResponse(
        request_id=rid, server_id=high.server_id)
    [(node, _)] = bus.take(psrpc.HandleRequest)
    assert node is high and low.pending == 0
    info = lk.IngressInfo(ingress_id="IN_url", state=lk.IngressState(
        status=lk.IngressState.ENDPOINT_BUFFERING))
    bus.run(high, high.respond(rid, info, T0 + 300 * MS), T0 + 300 * MS)
    assert bus.published[-1].channel == "IngressInternal|CLI_client000001|RES"
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, info))]
    assert client.pending == high.pending == 0 and client.next_deadline() is None


def test_affinity_timeout_without_short_circuit_and_declines() -> None:
    bus, client, (a, b) = setup(psrpc.START_INGRESS)
    rid, actions = client.request(psrpc.START_INGRESS, start_request(), T0)
    bus.run(client, actions, T0)
    bus.take(psrpc.AffinityWanted)
    assert a.claim(rid, -1.0, T0) == [] and a.pending == 0  # declined: no claim
    bus.run(b, b.claim(rid, 0.3, T0 + 900 * MS), T0 + 900 * MS)
    assert client.next_deadline() == T0 + 1000 * MS  # the 1 s selection timeout comes first
    bus.tick([client, a, b], T0 + 1000 * MS)
    assert [n for n, _ in bus.take(psrpc.HandleRequest)] == [b]


def test_no_claims_is_unavailable_no_response_from_servers() -> None:
    bus, client, _ = setup(psrpc.START_INGRESS)
    rid, actions = client.request(psrpc.START_INGRESS, start_request(), T0)
    bus.run(client, actions, T0)
    for server, _ in bus.take(psrpc.AffinityWanted):
        assert server.claim(rid, -1, T0) == []
    bus.tick([client], T0 + 999 * MS)
    assert not bus.take(psrpc.Result)
    bus.tick([client], T0 + 1000 * MS)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, error=psrpc.RpcError(
        "unavailable", "no response from servers")))]


def test_zero_affinity_claims_are_counted_but_never_chosen() -> None:
    bus, client, (a,) = setup(psrpc.START_INGRESS, servers=1)
    rid, actions = client.request(psrpc.START_INGRESS, start_request(), T0)
    bus.run(client, actions, T0)
    bus.run(a, a.claim(rid, 0.0, T0), T0)
    bus.tick([client], T0 + 200 * MS)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, error=psrpc.RpcError(
        "unavailable", "no servers available (received 1 responses)")))]


def test_queue_method_one_server_takes_it_first_claim_wins() -> None:
    bus, client, servers = setup(psrpc.GET_INGRESS_INFO)
    assert [sub[1] for sub in bus.subs["IOInfo|GetIngressInfo|REQ"]] == [True, True]
    rid, actions = client.request(psrpc.GET_INGRESS_INFO,
                                  psrpc.GetIngressInfoRequest(stream_key="key"), T0,
                                  metadata={"trace": "1"})
    bus.run(client, actions, T0)  # the first queue subscriber wins the SET NX, claims with
    [(node, handle)] = bus.take(psrpc.HandleRequest)  # affinity 1, and is chosen at once
    assert node is servers[0] and handle.call.metadata == {"trace": "1"}
    claim = psrpc.decode(bus.published[1].payload, psrpc.ClaimRequest)
    assert claim.affinity == 1.0 and claim.server_id == servers[0].server_id
    answer = psrpc.GetIngressInfoResponse(info=lk.IngressInfo(stream_key="key"), ws_url="ws://x")
    bus.run(node, node.respond(rid, answer, T0 + 5 * MS), T0 + 5 * MS)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, answer))]


def test_error_response_carries_the_psrpc_code() -> None:
    bus, client, (server,) = setup(psrpc.UPDATE_INGRESS_STATE, servers=1)
    rid, actions = client.request(psrpc.UPDATE_INGRESS_STATE, psrpc.UpdateIngressStateRequest(
        ingress_id="IN_gone"), T0)
    bus.run(client, actions, T0)
    bus.take(psrpc.HandleRequest)
    bus.run(server, server.respond(rid, psrpc.RpcError("not_found", "ingress not found"), T0), T0)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, error=psrpc.RpcError(
        "not_found", "ingress not found")))]


def test_empty_response_is_the_empty_message() -> None:
    bus, client, (server,) = setup(psrpc.UPDATE_INGRESS_STATE, servers=1)
    rid, actions = client.request(psrpc.UPDATE_INGRESS_STATE,
                                  psrpc.UpdateIngressStateRequest(), T0)
    bus.run(client, actions, T0)
    bus.take(psrpc.HandleRequest)
    bus.run(server, server.respond(rid, None, T0), T0)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, empty_pb2.Empty()))]


def test_chosen_server_silent_is_deadline_exceeded() -> None:
    bus, client, (server,) = setup(psrpc.DELETE_INGRESS, servers=1, topic="IN_1")
    rid, actions = client.request(psrpc.DELETE_INGRESS, lk.DeleteIngressRequest(
        ingress_id="IN_1"), T0, topic="IN_1", timeout_ns=500 * MS)
    assert actions[0].channel == "IngressHandler|DeleteIngress|IN_1|REQ"
    bus.run(client, actions, T0)
    [(_, handle)] = bus.take(psrpc.HandleRequest)
    assert server.next_deadline() == client.next_deadline() == T0 + 500 * MS
    bus.tick([client, server], T0 + 500 * MS)
    assert bus.take(psrpc.Result) == [(client, psrpc.Result(rid, error=psrpc.RpcError(
        "deadline_exceeded", "request timed out")))]
    assert bus.take(psrpc.CallTimedOut) == [(server, psrpc.CallTimedOut(handle.call))]
    assert server.respond(rid, lk.IngressState(), T0 + 600 * MS) == []


def test_server_drops_expired_requests() -> None:
    _, client, (server,) = setup(psrpc.GET_INGRESS_INFO, servers=1)
    _, [publish] = client.request(psrpc.GET_INGRESS_INFO, psrpc.GetIngressInfoRequest(), T0)
    assert server.receive(publish.channel, publish.payload, T0 + 3000 * MS) == []
    assert server.dropped == 1 and server.pending == 0
    assert server.receive(publish.channel, publish.payload, T0)
    assert server.receive(publish.channel, publish.payload, T0) == []
    assert server.dropped == 2  # the same request twice


def test_claim_for_another_server_drops_the_request() -> None:
    _, client, (server,) = setup(psrpc.GET_INGRESS_INFO, servers=1)
    rid, [publish] = client.request(psrpc.GET_INGRESS_INFO, psrpc.GetIngressInfoRequest(), T0)
    server.receive(publish.channel, publish.payload, T0)
    other = psrpc.encode(psrpc.ClaimResponse(request_id=rid, server_id="SRV_someoneelse"))
    assert server.receive("IOInfo|GetIngressInfo|RCLAIM", other, T0) == []
    assert server.pending == 0


def test_malformed_request_body_is_answered_malformed_request() -> None:
    bus, client, servers = setup(psrpc.START_INGRESS)
    rid, [publish] = client.request(psrpc.START_INGRESS, start_request(), T0)
    request = psrpc.decode(publish.payload, psrpc.Request)
    request.raw_request = b"\x0a\x05ab"  # truncated
    bus.run(client, [psrpc.Publish(publish.channel, psrpc.encode(request))], T0)
    answers = [p for p in bus.published if p.channel.endswith("|RES")]
    assert len(answers) == 2  # every (non-queue) server answers it, none claims
    response = psrpc.decode(answers[0].payload, psrpc.Response)
    assert response.code == "malformed_request" and response.error
    assert not bus.take(psrpc.AffinityWanted) and all(s.pending == 0 for s in servers)
    bus.tick([client], T0 + 1000 * MS)
    [(_, result)] = bus.take(psrpc.Result)
    assert result.request_id == rid
    assert result.error.code == "malformed_request"


def test_malformed_response_body_is_malformed_result() -> None:
    client = psrpc.RpcClient("IngressHandler", "CLI_x")
    rid, _ = client.request(psrpc.WHIP_RTC_CONNECTION_NOTIFY,
                            psrpc.WHIPRTCConnectionNotifyRequest(), T0, topic="PA_1")
    bad = psrpc.Response(request_id=rid, raw_response=b"\x0a\x05ab")
    [result] = client.receive("IngressHandler|CLI_x|RES", psrpc.encode(bad), T0)
    assert result.error.code == "malformed_result"


def test_multi_collects_every_reply_until_the_timeout() -> None:
    bus, client, servers = setup(psrpc.LIST_ACTIVE_INGRESS, topic="")
    rid, actions = client.request(psrpc.LIST_ACTIVE_INGRESS, psrpc.ListActiveIngressRequest(), T0)
    assert actions[0].channel == "IngressInternal|ListActiveIngress|REQ"
    assert psrpc.decode(actions[0].payload, psrpc.Request).multi
    bus.run(client, actions, T0)
    handles = bus.take(psrpc.HandleRequest)
    assert len(handles) == 2
    for i, (server, _) in enumerate(handles):
        answer = psrpc.ListActiveIngressResponse(ingress_sessions=[psrpc.IngressSession(
            ingress_id=f"IN_{i}", resource_id=f"RS_{i}")])
        bus.run(server, server.respond(rid, answer, T0 + MS), T0 + MS)
    replies = bus.take(psrpc.MultiReply)
    assert [r.server_id for _, r in replies] == [s.server_id for s in servers]
    assert replies[1][1].response.ingress_sessions[0].ingress_id == "IN_1"
    bus.tick([client], T0 + 3000 * MS - 1)
    assert not bus.take(psrpc.MultiDone)
    bus.tick([client], T0 + 3000 * MS)
    assert bus.take(psrpc.MultiDone) == [(client, psrpc.MultiDone(rid))]


# -- malformed input and bounds -----------------------------------------------------------------

GARBAGE = [b"", b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x03abc",
           psrpc.encode(lk.IngressInfo()), b"\x00" * (psrpc.MAX_PAYLOAD + 1)]


@pytest.mark.parametrize("payload", GARBAGE[1:], ids=range(len(GARBAGE) - 1))
def test_garbage_raises_only_the_protocol_error(payload: bytes) -> None:
    server = psrpc.RpcServer("IOInfo", "SRV_x")
    server.register(psrpc.GET_INGRESS_INFO)
    client = psrpc.RpcClient("IOInfo", "CLI_x")
    for node, channel in ((server, "IOInfo|GetIngressInfo|REQ"),
                          (server, "IOInfo|GetIngressInfo|RCLAIM"),
                          (client, "IOInfo|CLI_x|CLAIM"), (client, "IOInfo|CLI_x|RES")):
        with pytest.raises(psrpc.PsrpcProtocolError):
            node.receive(channel, payload, T0)
    assert server.receive("elsewhere", payload, T0) == []  # unknown channels are ignored


def test_an_empty_message_is_a_valid_empty_envelope_of_no_type() -> None:
    with pytest.raises(psrpc.PsrpcProtocolError, match="type ''"):
        psrpc.RpcClient("IOInfo", "CLI_x").receive("IOInfo|CLI_x|RES", b"", T0)


def test_bounds() -> None:
    server = psrpc.RpcServer("IOInfo", "SRV_x", max_calls=2)
    server.register(psrpc.GET_INGRESS_INFO)
    client = psrpc.RpcClient("IOInfo", "CLI_x", max_requests=2, request_ids=counter("REQ_"))
    for i in range(3):
        rid, actions = client.request(psrpc.GET_INGRESS_INFO, psrpc.GetIngressInfoRequest(), T0)
        if i < 2:
            server.receive(actions[0].channel, actions[0].payload, T0)
    assert actions == [psrpc.Result(rid, error=psrpc.RpcError(
        "resource_exhausted", "too many requests in flight"))]
    extra = psrpc.Request(request_id="REQ_more", client_id="CLI_y", expiry=T0 + 1)
    assert server.receive("IOInfo|GetIngressInfo|REQ", psrpc.encode(extra), T0) == []
    assert server.pending == 2 and server.dropped == 1 and client.pending == 2


def test_misuse_is_a_local_error() -> None:
    server = psrpc.RpcServer("IOInfo", "SRV_x")
    with pytest.raises(ValueError):
        server.register(psrpc.START_INGRESS)
    server.register(psrpc.GET_INGRESS_INFO)
    with pytest.raises(ValueError):
        server.register(psrpc.GET_INGRESS_INFO)
    client = psrpc.RpcClient("IOInfo", "CLI_x")
    with pytest.raises(TypeError):
        client.request(psrpc.GET_INGRESS_INFO, psrpc.StartIngressRequest(), T0)
    rid, [publish] = client.request(psrpc.GET_INGRESS_INFO, psrpc.GetIngressInfoRequest(), T0)
    server.receive(publish.channel, publish.payload, T0)
    with pytest.raises(RuntimeError):  # claimed, not chosen yet
        server.respond(rid, psrpc.GetIngressInfoResponse(), T0)
    assert server.unregister(psrpc.GET_INGRESS_INFO) == [
        psrpc.Unsubscribe("IOInfo|GetIngressInfo|REQ"),
        psrpc.Unsubscribe("IOInfo|GetIngressInfo|RCLAIM")]
    assert server.pending == 0


def test_nan_affinity_declines_and_cancel_forgets() -> None:
    bus, client, (server,) = setup(psrpc.START_INGRESS, servers=1)
    rid, actions = client.request(psrpc.START_INGRESS, start_request(), T0)
    bus.run(client, actions, T0)
    assert server.claim(rid, float("nan"), T0) == [] and server.pending == 0
    client.cancel(rid)
    assert client.pending == 0 and client.tick(T0 + 5000 * MS) == []
    late = psrpc.encode(psrpc.Response(request_id=rid, error="x", code="internal"))
    assert client.receive("IngressInternal|CLI_client000001|RES", late, T0) == []


def test_respond_checks_the_response_type() -> None:
    bus, client, (server,) = setup(psrpc.GET_INGRESS_INFO, servers=1)
    rid, actions = client.request(psrpc.GET_INGRESS_INFO, psrpc.GetIngressInfoRequest(), T0)
    bus.run(client, actions, T0)
    with pytest.raises(TypeError):
        server.respond(rid, lk.IngressInfo(), T0)
    assert server.pending == 1
