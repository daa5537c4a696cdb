"""The store survives a restart of the service process."""

from __future__ import annotations

from typing import Any

from livekit.protocol import ingress as pb
from livekit.protocol import models

from tests.service import ServiceProcess


def test_50_ingresses_survive_a_restart(fresh_service: ServiceProcess) -> None:
    async def create_50(client: Any) -> list[pb.IngressInfo]:
        made = []
        for i in range(50):
            req = pb.CreateIngressRequest(
                input_type=i % 3, name=f"n{i}", room_name=f"room-{i % 4}",
                participant_identity=f"id{i}", participant_metadata=f"meta {i}")
            if req.input_type == pb.IngressInput.URL_INPUT:
                req.url = f"https://127.0.0.1/{i}.mp4"
            if i % 5 == 0:
                req.video.CopyFrom(pb.IngressVideoOptions(
                    name="v", source=models.TrackSource.CAMERA,
                    options=pb.IngressVideoEncodingOptions(
                        frame_rate=25, layers=[models.VideoLayer(
                            quality=models.VideoQuality.HIGH, width=960, height=540)])))
                req.enable_transcoding = True
            made.append(await client.create_ingress(req))
        return made

    async def list_all(client: Any) -> list[pb.IngressInfo]:
        return list((await client.list_ingress(pb.ListIngressRequest())).items)

    made = fresh_service.api(create_50)
    assert fresh_service.api(list_all) == made
    assert fresh_service.stop() == 0  # SIGTERM: a clean exit
    fresh_service.start()
    assert fresh_service.api(list_all) == made
    # still writable after the restart, and keys stay unique
    more = fresh_service.api(create_50)
    assert len({i.stream_key for i in made + more if i.stream_key}) == len(
        [i for i in made + more if i.stream_key])


def test_killed_process_loses_no_acknowledged_write(fresh_service: ServiceProcess) -> None:
    """SIGKILL right after the replies: every acknowledged create is still there."""
    async def create_20(client: Any) -> list[pb.IngressInfo]:
        return [await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, participant_identity=f"k{i}"))
            for i in range(20)]

    made = fresh_service.api(create_20)
    assert fresh_service.proc is not None
    fresh_service.proc.kill()
    fresh_service.proc.wait()
    fresh_service.proc = None
    fresh_service.start()

    async def list_all(client: Any) -> list[pb.IngressInfo]:
        return list((await client.list_ingress(pb.ListIngressRequest())).items)

    assert fresh_service.api(list_all) == made
