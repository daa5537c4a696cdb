"""The official Python client (`livekit-api`) against the running service, all four RPCs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from livekit.api.twirp_client import ServerError
from livekit.protocol import ingress as pb
from livekit.protocol import models

from api.service import PAGE_SIZE
from tests.service import ServiceProcess

ALPHABET = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def create(service: ServiceProcess, req: pb.CreateIngressRequest) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(req)

    return service.api(call)


def call(service: ServiceProcess, method: str, req: Any) -> Any:
    async def run(client: Any) -> Any:
        return await getattr(client, method)(req)

    return service.api(run)


def test_rtmp_create_returns_ids_url_and_key(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, name="studio", room_name="room-a",
        participant_identity="studio-cam", participant_name="Studio",
        participant_metadata='{"k": 1}'))
    assert info.ingress_id.startswith("IN_") and len(info.ingress_id) == 15
    assert set(info.ingress_id[3:]) <= ALPHABET
    assert len(info.stream_key) == 12 and set(info.stream_key) <= ALPHABET
    assert info.url == "rtmp://127.0.0.1:1935/live"
    assert info.input_type == pb.IngressInput.RTMP_INPUT
    assert (info.name, info.room_name) == ("studio", "room-a")
    assert (info.participant_identity, info.participant_name) == ("studio-cam", "Studio")
    assert info.participant_metadata == '{"k": 1}'
    assert info.reusable is True
    assert info.state.status == pb.IngressState.ENDPOINT_INACTIVE
    assert not info.HasField("enable_transcoding") and not info.HasField("enabled")
    # what was stored is what List returns
    listed = call(service, "list_ingress", pb.ListIngressRequest(ingress_id=info.ingress_id))
    assert list(listed.items) == [info]


def test_whip_create_url_and_key(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.WHIP_INPUT, participant_identity="browser"))
    assert info.url == "http://127.0.0.1:8080/w"
    assert len(info.stream_key) == 12 and info.reusable


def test_url_create_keeps_url_has_no_key_not_reusable(service: ServiceProcess) -> None:
    url = "https://media.example/live/stream.m3u8"
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.URL_INPUT, url=url, room_name="r",
        participant_identity="pull"))
    assert info.url == url and info.stream_key == "" and info.reusable is False


def test_ids_and_keys_are_distinct(service: ServiceProcess) -> None:
    async def many(client: Any) -> list[pb.IngressInfo]:
        return [await client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, participant_identity=f"p{i}"))
            for i in range(20)]

    infos = service.api(many)
    assert len({i.ingress_id for i in infos}) == 20
    assert len({i.stream_key for i in infos}) == 20


@pytest.mark.parametrize("preset", pb.IngressVideoEncodingPreset.values())
def test_every_video_preset_round_trips(service: ServiceProcess, preset: int) -> None:
    video = pb.IngressVideoOptions(name="cam", source=models.TrackSource.CAMERA, preset=preset)
    audio = pb.IngressAudioOptions(name="mic", source=models.TrackSource.MICROPHONE,
                                   preset=pb.IngressAudioEncodingPreset.OPUS_MONO_64KBS)
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, participant_identity="x", video=video,
        audio=audio))
    assert info.video == video and info.audio == audio
    assert info.video.WhichOneof("encoding_options") == "preset"


def test_custom_layers_and_audio_options_round_trip_unchanged(service: ServiceProcess) -> None:
    video = pb.IngressVideoOptions(
        name="screen", source=models.TrackSource.SCREEN_SHARE,
        options=pb.IngressVideoEncodingOptions(
            video_codec=models.VideoCodec.VP8, frame_rate=24.5,
            layers=[models.VideoLayer(quality=models.VideoQuality.HIGH, width=1920, height=1080,
                                      bitrate=4_000_000),
                    models.VideoLayer(quality=models.VideoQuality.LOW, width=640, height=360)]))
    audio = pb.IngressAudioOptions(
        name="music", source=models.TrackSource.SCREEN_SHARE_AUDIO,
        options=pb.IngressAudioEncodingOptions(audio_codec=models.AudioCodec.OPUS,
                                               bitrate=128_000, disable_dtx=True, channels=2))
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.URL_INPUT, url="srt://127.0.0.1:9999", room_name="r",
        participant_identity="x", video=video, audio=audio, enable_transcoding=True,
        enabled=True))
    assert info.video == video and info.audio == audio
    assert info.HasField("enable_transcoding") and info.enable_transcoding
    assert info.HasField("enabled") and info.enabled
    # custom options with no layers stay without layers: defaults apply at session start
    bare = pb.IngressVideoOptions(options=pb.IngressVideoEncodingOptions())
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, participant_identity="x", video=bare))
    assert info.video == bare and info.video.WhichOneof("encoding_options") == "options"


def test_whip_passthrough_is_stored_as_sent(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.WHIP_INPUT, participant_identity="x",
        enable_transcoding=False, video=pb.IngressVideoOptions(name="v")))
    assert info.HasField("enable_transcoding") and info.enable_transcoding is False
    assert info.video.name == "v"


def test_list_by_room_and_all(service: ServiceProcess) -> None:
    def mk(room: str) -> pb.IngressInfo:
        return create(service, pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, participant_identity="x", room_name=room))

    a1, a2, b1 = mk("list-a"), mk("list-a"), mk("list-b")
    in_a = call(service, "list_ingress", pb.ListIngressRequest(room_name="list-a")).items
    assert [i.ingress_id for i in in_a] == [a1.ingress_id, a2.ingress_id]
    everything = call(service, "list_ingress", pb.ListIngressRequest()).items
    ids = [i.ingress_id for i in everything]
    assert {a1.ingress_id, a2.ingress_id, b1.ingress_id} <= set(ids)
    assert call(service, "list_ingress", pb.ListIngressRequest(room_name="nobody")).items == []


def test_list_unknown_id_is_not_found(service: ServiceProcess) -> None:
    with pytest.raises(ServerError) as err:
        call(service, "list_ingress", pb.ListIngressRequest(ingress_id="IN_doesnotexist"))
    assert (err.value.code, err.value.message, err.value.status) == (
        "not_found", "ingress does not exist", 404)


def test_update_changes_only_fields_that_are_set(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, name="before", room_name="r1",
        participant_identity="id1", participant_name="n1",
        video=pb.IngressVideoOptions(name="v1", preset=1),
        audio=pb.IngressAudioOptions(name="a1", preset=1)))
    new_video = pb.IngressVideoOptions(name="v2", options=pb.IngressVideoEncodingOptions(
        frame_rate=15))
    updated = call(service, "update_ingress", pb.UpdateIngressRequest(
        ingress_id=info.ingress_id, room_name="r2", video=new_video, enabled=False))
    assert updated.room_name == "r2" and updated.name == "before"
    assert updated.participant_identity == "id1" and updated.participant_name == "n1"
    assert updated.video == new_video  # replaced whole
    assert updated.audio == info.audio  # untouched
    assert updated.HasField("enabled") and updated.enabled is False
    assert (updated.stream_key, updated.url) == (info.stream_key, info.url)
    listed = call(service, "list_ingress", pb.ListIngressRequest(ingress_id=info.ingress_id))
    assert listed.items[0] == updated
    assert [i.ingress_id for i in call(service, "list_ingress",
                                       pb.ListIngressRequest(room_name="r2")).items] == [
        info.ingress_id]


def test_update_is_validated(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, participant_identity="x"))
    with pytest.raises(ServerError) as err:
        call(service, "update_ingress", pb.UpdateIngressRequest(
            ingress_id=info.ingress_id, enable_transcoding=False))
    assert err.value.code == "invalid_argument"
    assert err.value.message == ("invalid transcoding bypass configuration: bypassing "
                                 "transcoding impossible with selected input type")
    # nothing was written
    listed = call(service, "list_ingress", pb.ListIngressRequest(ingress_id=info.ingress_id))
    assert listed.items[0] == info


def test_update_unknown_and_url_ingress(service: ServiceProcess) -> None:
    with pytest.raises(ServerError) as err:
        call(service, "update_ingress", pb.UpdateIngressRequest(ingress_id="IN_nope", name="x"))
    assert (err.value.code, err.value.message) == ("not_found", "ingress does not exist")
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.URL_INPUT, url="http://127.0.0.1:1/a.mp4", room_name="r",
        participant_identity="x"))
    with pytest.raises(ServerError) as err:
        call(service, "update_ingress", pb.UpdateIngressRequest(
            ingress_id=info.ingress_id, name="renamed"))
    assert (err.value.code, err.value.message, err.value.status) == (
        "invalid_argument", "ingress is not reusable and cannot be modified", 400)


def test_delete_returns_inactive_info_and_removes(service: ServiceProcess) -> None:
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.WHIP_INPUT, participant_identity="x", room_name="del"))
    deleted = call(service, "delete_ingress", pb.DeleteIngressRequest(ingress_id=info.ingress_id))
    assert deleted.ingress_id == info.ingress_id
    assert deleted.state.status == pb.IngressState.ENDPOINT_INACTIVE
    assert call(service, "list_ingress", pb.ListIngressRequest(room_name="del")).items == []
    with pytest.raises(ServerError) as err:
        call(service, "delete_ingress", pb.DeleteIngressRequest(ingress_id=info.ingress_id))
    assert (err.value.code, err.value.message, err.value.status) == (
        "not_found", "ingress does not exist", 404)


def test_concurrent_updates_through_the_client_lose_nothing(service: ServiceProcess) -> None:
    """UpdateIngress calls in flight at once, each setting one field, over HTTP: every
    field keeps the value of the last call that set it (no read-modify-write lost)."""
    info = create(service, pb.CreateIngressRequest(
        input_type=pb.IngressInput.RTMP_INPUT, participant_identity="x", name="n0"))
    fields = ("name", "participant_name", "participant_metadata", "participant_identity")

    async def rounds(client: Any) -> None:
        for round_ in range(10):
            await asyncio.gather(*(client.update_ingress(pb.UpdateIngressRequest(
                ingress_id=info.ingress_id, **{field: f"{field}-{round_}"}))
                for field in fields for _ in range(3)))
            (got,) = (await client.list_ingress(
                pb.ListIngressRequest(ingress_id=info.ingress_id))).items
            assert {f: getattr(got, f) for f in fields} == {
                f: f"{f}-{round_}" for f in fields}, round_

    service.api(rounds)


def test_list_pages_with_page_token(service: ServiceProcess) -> None:
    """livekit-protocol's pagination: a client that sends page_token gets pages and
    next_page_token until it is empty; one that sends none gets everything."""
    async def make(client: Any) -> list[pb.IngressInfo]:
        return list(await asyncio.gather(*(client.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.WHIP_INPUT, participant_identity=f"p{i}",
            room_name="paged")) for i in range(PAGE_SIZE + 20))))

    async def walk(client: Any, room: str) -> tuple[list[str], list[int]]:
        ids: list[str] = []
        sizes: list[int] = []
        req = pb.ListIngressRequest(room_name=room, page_token=models.TokenPagination())
        while True:
            page = await client.list_ingress(req)
            ids += [i.ingress_id for i in page.items]
            sizes.append(len(page.items))
            if not page.next_page_token.token:
                return ids, sizes
            req.page_token.CopyFrom(page.next_page_token)

    made = service.api(make)
    in_room = [i.ingress_id for i in call(service, "list_ingress",
                                          pb.ListIngressRequest(room_name="paged")).items]
    assert sorted(in_room) == sorted(i.ingress_id for i in made)  # no token: everything
    paged, sizes = service.api(lambda client: walk(client, "paged"))
    assert paged == in_room and sizes == [PAGE_SIZE, 20]
    everything = [i.ingress_id for i in call(service, "list_ingress",
                                             pb.ListIngressRequest()).items]
    all_pages, sizes = service.api(lambda client: walk(client, ""))
    assert all_pages == everything and max(sizes) == PAGE_SIZE and len(sizes) >= 2
    with pytest.raises(ServerError) as err:
        call(service, "list_ingress", pb.ListIngressRequest(
            page_token=models.TokenPagination(token="not-ours")))
    assert (err.value.code, err.value.message, err.value.status) == (
        "invalid_argument", "invalid page token", 400)
    # the JSON binding (livekit-server-sdk's): lowerCamel in, snake_case out
    answer = httpx.post(f"{service.url}/twirp/livekit.Ingress/ListIngress",
                        json={"roomName": "paged", "pageToken": {}},
                        headers={"Authorization": f"Bearer {service.token()}"}).json()
    assert [i["ingress_id"] for i in answer["items"]] == in_room[:PAGE_SIZE]
    assert answer["next_page_token"]["token"]
