"""API replicas (`api_processes: 2`): a second process answers the HTTP listener.

The real service runs in its own process with one replica. To know which process
answers a connection, a test pauses the service process (SIGSTOP) while it
connects: only the replica can accept then, and that keep-alive connection stays
the replica's. ListIngress on it is answered while the service process is still
paused (the replica reads the store itself); everything else on it is handed to
the service process once it runs again.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.protocol import ingress as pb

from relay.replica_link import MAX_FRAME_BYTES, pack
from relay.wire import FrameReader, WireError
from tests.service import ServiceProcess

PREFIX = "/twirp/livekit.Ingress/"
READY = re.compile(r"api replica 1 ready \(pid (\d+)\)")


def replica_pids(service: ServiceProcess) -> list[int]:
    return [int(pid) for pid in READY.findall(service.log())]


def wait_for_replicas(service: ServiceProcess, count: int, timeout: float = 20.0) -> int:
    """The pid of the newest replica, once `count` of them have been ready."""
    deadline = time.monotonic() + timeout
    while len(pids := replica_pids(service)) < count:
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    return pids[-1]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ServiceProcess]:
    # ws_url makes the node take WHIP (no LiveKit server is needed to refuse a key)
    service = ServiceProcess(tmp_path, api_processes=2, ws_url="ws://127.0.0.1:9")
    service.start()
    wait_for_replicas(service, 1)
    yield service
    service.stop()


class Api:
    """Raw calls on one HTTP/1.1 connection: the process that accepted it answers."""

    def __init__(self, service: ServiceProcess) -> None:
        host, port = service.url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.token = service.token()

    def call(self, method: str, request: object, response_type: type | None = None,
             ) -> tuple[int, object]:
        body = request.SerializeToString()  # type: ignore[attr-defined]
        status, data = self.http("POST", PREFIX + method, body, {
            "Authorization": "Bearer " + self.token, "Content-Type": "application/protobuf"})
        if status != 200 or response_type is None:
            return status, json.loads(data) if status != 200 else data
        return status, response_type.FromString(data)

    def http(self, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()


def on_replica(service: ServiceProcess) -> Api:
    """A connection the replica accepted: made while the service process is paused,
    and proved by a ListIngress answered before it runs again."""
    assert service.proc is not None
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        api = Api(service)
        status, _ = api.call("ListIngress", pb.ListIngressRequest(room_name="nobody"))
        assert status == 200
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    return api


def test_the_replica_lists_alone_and_hands_writes_to_the_service(
        replicated: ServiceProcess) -> None:
    existing = pb.CreateIngressRequest(input_type=pb.IngressInput.RTMP_INPUT,
                                       room_name="shared", participant_identity="first")
    _, first = Api(replicated).call("CreateIngress", existing, pb.IngressInfo)
    api = on_replica(replicated)

    # a write on the replica's connection is made by the service process (its log
    # says so) and is in the very next list the replica answers
    _, second = api.call("CreateIngress", pb.CreateIngressRequest(
        input_type=pb.IngressInput.WHIP_INPUT, room_name="shared",
        participant_identity="second"), pb.IngressInfo)
    assert f"created ingress {second.ingress_id}" in replicated.log()
    _, listed = api.call("ListIngress", pb.ListIngressRequest(room_name="shared"),
                         pb.ListIngressResponse)
    assert [i.ingress_id for i in listed.items] == [first.ingress_id, second.ingress_id]
    assert listed.items[1] == second

    _, updated = api.call("UpdateIngress", pb.UpdateIngressRequest(
        ingress_id=second.ingress_id, name="renamed"), pb.IngressInfo)
    assert updated.name == "renamed"
    _, listed = api.call("ListIngress", pb.ListIngressRequest(room_name="shared"),
                         pb.ListIngressResponse)
    assert listed.items[1].name == "renamed"

    # refusals come back with the service process's code and text
    status, error = api.call("UpdateIngress", pb.UpdateIngressRequest(ingress_id="IN_nope"))
    assert (status, error) == (404, {"code": "not_found", "msg": "ingress does not exist"})
    status, error = api.call("CreateIngress", pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT))
    assert status == 400 and error["code"] == "invalid_argument"

    # JSON (livekit-server-sdk's encoding) through the replica: the created ingress
    # comes back in protojson, as the service process itself answers
    status, body = api.http("POST", PREFIX + "CreateIngress", json.dumps({
        "inputType": "WHIP_INPUT", "roomName": "shared", "participantIdentity": "json"}
    ).encode(), {"Authorization": "Bearer " + api.token, "Content-Type": "application/json"})
    created = json.loads(body)
    assert status == 200 and created["input_type"] == "WHIP_INPUT", created
    assert created["ingress_id"].startswith("IN_") and created["state"]["status"] == \
        "ENDPOINT_INACTIVE"
    api.call("DeleteIngress", pb.DeleteIngressRequest(ingress_id=created["ingress_id"]))

    _, deleted = api.call("DeleteIngress", pb.DeleteIngressRequest(
        ingress_id=first.ingress_id), pb.IngressInfo)
    assert deleted.ingress_id == first.ingress_id
    _, listed = api.call("ListIngress", pb.ListIngressRequest(room_name="shared"),
                         pb.ListIngressResponse)
    assert [i.ingress_id for i in listed.items] == [second.ingress_id]


def test_the_replica_hands_on_whip_and_operations(replicated: ServiceProcess) -> None:
    api = on_replica(replicated)
    assert api.http("GET", "/") == (200, b"Healthy")
    assert api.http("GET", "/availability") == (200, b"Available")
    status, body = api.http("POST", "/w/no-such-key", b"v=0\r\n",
                            {"Content-Type": "application/sdp"})
    assert status == 404 and b"stream key" in body.lower(), body
    # an offer over WHIP's 64 KiB limit: refused as the service process refuses it
    api.conn.request("POST", "/w/no-such-key", body=b"v=0\r\n" + b"a" * (70 << 10),
                     headers={"Content-Type": "application/sdp"})
    response = api.conn.getresponse()
    assert (response.status, response.read()) == (413, b"body too large\n")
    assert response.getheader("access-control-allow-origin") == "*"
    api.conn.request("OPTIONS", "/w/any")
    response = api.conn.getresponse()
    response.read()
    assert response.status == 204
    assert response.getheader("access-control-allow-origin") == "*"
    assert response.getheader("accept-post") == "application/sdp"
    status, _ = api.http("GET", "/no-such-page")
    assert status == 404

    # the replica's calls are counted in the service process's /metrics
    def listed_ok(text: str) -> float:
        match = re.search(r'ingress_relay_api_requests_total\{code="ok",method="ListIngress"\}'
                          r" (\S+)", text)
        return float(match.group(1)) if match else 0.0

    for _ in range(5):
        api.call("ListIngress", pb.ListIngressRequest(room_name="counted"))
    deadline = time.monotonic() + 5
    while listed_ok(api.http("GET", "/metrics")[1].decode()) < 6:  # on_replica's one too
        assert time.monotonic() < deadline, "the replica's calls never reached /metrics"
        time.sleep(0.2)


def test_a_replica_that_dies_is_replaced_and_nothing_else_notices(
        replicated: ServiceProcess) -> None:
    first = replica_pids(replicated)[0]
    api = on_replica(replicated)
    os.kill(first, signal.SIGKILL)
    with pytest.raises((http.client.HTTPException, OSError)):
        api.call("ListIngress", pb.ListIngressRequest(room_name="x"))
    # the service process answers every call meanwhile, on new connections
    for i in range(20):
        status, _ = Api(replicated).call("CreateIngress", pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name="after", name=f"n{i}",
                participant_identity=f"p{i}"))
        assert status == 200
    second = wait_for_replicas(replicated, 2)
    assert second != first and replicated.alive
    assert f"api replica 1 (pid {first}) exited" in replicated.log()
    _, listed = on_replica(replicated).call(
        "ListIngress", pb.ListIngressRequest(room_name="after"), pb.ListIngressResponse)
    assert len(listed.items) == 20
    # one that dies young again waits twice as long (no respawn loop at full speed)
    os.kill(second, signal.SIGKILL)
    third = wait_for_replicas(replicated, 3)
    assert f"api replica 1 (pid {first}) exited with -9; starting another in 1 s" in \
        replicated.log()
    assert f"api replica 1 (pid {second}) exited with -9; starting another in 2 s" in \
        replicated.log()
    assert third not in (first, second)


def test_replicas_leave_with_the_service_process(replicated: ServiceProcess) -> None:
    """Even killed outright, the service process takes its replicas along: their link
    closes, and none keeps accepting on the port."""
    replica = replica_pids(replicated)[0]
    assert replicated.proc is not None
    replicated.proc.kill()
    replicated.proc.wait()
    deadline = time.monotonic() + 5
    while _running(replica):
        assert time.monotonic() < deadline, "the replica outlived the service process"
        time.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        Api(replicated).call("ListIngress", pb.ListIngressRequest())


def test_official_client_reads_its_writes_whichever_process_answers(
        replicated: ServiceProcess) -> None:
    """livekit-api, a new connection per call: each create is in the next list."""
    made: list[str] = []
    for i in range(12):
        info = replicated.api(lambda ingress, i=i: ingress.create_ingress(
            pb.CreateIngressRequest(input_type=pb.IngressInput.RTMP_INPUT,
                                    room_name="ryw", name=f"n{i}",
                                    participant_identity=f"p{i}")))
        made.append(info.ingress_id)
        listed = replicated.api(lambda ingress: ingress.list_ingress(
            pb.ListIngressRequest(room_name="ryw")))
        assert [i.ingress_id for i in listed.items] == made


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_link_frames_are_bounded_and_checked() -> None:
    data = pack(1, "create", [b"x" * 100, "req"]) + pack(0, "metrics", [[]])
    reader, frames = FrameReader(1024), []
    for i in range(len(data)):  # byte by byte
        reader.receive_data(data[i:i + 1])
        frames += list(reader.frames())
    assert frames == [[1, "create", [b"x" * 100, "req"]], [0, "metrics", [[]]]]
    with pytest.raises(WireError):
        FrameReader(1024).receive_data(pack(1, "create", [b"x" * 4096]))
    with pytest.raises(WireError):
        FrameReader(MAX_FRAME_BYTES).receive_data(b"\xc6" + (64 << 20).to_bytes(4, "big")
                                                  + b"x" * (17 << 20))
    garbage = FrameReader()
    garbage.receive_data(b"\xc1")  # a byte msgpack never uses
    with pytest.raises(WireError):
        list(garbage.frames())


async def test_link_calls_answers_refusals_and_a_gone_service() -> None:
    """The link on a socketpair, both ends in this process."""
    import socket

    import trio

    from api.errors import TwirpError
    from relay.api_replica import ForwardingApp
    from relay.replica_link import LinkClient, serve_link

    async def handle(op: str, args: list) -> object:
        if op == "echo":
            await trio.sleep(0.01 * args[1])  # answers may come back out of order
            return args[0]
        if op == "refuse":
            raise TwirpError("not_found", "ingress does not exist")
        raise RuntimeError("boom")

    ours, theirs = socket.socketpair()
    service_end = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    client = LinkClient(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
    service_scope = trio.CancelScope()

    async def service() -> None:
        with service_scope:
            await serve_link(service_end, {"index": 1}, handle)
        await service_end.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(service)
        assert await nursery.start(client.run) == {"index": 1}
        answers: dict[int, object] = {}

        async def echo(i: int) -> None:
            answers[i] = await client.call("echo", b"x" * i, 5 - i)

        async with trio.open_nursery() as calls:
            for i in range(5):
                calls.start_soon(echo, i)
        assert answers == {i: b"x" * i for i in range(5)}
        with pytest.raises(TwirpError) as refused:
            await client.call("refuse")
        assert (refused.value.code, refused.value.msg) == ("not_found",
                                                           "ingress does not exist")
        with pytest.raises(TwirpError) as failed:
            await client.call("explode")
        assert (failed.value.code, failed.value.msg) == ("internal", "internal error")

        service_scope.cancel()  # the service process goes away
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await trio.sleep(0.05)
        await ForwardingApp(None, client)({"type": "http", "method": "GET", "path": "/",
                                          "query_string": b"", "headers": []}, receive, send)
        assert sent[0]["status"] == 503
        assert sent[1]["body"] == b"the service process is not reachable\n"
        nursery.cancel_scope.cancel()


def test_bad_input_to_the_replica_gets_clean_twirp_errors(replicated: ServiceProcess) -> None:
    """The robustness cases of test_api_robustness, each on a replica connection; the
    replica stays up and serves the next."""
    from tests.test_api_robustness import bad_requests

    replica = replica_pids(replicated)[0]
    for name, target, headers, body, status, code in bad_requests(replicated):
        method, path = target.split(" ", 1)
        got_status, payload = on_replica(replicated).http(method, path, body, headers)
        assert (got_status, json.loads(payload)["code"]) == (status, code), name
    assert replica_pids(replicated) == [replica] and _running(replica)
