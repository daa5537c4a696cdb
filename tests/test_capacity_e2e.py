"""Capacity admission end to end (REFERENCE §4: no capacity -> "server capacity
exceeded", WHIP 429; a URL ingress' CreateIngress -> unavailable), through the real
service process.

The service is configured so that every transcoding session costs 100 cores (no
machine has them) and passthrough sessions cost nothing with no reserve (always
admitted, whatever the machine's load). Its ws_url points at a closed port: no
LiveKit server is needed, because admission comes before any worker starts; an
admitted session's worker fails to join the room, which is how the tests tell
that a worker ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from livekit.api.twirp_client import ServerError
from livekit.protocol import ingress as pb

from relay.service.ingest.rtmp_front import key_fingerprint
from tests.livekit import free_port
from tests.service import ServiceProcess, run_asyncio, session_workers
from tests.test_rtmp_ingest import Publisher, api, create, ffmpeg_cmd, state, url, wait_state
from tests.test_whip_e2e import offer_with

pytestmark = pytest.mark.slow

CAPACITY = "server capacity exceeded"
INACTIVE = pb.IngressState.ENDPOINT_INACTIVE
ERROR = pb.IngressState.ENDPOINT_ERROR
NO_ROOM_SERVER = "cannot join the room"  # what a worker says when ws_url has no server


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        tmp_path_factory.mktemp("capacity"), rtmp_port=0, rtmp_passthrough=True,
        ws_url=f"ws://127.0.0.1:{free_port()}",
        cpu_cost={"rtmp_cpu_cost": 100, "whip_cpu_cost": 100, "url_cpu_cost": 100,
                  "whip_bypass_transcoding_cpu_cost": 0, "min_idle_ratio": 0})
    proc.start()
    assert proc.rtmp_addr
    yield proc
    proc.stop()


def assert_no_worker_ran(svc: ServiceProcess, ingress_id: str) -> None:
    assert not re.search(rf"of {ingress_id}.*(publishing to room|pulling into room)",
                         svc.log())
    assert svc.proc is not None and not session_workers(svc.proc.pid)


def assert_no_worker(svc: ServiceProcess, ingress_id: str) -> None:
    assert_no_worker_ran(svc, ingress_id)
    assert NO_ROOM_SERVER not in state(svc, ingress_id).error


def test_rtmp_publish_is_denied(svc: ServiceProcess) -> None:
    info = create(svc, name="over capacity")
    pub = Publisher(ffmpeg_cmd(url(svc, info.stream_key), 2, realtime=False))
    assert pub.wait() != 0
    assert f"Server error: {CAPACITY}" in pub.stderr, pub.stderr
    key = info.stream_key
    assert key[:4] not in svc.log()  # no key material in the logs
    assert re.search(rf"rtmp connection from 127\.0\.0\.1:\d+: publish \(app 'live', key "
                     rf"{re.escape(key_fingerprint(key))}\) refused \(ingress "
                     rf"{info.ingress_id}\): {CAPACITY}$",
                     svc.log(), re.M)
    assert re.search(rf"{CAPACITY}: a session costing 100\.00 cores does not fit", svc.log())
    # like every refused publish (tests/test_rtmp_ingest.py), the ingress stays as it was
    assert state(svc, info.ingress_id).status == INACTIVE
    assert_no_worker(svc, info.ingress_id)
    assert svc.alive


def test_whip_offer_gets_429(svc: ServiceProcess) -> None:
    info = create(svc, input_type=pb.IngressInput.WHIP_INPUT, name="whip",
                  enable_transcoding=True)
    offer = run_asyncio(offer_with(["video", "audio"]))
    with httpx.Client(timeout=20) as http:
        reply = http.post(f"{svc.url}/w/{info.stream_key}", content=offer,
                          headers={"content-type": "application/sdp"})
    assert (reply.status_code, reply.text.strip()) == (429, CAPACITY)
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "location" in reply.headers["access-control-expose-headers"]
    assert "location" not in reply.headers
    assert state(svc, info.ingress_id).status == INACTIVE
    assert_no_worker(svc, info.ingress_id)
    assert not re.search(rf"whip session \S+ of {info.ingress_id}", svc.log())


def test_url_ingress_create_is_unavailable_and_stores_nothing(svc: ServiceProcess) -> None:
    """A pull the node cannot take fails CreateIngress itself, retryable (503), as the
    reference does when no ingress node claims it; no dead ingress is left behind."""
    # nothing listens there: a pull that started would fail with another error
    request = pb.CreateIngressRequest(
        input_type=pb.IngressInput.URL_INPUT, name="pull", room_name="room",
        participant_identity="encoder", url=f"http://127.0.0.1:{free_port()}/clip.mp4")
    for _ in range(2):  # and again: a refusal leaves nothing that blocks a retry
        with pytest.raises(ServerError) as refused:
            api(svc, "create_ingress", request)
        assert (refused.value.code, refused.value.message, refused.value.status) == (
            "unavailable", CAPACITY, 503)
    assert not [i for i in api(svc, "list_ingress", pb.ListIngressRequest()).items
                if i.input_type == pb.IngressInput.URL_INPUT]
    log = svc.log()
    ingress_ids = re.findall(rf"URL ingress (IN_\w+) not started: {CAPACITY}", log)
    assert len(ingress_ids) == 2
    for ingress_id in ingress_ids:
        assert_no_worker_ran(svc, ingress_id)
        assert not re.search(rf"url session \S+ of {ingress_id}", log)
    assert re.search(rf"{CAPACITY}: a session costing 100\.00 cores does not fit", log)


def test_rtmp_passthrough_costs_the_bypass_figure(svc: ServiceProcess) -> None:
    """enable_transcoding=false on RTMP is priced as whip_bypass_transcoding_cpu_cost
    (0 here): admitted, so its worker starts and fails at the closed ws_url. Last in
    this file: the tests above check that no worker process exists."""
    info = create(svc, name="passthrough", enable_transcoding=False)
    pub = Publisher(ffmpeg_cmd(url(svc, info.stream_key), 30))
    try:
        failed = wait_state(svc, info.ingress_id, ERROR, timeout=40)
        assert failed.error.startswith(NO_ROOM_SERVER), failed.error
    finally:
        pub.kill()
    assert svc.alive
