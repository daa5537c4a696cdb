"""A node as an ingress worker of a stock livekit-server 1.13.5 over Debian's
redis-server (issue 13): the official client talks only to the LiveKit server.

Covered so far: a URL ingress (CreateIngress at the server, claimed by our node over
psrpc, media in the room, COMPLETE at the server) and an RTMP ingress (created at
the server, published to our node with ffmpeg, looked up over psrpc, PUBLISHING at
the server, DeleteIngress at the server ends it on our node).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import ingress as lk

from tests.livekit import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    Seen,
    cluster_config,
    free_port,
    watch,
)
from tests.media_http import MediaServer, serve_media
from tests.redis_server import RedisServer
from tests.service import ServiceProcess, run_asyncio
from tests.test_console_e2e import sign_in

pytestmark = pytest.mark.slow

S = lk.IngressState


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Persistent (saved on shutdown): the restart test takes Redis down and back."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node_ports() -> tuple[int, int]:
    return free_port(), free_port()  # our node's RTMP and HTTP ports, known to the server


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, node_ports: tuple[int, int],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    rtmp_port, http_port = node_ports
    livekit = LiveKitServer(tmp_path_factory.mktemp("livekit-cluster"),
                            extra_config=cluster_config(redis_server.address, rtmp_port,
                                                        http_port))
    livekit.start()
    yield livekit
    livekit.stop()


@pytest.fixture(scope="module")
def node(server: LiveKitServer, redis_server: RedisServer, node_ports: tuple[int, int],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    rtmp_port, http_port = node_ports
    proc = ServiceProcess(tmp_path_factory.mktemp("node"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=server.url, rtmp_port=rtmp_port,
                          http_port=http_port, redis={"address": redis_server.address},
                          url_allow_private_addresses=True)  # the media is on 127.0.0.1
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    root = tmp_path_factory.mktemp("media")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "6",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-g", "25", "-c:a", "aac", str(root / "clip.mp4")], check=True)
    with serve_media(root) as served:
        yield served


def at_server(server: LiveKitServer, call: Callable[[api.LiveKitAPI], Any]) -> Any:
    async def main() -> Any:
        client = api.LiveKitAPI(server.url.replace("ws://", "http://"), API_KEY, API_SECRET)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return run_asyncio(main())


def state_at_server(server: LiveKitServer, ingress_id: str) -> lk.IngressState:
    reply = at_server(server, lambda c: c.ingress.list_ingress(
        lk.ListIngressRequest(ingress_id=ingress_id)))
    return reply.items[0].state


def wait_status(server: LiveKitServer, ingress_id: str, status: int, timeout: float = 30
                ) -> lk.IngressState:
    deadline = time.monotonic() + timeout
    while True:
        state = state_at_server(server, ingress_id)
        if state.status == status:
            return state
        assert time.monotonic() < deadline, f"{ingress_id}: {state}"
        time.sleep(0.2)


def test_the_nodes_own_api_points_to_the_server(node: ServiceProcess) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(node.url + "/twirp/livekit.Ingress/ListIngress",
                                     data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 503
    assert b"call the Ingress API of the LiveKit server" in refused.value.read()


def test_a_url_ingress_created_at_the_server_plays_through_our_node(
        server: LiveKitServer, node: ServiceProcess, media: MediaServer) -> None:
    seen: list[Seen] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(server.url, "cluster-url", 40.0, until_left="puller")))
    viewer.start()
    time.sleep(1.5)
    info = at_server(server, lambda c: c.ingress.create_ingress(lk.CreateIngressRequest(
        input_type=lk.IngressInput.URL_INPUT, url=f"{media.base}/clip.mp4", name="pull",
        room_name="cluster-url", participant_identity="puller")))
    publishing = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
    assert publishing.resource_id.startswith("UR_")
    wait_status(server, info.ingress_id, S.ENDPOINT_COMPLETE)
    viewer.join()
    assert seen and seen[0].video_sizes, "no video reached the room"
    assert (640, 360) in seen[0].video_sizes


def test_an_rtmp_ingress_of_the_server_publishes_through_our_node(
        server: LiveKitServer, node: ServiceProcess) -> None:
    info = create_rtmp(server, "cluster-rtmp")
    assert info.url.startswith("rtmp://127.0.0.1:")
    publisher = publish_rtmp(info)
    try:
        live = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        assert live.resource_id.startswith("RT_")
        deadline = time.monotonic() + 10
        while "encoder" not in participants(server, "cluster-rtmp"):
            assert time.monotonic() < deadline, "the ingress never joined its room"
            time.sleep(0.2)
        began = time.monotonic()
        at_server(server, lambda c: c.ingress.delete_ingress(
            lk.DeleteIngressRequest(ingress_id=info.ingress_id)))
        while "encoder" in participants(server, "cluster-rtmp"):
            assert time.monotonic() - began < 2, "the participant stayed after DeleteIngress"
            time.sleep(0.1)
        assert f"stopping session {live.resource_id}" in node.log()
    finally:
        publisher.kill()
        publisher.wait(10)


def publish_rtmp(info: lk.IngressInfo) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-t", "60",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
         "-f", "flv", f"{info.url}/{info.stream_key}"], stderr=subprocess.PIPE)


def create_rtmp(server: LiveKitServer, room: str) -> lk.IngressInfo:
    return at_server(server, lambda c: c.ingress.create_ingress(lk.CreateIngressRequest(
        input_type=lk.IngressInput.RTMP_INPUT, name=room, room_name=room,
        participant_identity="encoder")))


def test_sigterm_reports_the_final_state_to_the_server(server: LiveKitServer,
                                                       node: ServiceProcess) -> None:
    info = create_rtmp(server, "cluster-sigterm")
    publisher = publish_rtmp(info)
    try:
        wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        assert node.stop() == 0
        ended = state_at_server(server, info.ingress_id)
        assert ended.status == S.ENDPOINT_INACTIVE, ended
    finally:
        publisher.kill()
        publisher.wait(10)
        node.start()


def test_after_a_sigkill_the_restarted_node_corrects_what_it_left_live(
        server: LiveKitServer, node: ServiceProcess) -> None:
    import os
    import signal

    info = create_rtmp(server, "cluster-sigkill")
    publisher = publish_rtmp(info)
    try:
        live = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None
        assert state_at_server(server, info.ingress_id).status == S.ENDPOINT_PUBLISHING
    finally:
        publisher.kill()
        publisher.wait(10)
    node.start()
    corrected = wait_status(server, info.ingress_id, S.ENDPOINT_ERROR, timeout=10)
    assert corrected.error == "the node restarted while the session was live"
    assert corrected.resource_id == live.resource_id


def test_a_redis_restart_keeps_live_sessions_and_the_node_reconnects(
        server: LiveKitServer, node: ServiceProcess, redis_server: RedisServer) -> None:
    """Redis goes away for a second under a live RTMP session: the session goes on,
    the node reconnects by itself, and a DeleteIngress at the server reaches it."""
    info = create_rtmp(server, "cluster-redis-restart")
    publisher = publish_rtmp(info)
    try:
        live = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()
        deadline = time.monotonic() + 20
        while True:  # the server reconnects too; its API answers again from Redis
            try:
                if state_at_server(server, info.ingress_id).resource_id == live.resource_id:
                    break
            except Exception:  # the server's Redis is still coming back
                pass
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.5)
        assert publisher.poll() is None
        assert not re.search(rf"session {live.resource_id} .* ended after", node.log())
        began = time.monotonic()
        while f"stopping session {live.resource_id}" not in node.log():
            if time.monotonic() - began > 15:
                raise AssertionError("DeleteIngress after the restart did not reach the node")
            with contextlib.suppress(api.TwirpError):
                at_server(server, lambda c: c.ingress.delete_ingress(
                    lk.DeleteIngressRequest(ingress_id=info.ingress_id)))
            time.sleep(1)
        # it was a real restart: the server logged its start twice
        log = (redis_server.workdir / "redis.log").read_text()
        assert log.count("Ready to accept connections") >= 2
    finally:
        publisher.kill()
        publisher.wait(10)


def test_a_whip_ingress_of_the_server_publishes_through_our_node(
        server: LiveKitServer, node: ServiceProcess) -> None:
    """WHIP: created at the server (its URL is our node's /w), an aiortc publisher
    POSTs its offer to that URL; the node looks the key up over psrpc, answers, and
    the server reads PUBLISHING, then INACTIVE after the publisher's DELETE."""
    from tests import whip_client

    info = at_server(server, lambda c: c.ingress.create_ingress(lk.CreateIngressRequest(
        input_type=lk.IngressInput.WHIP_INPUT, name="whip", room_name="cluster-whip",
        participant_identity="browser")))
    assert info.url == f"{node.url}/w"
    states: list[int] = []
    stop = threading.Event()

    def watch_states() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                states.append(state_at_server(server, info.ingress_id).status)
            time.sleep(0.3)

    watcher = threading.Thread(target=watch_states)
    watcher.start()
    try:
        result = run_asyncio(whip_client.publish(f"{info.url}/{info.stream_key}",
                                                 seconds=4))
    finally:
        stop.set()
        watcher.join()
    assert result.status == 201 and result.connected, result
    assert S.ENDPOINT_PUBLISHING in states or S.ENDPOINT_BUFFERING in states, states
    wait_status(server, info.ingress_id, S.ENDPOINT_INACTIVE)


def test_the_js_client_at_the_server_sees_a_pull_through_our_node(
        server: LiveKitServer, node: ServiceProcess, media: MediaServer) -> None:
    """livekit-server-sdk (npm) talking only to the LiveKit server: a URL ingress it
    creates is pulled by our node and reads PUBLISHING, then COMPLETE, at the server."""
    import json
    import shutil

    js_dir = Path(__file__).parent / "js"
    node_js = shutil.which("node")
    if node_js is None or not (js_dir / "node_modules" / "livekit-server-sdk").exists():
        pytest.fail("node and tests/js/node_modules are required (.ci/run installs them)")
    proc = subprocess.run([node_js, "cluster_client.mjs", server.url.replace("ws://", "http://"),
                           API_KEY, API_SECRET, f"{media.base}/clip.mp4", "cluster-js"],
                          cwd=js_dir, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["info"]["inputType"] == "URL_INPUT"
    assert out["statuses"][-1] == "ENDPOINT_COMPLETE", out["statuses"]
    assert "ENDPOINT_PUBLISHING" in out["statuses"], out["statuses"]
    assert f"URL ingress {out['info']['ingressId']} claimed by this node" in node.log()


def participants(server: LiveKitServer, room: str) -> list[str]:
    from livekit.protocol import room as rooms

    reply = at_server(server, lambda c: c.room.list_participants(
        rooms.ListParticipantsRequest(room=room)))
    return [p.identity for p in reply.participants]


def test_input_stats_active_list_update_and_reuse_through_the_server(
        server: LiveKitServer, node: ServiceProcess, redis_server: RedisServer) -> None:
    """The server's ListIngress shows the input's size while live; ListActiveIngress
    (psrpc multi) finds the session on our node; UpdateIngress at the server takes the
    participant out within 2 s; the ingress is reusable by the next publish."""
    import trio

    from relay import psrpc
    from relay.service.cluster.redis_bus import open_redis_bus
    from relay.service.cluster.rpc import RpcCaller
    from relay.service.config import RedisConfig

    room = "cluster-update"
    info = create_rtmp(server, room)
    publisher = publish_rtmp(info)
    try:
        live = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        deadline = time.monotonic() + 15
        while (state := state_at_server(server, info.ingress_id)).video.width == 0:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert (state.video.width, state.video.height) == (640, 360)

        async def active() -> list[Any]:
            async with open_redis_bus(RedisConfig(address=redis_server.address)) as bus, \
                    trio.open_nursery() as nursery:
                caller = RpcCaller(bus, psrpc.RpcClient("IngressInternal",
                                                        psrpc.new_id("CLI_")))
                await nursery.start(caller.run)
                answers = await caller.call_all(psrpc.LIST_ACTIVE_INGRESS,
                                                psrpc.ListActiveIngressRequest())
                nursery.cancel_scope.cancel()
                return answers

        answers = trio.run(active)
        sessions = [(s.ingress_id, s.resource_id) for a in answers for s in a.ingress_sessions]
        assert (info.ingress_id, live.resource_id) in sessions

        deadline = time.monotonic() + 10
        while "encoder" not in participants(server, room):
            assert time.monotonic() < deadline, "the ingress never joined its room"
            time.sleep(0.2)
        at_server(server, lambda c: c.ingress.update_ingress(lk.UpdateIngressRequest(
            ingress_id=info.ingress_id, name="renamed")))
        began = time.monotonic()
        while "encoder" in participants(server, room):
            assert time.monotonic() - began < 2, "the participant stayed after UpdateIngress"
            time.sleep(0.1)
    finally:
        publisher.kill()
        publisher.wait(10)
    wait_status(server, info.ingress_id, S.ENDPOINT_INACTIVE)
    again = publish_rtmp(info)  # the same stream key: a reusable ingress
    try:
        second = wait_status(server, info.ingress_id, S.ENDPOINT_PUBLISHING)
        assert second.resource_id != live.resource_id
    finally:
        again.kill()
        again.wait(10)


def test_the_console_of_a_worker_node_edits_the_servers_ingresses(
        server: LiveKitServer, node: ServiceProcess, browser: Any) -> None:
    """A worker node's console lists and edits through the LiveKit server's API: an
    ingress made in its form is the server's, PUBLISHING comes from the server's
    state, an edit and a delete land at the server."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    publisher = None
    try:
        page.goto(f"{node.url}/console/")
        sign_in(page, node.url)
        page.get_by_role("link", name="New ingress").first.click()
        page.get_by_label("Name", exact=True).fill("from the console")
        page.get_by_label("Room name").fill("cluster-console")
        page.get_by_label("Participant identity").fill("encoder")
        page.get_by_role("button", name="Create ingress").click()
        page.wait_for_url("**/console/ingress/*")
        ingress_id = page.url.rsplit("/", 1)[1]
        info = at_server(server, lambda c: c.ingress.list_ingress(
            lk.ListIngressRequest(ingress_id=ingress_id))).items[0]
        assert (info.name, info.room_name) == ("from the console", "cluster-console")
        assert page.locator('code[data-setting="OBS Stream Key"]').inner_text() == \
            info.stream_key
        publisher = publish_rtmp(info)
        page.get_by_role("link", name="Ingresses").click()
        page.locator(f'tr[data-ingress="{ingress_id}"] .status[data-status="publishing"]'
                     ).wait_for()

        page.goto(f"{node.url}/console/ingress/{ingress_id}/edit")
        page.get_by_label("Name", exact=True).fill("renamed in the console")
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(f"**/console/ingress/{ingress_id}")
        assert at_server(server, lambda c: c.ingress.list_ingress(
            lk.ListIngressRequest(ingress_id=ingress_id))).items[0].name == \
            "renamed in the console"

        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete ingress").click()
        page.wait_for_url(f"{node.url}/console/")
        with pytest.raises(api.TwirpError) as gone:  # the server: not_found, not []
            at_server(server, lambda c: c.ingress.list_ingress(
                lk.ListIngressRequest(ingress_id=ingress_id)))
        assert gone.value.code == "not_found"
        page.goto(f"{node.url}/console/ingress/{ingress_id}")
        assert page.get_by_role("heading", level=1).inner_text() == "No such ingress"
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait(10)
        context.close()
