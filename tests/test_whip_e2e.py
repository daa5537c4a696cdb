"""WHIP end to end: an aiortc publisher -> the service -> a real LiveKit room -> a viewer."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.protocol import ingress as pb
from livekit.protocol import models

from tests import whip_client
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, watch
from tests.service import ServiceProcess, run_asyncio
from tests.test_media_e2e import state, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def whip_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path_factory.mktemp("whip"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url,
                          rtc_config={"node_ip": "127.0.0.1"})
    proc.start()
    yield proc
    proc.stop()


def create_whip(service: ServiceProcess, room: str, identity: str, **fields: Any
                ) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.WHIP_INPUT, name="whip", room_name=room,
            participant_identity=identity, participant_name=f"{identity} name", **fields))

    return service.api(call)


async def offer_with(kinds: list[str]) -> str:
    """A real aiortc offer sending these media kinds."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    for kind in kinds:
        pc.addTransceiver(kind, "sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def endpoint(service: ServiceProcess, key: str = "") -> str:
    return f"{service.url}/w/{key}" if key else f"{service.url}/w"


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_whip_passthrough_reaches_the_room_and_delete_ends_it(
        whip_service: ServiceProcess, livekit: LiveKitServer, codec: str) -> None:
    room = f"whip-{codec.lower()}"
    info = create_whip(whip_service, room, f"pub-{codec.lower()}")
    identity = info.participant_identity
    published: list[whip_client.WhipPublish] = []
    publisher = threading.Thread(target=lambda: published.append(run_asyncio(
        whip_client.publish(endpoint(whip_service, info.stream_key), seconds=9,
                            video_codec=codec))))
    publisher.start()
    live = wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    # a viewer joining a running stream needs a keyframe: the room asks for one
    time.sleep(1.5)
    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, room, 40.0, until_left=identity)))
    viewer.start()
    time.sleep(5.5)  # a stats refresh
    during = state(whip_service, info.ingress_id)
    publisher.join()
    deleted_at = time.monotonic()
    viewer.join()
    ended = wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)

    (result,) = published
    assert result.status == 201 and result.connected, result
    assert result.location == f"/w/{info.stream_key}/{live.resource_id}"
    assert result.etag and result.headers["content-type"] == "application/sdp"
    assert result.delete_status == 200
    # the room's keyframe request for the late viewer came back to us as PLI. Only
    # provable with VP8: aiortc's VP8 encoder makes keyframes on request only (GOP
    # 3000), its H.264 encoder also on its own (x264's default GOP, restarts on
    # bitrate changes), after which the room need not ask
    if codec == "VP8":
        assert result.keyframe_requests >= 1, result
    assert live.resource_id.startswith("WH_") and live.room_id.startswith("RM_")
    video = [t for t in during.tracks if t.type == models.TrackType.VIDEO]
    assert video and video[0].mime_type == f"video/{codec}" and not video[0].simulcast
    assert (during.video.width, during.video.height) == (640, 480)
    assert during.video.mime_type == f"video/{codec.lower()}"
    assert during.audio.mime_type == "audio/opus" and during.audio.sample_rate == 48000
    assert ended.ended_at > 0 and not ended.error

    (got,) = seen
    assert got.participants[identity]["kind"] == 1  # INGRESS
    sizes = got.video_sizes
    assert max(sizes, key=sizes.get) == (640, 480), sizes  # passed through, not scaled
    assert got.fps() >= 15, got.fps()  # 30 sent; a starved viewer decodes fewer
    assert sorted(got.audio_rms)[len(got.audio_rms) // 2] > 1000, "the tone did not arrive"
    assert got.left[identity] - deleted_at < 1.5, got.left[identity] - deleted_at


def test_whip_errors_and_cors(whip_service: ServiceProcess, tmp_path: Path) -> None:
    rtmp_ingress = whip_service.api(lambda client: client.create_ingress(
        pb.CreateIngressRequest(input_type=pb.IngressInput.RTMP_INPUT, room_name="r",
                                participant_identity="x")))
    disabled = create_whip(whip_service, "r", "off")
    whip_service.api(lambda client: client.update_ingress(
        pb.UpdateIngressRequest(ingress_id=disabled.ingress_id, enabled=False)))
    no_room = create_whip(whip_service, "", "nobody")
    offer = "v=0\r\n"
    with httpx.Client(timeout=10) as http:
        def post(key: str, body: str = offer, **headers: str) -> httpx.Response:
            return http.post(endpoint(whip_service, key), content=body,
                             headers={"content-type": "application/sdp", **headers})

        unknown = post("nosuchkey000")
        assert (unknown.status_code, unknown.text.strip()) == (404, "unknown stream key")
        assert unknown.headers["access-control-allow-origin"] == "*"
        assert post(rtmp_ingress.stream_key).status_code == 400
        denied = post(disabled.stream_key)
        assert (denied.status_code, denied.text.strip()) == (403, "session is disabled")
        assert post(no_room.stream_key).text.strip() == "no room name"
        options = http.options(endpoint(whip_service, "anything"))
        assert options.status_code == 204
        assert options.headers["accept-post"] == "application/sdp"
        assert "location" in options.headers["access-control-expose-headers"]
        live = create_whip(whip_service, "r", "twice")
        two_videos = post(live.stream_key, run_asyncio(offer_with(["video", "video"])))
        assert (two_videos.status_code, two_videos.text.strip()) == (
            406, "more than 1 track with given media kind")
        wrong_type = http.post(endpoint(whip_service, live.stream_key), content=offer,
                               headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415
        missing = http.post(endpoint(whip_service), content=offer,
                            headers={"content-type": "application/sdp"})
        assert missing.status_code == 401
        assert http.delete(endpoint(whip_service, "nosuchkey000") + "/WH_x").status_code == 404
    assert whip_service.alive


def test_whip_bearer_key_with_and_without_the_word(whip_service: ServiceProcess) -> None:
    with httpx.Client(timeout=10) as http:
        for value in ("Bearer nosuchkey000", "nosuchkey000"):
            reply = http.post(endpoint(whip_service), content="v=0\r\n",
                              headers={"content-type": "application/sdp",
                                       "authorization": value})
            assert (reply.status_code, reply.text.strip()) == (404, "unknown stream key")


def test_whip_transcoding_reencodes_into_the_preset(whip_service: ServiceProcess,
                                                    livekit: LiveKitServer) -> None:
    """enable_transcoding: VP8 in, the default preset out (H.264, simulcast by the SDK)."""
    room = "whip-transcode"
    info = create_whip(whip_service, room, "pub-transcode", enable_transcoding=True)
    seen: list[Any] = []
    viewer = threading.Thread(target=lambda: seen.append(
        watch(livekit.url, room, 40.0, until_left="pub-transcode")))
    viewer.start()
    published: list[whip_client.WhipPublish] = []
    publisher = threading.Thread(target=lambda: published.append(run_asyncio(
        whip_client.publish(endpoint(whip_service, info.stream_key), seconds=7,
                            video_codec="VP8"))))
    publisher.start()
    wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_PUBLISHING)
    time.sleep(5.5)
    during = state(whip_service, info.ingress_id)
    publisher.join()
    viewer.join()
    wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    (result,) = published
    assert result.status == 201 and result.connected, result
    video = [t for t in during.tracks if t.type == models.TrackType.VIDEO]
    assert video and video[0].mime_type == "video/H264" and video[0].simulcast, video
    assert during.video.mime_type == "video/vp8"
    assert (video[0].width, video[0].height) == (640, 480)  # never upscaled to 720p
    (got,) = seen
    sizes = got.video_sizes  # simulcast: the viewer may sit on a lower layer for a while
    assert (640, 480) in sizes and all(w <= 640 for w, _ in sizes), sizes
    assert sorted(got.audio_rms)[len(got.audio_rms) // 2] > 1000, "the tone did not arrive"


def test_whip_trickle_patch_and_ice_restart_answer(whip_service: ServiceProcess) -> None:
    """Candidates left out of the offer arrive by PATCH (204) and reach the worker;
    an ICE restart (new credentials) gets the worker's new ones and a new ETag (200;
    Chromium restarting for real: tests/test_whip_chromium.py); a stale If-Match is
    refused (412)."""
    info = create_whip(whip_service, "whip-trickle", "pub-trickle")
    result = run_asyncio(whip_client.publish(endpoint(whip_service, info.stream_key),
                                             seconds=2, trickle=True))
    assert result.status == 201 and result.connected, result
    assert result.patch_statuses == [204, 200, 412], result.patch_statuses
    body, etag = result.restart_reply
    ufrag, pwd = re.fullmatch(r"a=ice-ufrag:(\S+)\r\na=ice-pwd:(\S+)\r\n", body).groups()
    assert len(ufrag) >= 4 and len(pwd) >= 22 and f"a=ice-ufrag:{ufrag}" not in result.answer
    assert etag and etag != result.etag
    assert re.search(r"ICE restart: local ufrag \w+, the publisher's new", whip_service.log())
    assert re.search(r"trickled ICE candidates: [1-9]\d* of [1-9]\d* added, end of "
                     r"candidates", whip_service.log())


def test_two_offers_at_once_on_one_key(whip_service: ServiceProcess) -> None:
    """The newer publisher takes over (RTMP's rule); the older one, if still starting,
    is told why (409) rather than getting a server error."""
    import asyncio

    info = create_whip(whip_service, "whip-race", "pub-race")
    url = endpoint(whip_service, info.stream_key)

    async def both() -> list[whip_client.WhipPublish]:
        return list(await asyncio.gather(whip_client.publish(url, seconds=2),
                                         whip_client.publish(url, seconds=2)))

    results = run_asyncio(both())
    statuses = sorted(r.status for r in results)
    assert statuses in ([201, 201], [201, 409]), [(r.status, r.error) for r in results]
    assert any(r.connected for r in results)
    wait_for(whip_service, info.ingress_id, pb.IngressState.ENDPOINT_INACTIVE)
    assert whip_service.alive


def test_ice_host_candidates_in_the_configured_port_range(livekit: LiveKitServer,
                                                         tmp_path: Path) -> None:
    """rtc_config port_range_start/end: every session binds its ICE port in the range."""
    first = 40000 + secrets.randbelow(20000)
    service = ServiceProcess(tmp_path, api_key=API_KEY, api_secret=API_SECRET,
                             ws_url=livekit.url,
                             rtc_config={"node_ip": "127.0.0.1", "port_range_start": first,
                                         "port_range_end": first + 9})
    service.start()
    try:
        infos = [create_whip(service, f"whip-ports-{i}", f"ports-{i}") for i in range(2)]

        async def both() -> list[whip_client.WhipPublish]:
            return list(await asyncio.gather(*(
                whip_client.publish(endpoint(service, info.stream_key), seconds=3,
                                    video_codec="VP8") for info in infos)))

        results = run_asyncio(both())
    finally:
        service.stop()
    ports = []
    for result in results:
        assert result.status == 201 and result.connected, result
        ports += [int(line.split()[5]) for line in result.answer.splitlines()
                  if line.startswith("a=candidate:")]
    assert ports and all(first <= p <= first + 9 for p in ports), (first, ports)
    assert len(set(ports)) == 2, ports  # one port per session
