"""relay/service/cluster/server_api.py (a worker's console calling the LiveKit
server's Ingress API) against a real Twirp peer: this project's own standalone
service, which answers livekit.Ingress as the LiveKit server does."""

from __future__ import annotations

import pytest
import trio
from livekit.protocol import ingress as pb

from api.errors import TwirpError
from relay.service.cluster.server_api import ServerIngressApi, _refusal
from tests.livekit import free_port
from tests.service import ServiceProcess


def client(service: ServiceProcess, secret: str | None = None) -> ServerIngressApi:
    return ServerIngressApi(service.url.replace("http://", "ws://"), service.api_key,
                            secret or service.api_secret)


async def test_create_list_update_delete(service: ServiceProcess) -> None:
    server = client(service)
    info = await server.create(pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, name="n", room_name="r",
        participant_identity="p"))
    assert info.ingress_id.startswith("IN_") and info.stream_key
    listed = await server.list(pb.ListIngressRequest(room_name="r"))
    assert [i.ingress_id for i in listed.items] == [info.ingress_id]
    renamed = await server.update(pb.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                         name="renamed"))
    assert renamed.name == "renamed"
    await server.delete(pb.DeleteIngressRequest(ingress_id=info.ingress_id))
    assert not (await server.list(pb.ListIngressRequest(room_name="r"))).items


async def test_refusals_are_the_servers_twirp_errors(service: ServiceProcess) -> None:
    with pytest.raises(TwirpError) as invalid:
        await client(service).create(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name="r"))
    assert (invalid.value.code, invalid.value.msg) == (
        "invalid_argument", "invalid ingress: no participant identity")
    with pytest.raises(TwirpError) as denied:
        await client(service, "not-the-secret" * 3).list(pb.ListIngressRequest())
    assert denied.value.code == "unauthenticated"


async def test_an_unreachable_server_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    server = ServerIngressApi(f"ws://127.0.0.1:{port}", "k", "s" * 32, timeout=2)
    with trio.fail_after(5), pytest.raises(TwirpError) as failed:
        await server.list(pb.ListIngressRequest())
    assert failed.value.code == "unavailable" and f"127.0.0.1:{port}" in failed.value.msg


def test_an_answer_that_is_not_twirp_is_unknown() -> None:
    assert (_refusal(502, b"<html>bad gateway</html>").code,
            _refusal(502, b"").msg) == ("unknown", "HTTP 502 from the LiveKit server")
    assert _refusal(418, b'{"code": "teapot", "msg": "no"}').code == "unknown"
