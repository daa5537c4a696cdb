"""Every validation rule of REFERENCE §4: exact text, Twirp code and HTTP status.

Each case goes through the official client to the running service, and afterwards
the store must hold nothing from the refused calls.
"""

from __future__ import annotations

from typing import Any

import pytest
from livekit.api.twirp_client import ServerError
from livekit.protocol import ingress as pb
from livekit.protocol import models

from tests.service import ServiceProcess

RTMP, WHIP, URL = pb.IngressInput.RTMP_INPUT, pb.IngressInput.WHIP_INPUT, pb.IngressInput.URL_INPUT
Q = models.VideoQuality


def layer(q: int, w: int, h: int) -> models.VideoLayer:
    return models.VideoLayer(quality=q, width=w, height=h)


def video_options(**kw: Any) -> pb.IngressVideoOptions:
    return pb.IngressVideoOptions(options=pb.IngressVideoEncodingOptions(**kw))


def audio_options(**kw: Any) -> pb.IngressAudioOptions:
    return pb.IngressAudioOptions(options=pb.IngressAudioEncodingOptions(**kw))


def req(input_type: int = RTMP, **kw: Any) -> pb.CreateIngressRequest:
    kw.setdefault("participant_identity", "someone")
    return pb.CreateIngressRequest(input_type=input_type, **kw)


BYPASS = "invalid transcoding bypass configuration: "
VIDEO = "invalid video parameters: "
AUDIO = "invalid audio parameters: "

CREATE_CASES: list[tuple[str, pb.CreateIngressRequest, str]] = [
    ("unknown input type", req(7), "invalid ingress type"),
    ("url missing", req(URL, room_name="r"), "invalid ingress: missing URL parameter"),
    ("url scheme", req(URL, url="rtmp://h/a", room_name="r"),
     "invalid ingress: invalid url scheme rtmp"),
    ("url scheme ftp", req(URL, url="ftp://h/a.mp4", room_name="r"),
     "invalid ingress: invalid url scheme ftp"),
    ("url no room", req(URL, url="https://h/a.mp4"), "invalid ingress: no room name"),
    # beyond the reference: URLs the service could not pull are refused at create
    ("url bad bracket", req(URL, url="http://[::1/a.mp4", room_name="r"),
     "invalid ingress: invalid url: Invalid IPv6 URL"),
    ("url bad port", req(URL, url="https://h:99999/a.mp4", room_name="r"),
     "invalid ingress: invalid url: Port out of range 0-65535"),
    # found by fuzz/fuzz_url.py: urllib quotes the port, which may be anything
    ("url port of NULs", req(URL, url="http://h:" + "\x00" * 300, room_name="r"),
     "invalid ingress: invalid url: "
     + ("Port could not be cast to integer value as '" + "\\x00" * 300)[:200] + "..."),
    ("no identity", req(RTMP, participant_identity=""),
     "invalid ingress: no participant identity"),
    ("no identity whip", req(WHIP, participant_identity=""),
     "invalid ingress: no participant identity"),
    ("rtmp transcoding off", req(RTMP, enable_transcoding=False),
     BYPASS + "bypassing transcoding impossible with selected input type"),
    ("url transcoding off", req(URL, url="http://h/a.mp4", room_name="r",
                                enable_transcoding=False),
     BYPASS + "bypassing transcoding impossible with selected input type"),
    ("rtmp bypass (deprecated field)", req(RTMP, bypass_transcoding=True),
     BYPASS + "bypassing transcoding impossible with selected input type"),
    ("whip default passthrough with video preset", req(WHIP, video=pb.IngressVideoOptions(
        preset=1)), BYPASS + "video encoding options must be empty if transcoding is disabled"),
    ("whip passthrough with audio options", req(WHIP, enable_transcoding=False,
                                                audio=audio_options(bitrate=1)),
     BYPASS + "audio encoding options must be empty if transcoding is disabled"),
    ("whip bypass with video options", req(WHIP, bypass_transcoding=True, video=video_options()),
     BYPASS + "video encoding options must be empty if transcoding bypass is selected"),
    ("whip bypass with audio preset", req(WHIP, bypass_transcoding=True,
                                          audio=pb.IngressAudioOptions(preset=0)),
     BYPASS + "audio encoding options must be empty if transcoding bypass is selected"),
    ("video source", req(video=pb.IngressVideoOptions(source=models.TrackSource.MICROPHONE)),
     VIDEO + "invalid track source"),
    ("video preset", req(video=pb.IngressVideoOptions(preset=42)), VIDEO + "invalid preset"),
    ("video codec", req(video=video_options(video_codec=models.VideoCodec.H264_HIGH)),
     VIDEO + "video codec unsupported"),
    ("framerate", req(video=video_options(frame_rate=-1)), VIDEO + "invalid framerate"),
    ("zero width", req(video=video_options(layers=[layer(Q.HIGH, 0, 720)])),
     VIDEO + "invalid output media dimensions"),
    ("zero height", req(video=video_options(layers=[layer(Q.HIGH, 1280, 0)])),
     VIDEO + "invalid output media dimensions"),
    ("odd width", req(video=video_options(layers=[layer(Q.HIGH, 1281, 720)])),
     "invalid ingress: layer width must be even"),
    ("odd height", req(video=video_options(layers=[layer(Q.HIGH, 1280, 721)])),
     "invalid ingress: layer height must be even"),
    ("same quality twice", req(video=video_options(layers=[layer(Q.HIGH, 1280, 720),
                                                           layer(Q.HIGH, 640, 360)])),
     VIDEO + "more than one layer with the same quality level"),
    ("height decreases", req(video=video_options(layers=[layer(Q.LOW, 640, 720),
                                                         layer(Q.HIGH, 1280, 360)])),
     VIDEO + "video layers do not have increasing height with increasing quality"),
    ("width decreases", req(video=video_options(layers=[layer(Q.MEDIUM, 1280, 360),
                                                        layer(Q.HIGH, 640, 720)])),
     VIDEO + "video layers do not have increasing width with increasing quality"),
    ("audio source", req(audio=pb.IngressAudioOptions(source=models.TrackSource.CAMERA)),
     AUDIO + "invalid track source"),
    ("audio preset", req(audio=pb.IngressAudioOptions(preset=9)), AUDIO + "invalid preset"),
    ("audio codec", req(audio=audio_options(audio_codec=models.AudioCodec.AAC)),
     AUDIO + "audio codec unsupported"),
    ("audio channels", req(audio=audio_options(channels=3)),
     AUDIO + "invalid audio channel count"),
    ("url disabled", req(URL, url="http://h/a.mp4", room_name="r", enabled=False),
     "invalid ingress: disabled non reusable ingress"),
]

ACCEPTED: list[tuple[str, pb.CreateIngressRequest]] = [
    ("rtmp without room", req(RTMP)),
    ("whip without room", req(WHIP)),
    ("srt url", req(URL, url="srt://127.0.0.1:7001?streamid=x", room_name="r")),
    ("HTTPS url upper case", req(URL, url="HTTPS://h/a.mp4", room_name="r")),
    ("whip transcoding on with options", req(WHIP, enable_transcoding=True,
                                             video=video_options(frame_rate=30))),
    ("whip passthrough with names only", req(WHIP, video=pb.IngressVideoOptions(name="v"),
                                             audio=pb.IngressAudioOptions(name="a"))),
    ("equal layer sizes", req(video=video_options(layers=[layer(Q.LOW, 640, 360),
                                                          layer(Q.HIGH, 640, 360)]))),
    ("two channels", req(audio=audio_options(channels=2))),
    ("framerate zero", req(video=video_options(frame_rate=0))),
]


def _create(service: ServiceProcess, request: pb.CreateIngressRequest) -> pb.IngressInfo:
    async def call(client: Any) -> pb.IngressInfo:
        return await client.create_ingress(request)

    return service.api(call)


def _count(service: ServiceProcess) -> int:
    async def call(client: Any) -> int:
        return len((await client.list_ingress(pb.ListIngressRequest())).items)

    return service.api(call)


@pytest.mark.parametrize(("case", "request_", "message"), CREATE_CASES,
                         ids=[c[0] for c in CREATE_CASES])
def test_create_refused_with_exact_text(service: ServiceProcess, case: str,
                                        request_: pb.CreateIngressRequest, message: str) -> None:
    before = _count(service)
    with pytest.raises(ServerError) as err:
        _create(service, request_)
    assert (err.value.code, err.value.status, err.value.message) == (
        "invalid_argument", 400, message)
    assert _count(service) == before


@pytest.mark.parametrize(("case", "request_"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_create_accepted(service: ServiceProcess, case: str,
                         request_: pb.CreateIngressRequest) -> None:
    assert _create(service, request_).ingress_id.startswith("IN_")


def test_update_error_state_is_reset_to_inactive(tmp_path: Any) -> None:
    """Needs the store directly: only a session can put an ingress in ERROR."""
    import trio

    from api.service import EndpointUrls, IngressService
    from api.store import open_sqlite_store

    async def main() -> None:
        async with open_sqlite_store(tmp_path / "s.db") as store:
            service = IngressService(store, EndpointUrls("rtmp://h/x", "http://h/w"))
            info = await service.create(req())
            await store.update_state(info.ingress_id, pb.IngressState(
                status=pb.IngressState.ENDPOINT_ERROR, error="boom", started_at=5))
            updated = await service.update(pb.UpdateIngressRequest(
                ingress_id=info.ingress_id, name="again"))
            assert updated.state.status == pb.IngressState.ENDPOINT_INACTIVE
            assert updated.state.error == "" and updated.state.started_at == 5
            stored = await store.get(info.ingress_id)
            assert stored is not None and stored.state == updated.state

    trio.run(main)


def test_rtmp_passthrough_switch_allows_rtmp_without_transcoding() -> None:
    from api.errors import TwirpError
    from api.validation import validate_info

    info = pb.IngressInfo(input_type=pb.IngressInput.RTMP_INPUT, participant_identity="p",
                          enable_transcoding=False)
    with pytest.raises(TwirpError, match="bypassing transcoding impossible"):
        validate_info(info)  # the switch off: LiveKit's rule
    validate_info(info, rtmp_passthrough=True)
    info.video.CopyFrom(pb.IngressVideoOptions(
        preset=pb.IngressVideoEncodingPreset.H264_720P_30FPS_1_LAYER))
    with pytest.raises(TwirpError, match="video encoding options must be empty"):
        validate_info(info, rtmp_passthrough=True)
    url = pb.IngressInfo(input_type=pb.IngressInput.URL_INPUT, participant_identity="p",
                         enable_transcoding=False)
    with pytest.raises(TwirpError, match="bypassing transcoding impossible"):
        validate_info(url, rtmp_passthrough=True)  # only RTMP is let through
