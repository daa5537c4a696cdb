"""Auth exactly as LiveKit: the four 401 texts, and nothing written on a refused call."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from livekit.protocol import ingress as pb

from tests.service import ServiceProcess

CREATE = "/twirp/livekit.Ingress/CreateIngress"
BODY = pb.CreateIngressRequest(input_type=pb.IngressInput.RTMP_INPUT,
                               participant_identity="x").SerializeToString()
PROTO = {"Content-Type": "application/protobuf"}


def post(service: ServiceProcess, headers: dict[str, str], path: str = CREATE,
         body: bytes = BODY) -> httpx.Response:
    return httpx.post(service.url + path, content=body, headers={**PROTO, **headers})


def count(service: ServiceProcess) -> int:
    r = httpx.post(service.url + "/twirp/livekit.Ingress/ListIngress", content=b"",
                   headers={**PROTO, "Authorization": "Bearer " + service.token()})
    assert r.status_code == 200
    return len(pb.ListIngressResponse.FromString(r.content).items)


def hand_made(service: ServiceProcess, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": service.api_key, "nbf": now - 10, "exp": now + 600,
               "video": {"ingressAdmin": True}, **claims}
    return jwt.encode(payload, service.api_secret, algorithm="HS256")


def cases(service: ServiceProcess) -> list[tuple[str, dict[str, str], str]]:
    return [
        ("no header", {}, "permissions denied"),
        ("not Bearer", {"Authorization": "Basic abc"},
         "invalid authorization header. Must start with Bearer "),
        ("lower-case bearer", {"Authorization": "bearer " + service.token()},
         "invalid authorization header. Must start with Bearer "),
        ("garbage token", {"Authorization": "Bearer not.a.jwt"}, "invalid authorization token"),
        ("wrong secret", {"Authorization": "Bearer " + service.token(secret="x" * 32)},
         "invalid authorization token"),
        ("expired", {"Authorization": "Bearer " + hand_made(
            service, exp=int(time.time()) - 120, nbf=int(time.time()) - 900)},
         "invalid authorization token"),
        ("not yet valid", {"Authorization": "Bearer " + hand_made(
            service, nbf=int(time.time()) + 300)}, "invalid authorization token"),
        ("no exp", {"Authorization": "Bearer " + jwt.encode(
            {"iss": service.api_key, "video": {"ingressAdmin": True}}, service.api_secret,
            algorithm="HS256")}, "invalid authorization token"),
        ("unknown key", {"Authorization": "Bearer " + service.token(key="APIunknown")},
         "invalid API key"),
        ("no ingressAdmin", {"Authorization": "Bearer " + service.token(ingress_admin=False)},
         "permissions denied"),
        ("room grants only", {"Authorization": "Bearer " + hand_made(
            service, video={"roomAdmin": True, "room": "r"})}, "permissions denied"),
    ]


CASE_NAMES = ["no header", "not Bearer", "lower-case bearer", "garbage token", "wrong secret",
              "expired", "not yet valid", "no exp", "unknown key", "no ingressAdmin",
              "room grants only"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_refused_with_exact_text_and_nothing_written(service: ServiceProcess, name: str) -> None:
    (headers, message), = [(h, m) for n, h, m in cases(service) if n == name]
    before = count(service)
    for path in (CREATE, "/twirp/livekit.Ingress/ListIngress",
                 "/twirp/livekit.Ingress/UpdateIngress", "/twirp/livekit.Ingress/DeleteIngress"):
        r = post(service, headers, path)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json() == {"code": "unauthenticated", "msg": message}
    assert count(service) == before


def test_expiry_leeway_of_one_minute(service: ServiceProcess) -> None:
    now = int(time.time())
    token = hand_made(service, exp=now - 30, nbf=now - 600)
    assert post(service, {"Authorization": "Bearer " + token}).status_code == 200


def test_access_token_query_parameter(service: ServiceProcess) -> None:
    r = post(service, {}, CREATE + "?access_token=" + service.token())
    assert r.status_code == 200
    assert pb.IngressInfo.FromString(r.content).ingress_id.startswith("IN_")
