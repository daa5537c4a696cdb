"""Two nodes working for one livekit-server (issue 13): where URL pulls go.

Both nodes run on this machine, so they measure the same idle CPU; what sets them
apart is what each has promised to its own sessions, and the affinity each claims
with says so: a second pull goes to the node without one.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from livekit import api
from livekit.protocol import ingress as lk

from tests.livekit import API_KEY, API_SECRET, LiveKitServer, cluster_config
from tests.media_http import MediaServer, serve_media
from tests.redis_server import RedisServer
from tests.service import ServiceProcess
from tests.test_cluster_e2e import at_server, wait_status

pytestmark = pytest.mark.slow

URL_COST = 0.6  # cores a pull declares: two fit in this machine's 2 cores, not four


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveKitServer]:
    livekit = LiveKitServer(tmp_path_factory.mktemp("livekit-nodes"),
                            extra_config=cluster_config(redis_server.address))
    livekit.start()
    yield livekit
    livekit.stop()


@pytest.fixture(scope="module")
def nodes(server: LiveKitServer, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    procs = [ServiceProcess(tmp_path_factory.mktemp(f"node{i}"), api_key=API_KEY,
                            api_secret=API_SECRET, ws_url=server.url,
                            redis={"address": redis_server.address},
                            url_allow_private_addresses=True, rtmp_port=0,
                            cpu_cost={"url_cpu_cost": URL_COST, "min_idle_ratio": 0})
             for i in range(2)]
    for proc in procs:
        proc.start()
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    root = tmp_path_factory.mktemp("media")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-t", "30",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-g", "15", str(root / "long.mp4")], check=True)
    with serve_media(root) as served:
        yield served


def create_pull(server: LiveKitServer, url: str, room: str) -> lk.IngressInfo:
    return at_server(server, lambda c: c.ingress.create_ingress(lk.CreateIngressRequest(
        input_type=lk.IngressInput.URL_INPUT, url=url, name=room, room_name=room,
        participant_identity="puller")))


def claimed_by(nodes: list[ServiceProcess], ingress_id: str) -> list[int]:
    return [i for i, node in enumerate(nodes)
            if f"URL ingress {ingress_id} claimed by this node" in node.log()]


def test_two_pulls_go_to_two_nodes(server: LiveKitServer, nodes: list[ServiceProcess],
                                   media: MediaServer) -> None:
    first = create_pull(server, f"{media.base}/long.mp4", "spread-1")
    wait_status(server, first.ingress_id, lk.IngressState.ENDPOINT_PUBLISHING)
    second = create_pull(server, f"{media.base}/long.mp4", "spread-2")
    wait_status(server, second.ingress_id, lk.IngressState.ENDPOINT_PUBLISHING)
    placed = claimed_by(nodes, first.ingress_id) + claimed_by(nodes, second.ingress_id)
    assert sorted(placed) == [0, 1], placed  # each node took one
    for info in (first, second):
        at_server(server, lambda c, i=info: c.ingress.delete_ingress(
            lk.DeleteIngressRequest(ingress_id=i.ingress_id)))


def test_any_node_takes_any_stream_key(server: LiveKitServer,
                                      nodes: list[ServiceProcess]) -> None:
    """One RTMP ingress of the server, published to each node in turn (as behind one
    address): each looks the key up at the server and publishes."""
    from tests.test_cluster_e2e import create_rtmp, publish_rtmp

    info = create_rtmp(server, "any-node")
    seen = []
    for node in nodes:
        target = lk.IngressInfo()
        target.CopyFrom(info)
        target.url = f"rtmp://{node.rtmp_addr}/x"
        publisher = publish_rtmp(target)
        try:
            live = wait_status(server, info.ingress_id, lk.IngressState.ENDPOINT_PUBLISHING)
            assert f"session {live.resource_id} of {info.ingress_id}" in node.log()
            seen.append(live.resource_id)
        finally:
            publisher.kill()
            publisher.wait(10)
        wait_status(server, info.ingress_id, lk.IngressState.ENDPOINT_INACTIVE)
    assert len(set(seen)) == 2


def test_with_one_node_full_the_other_takes_the_pull(
        server: LiveKitServer, nodes: list[ServiceProcess], media: MediaServer) -> None:
    full = nodes[0]  # a pull now declares more than this node has: it declines
    full.stop()
    full.config["cpu_cost"] = {"url_cpu_cost": 3.0, "min_idle_ratio": 0}
    full.start()
    info = create_pull(server, f"{media.base}/long.mp4", "one-full")
    wait_status(server, info.ingress_id, lk.IngressState.ENDPOINT_PUBLISHING)
    assert claimed_by(nodes, info.ingress_id) == [1]
    at_server(server, lambda c: c.ingress.delete_ingress(
        lk.DeleteIngressRequest(ingress_id=info.ingress_id)))


def test_when_no_node_has_room_the_client_gets_a_clear_error(
        server: LiveKitServer, nodes: list[ServiceProcess], media: MediaServer) -> None:
    for node in nodes:  # a pull now declares more than a node has
        node.stop()
        node.config["cpu_cost"] = {"url_cpu_cost": 3.0, "min_idle_ratio": 0}
        node.start()
    began = time.monotonic()
    with pytest.raises(api.TwirpError) as refused:
        create_pull(server, f"{media.base}/long.mp4", "full")
    assert refused.value.code == "unavailable", refused.value
    assert time.monotonic() - began < 30
    assert not any("claimed by this node" in node.log().rsplit("ready", 1)[-1]
                   for node in nodes)
