"""The console's parts without a browser: sign-in sessions (lifetimes, CSRF), the
forms' mapping to API requests and back, and the pages through Quart's test client
over a real IngressService and SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from livekit.protocol import ingress as pb
from livekit.protocol import models
from quart import Response
from quart_trio import QuartTrio

from api.service import EndpointUrls, IngressService
from api.store import open_sqlite_store
from relay.service.console import ConsoleSessions, ConsoleSettings, console_blueprint
from relay.service.console import _forms as forms
from relay.service.console._sessions import (
    FAILURE_WINDOW,
    IDLE_LIFETIME,
    MAX_CLIENTS,
    MAX_FAILURES,
    MAX_LIFETIME,
    MAX_SESSIONS,
)
from tests.clock import ManualClock

KEY, SECRET = "APIconsole", "s" * 40


def test_only_the_node_key_pair_signs_in() -> None:
    sessions = ConsoleSessions(KEY, SECRET)
    assert sessions.sign_in(KEY, SECRET + "x") is None
    assert sessions.sign_in(KEY + "x", SECRET) is None
    assert sessions.sign_in("", "") is None
    session = sessions.sign_in(KEY, SECRET)
    assert session is not None and SECRET not in (session.session_id + session.csrf_token)
    assert sessions.get(session.session_id) is session
    assert sessions.csrf_ok(session, session.csrf_token)
    assert not sessions.csrf_ok(session, "") and not sessions.csrf_ok(session, "forged")


def test_sessions_end_when_idle_or_too_old_and_on_sign_out() -> None:
    clock = ManualClock()
    sessions = ConsoleSessions(KEY, SECRET, clock=clock)
    idle = sessions.open()
    clock.now += IDLE_LIFETIME + 1
    assert sessions.get(idle.session_id) is None

    used = sessions.open()
    while clock.now - used.signed_in_at < MAX_LIFETIME:
        clock.now += IDLE_LIFETIME / 2
        assert sessions.get(used.session_id) is used  # each use restarts the idle time
    clock.now += IDLE_LIFETIME / 2
    assert sessions.get(used.session_id) is None  # but not past the whole lifetime

    gone = sessions.open()
    sessions.sign_out(gone.session_id)
    assert sessions.get(gone.session_id) is None
    assert sessions.get("") is None


def test_sessions_are_bounded_oldest_first() -> None:
    sessions = ConsoleSessions(KEY, SECRET)
    first = sessions.open()
    for _ in range(MAX_SESSIONS):
        sessions.open()
    assert sessions.get(first.session_id) is None


def test_wrong_sign_ins_from_one_address_wait_for_the_window() -> None:
    clock = ManualClock()
    sessions = ConsoleSessions(KEY, SECRET, clock=clock)
    for _ in range(MAX_FAILURES):
        assert sessions.retry_after("10.0.0.1") == 0
        assert sessions.sign_in(KEY, "guess", "10.0.0.1") is None
        clock.now += 1
    assert sessions.retry_after("10.0.0.1") == pytest.approx(FAILURE_WINDOW - MAX_FAILURES)
    assert sessions.retry_after("10.0.0.2") == 0  # another address is not held back
    clock.now += FAILURE_WINDOW - MAX_FAILURES + 0.5  # the first failure leaves the window
    assert sessions.retry_after("10.0.0.1") == 0
    assert sessions.sign_in(KEY, SECRET, "10.0.0.1") is not None  # and a success forgets
    assert sessions.sign_in(KEY, "guess", "10.0.0.1") is None
    assert sessions.retry_after("10.0.0.1") == 0


def test_failures_are_remembered_for_a_bounded_number_of_addresses() -> None:
    sessions = ConsoleSessions(KEY, SECRET)
    for _ in range(MAX_FAILURES):
        sessions.sign_in(KEY, "guess", "first")
    assert sessions.retry_after("first") > 0
    for i in range(MAX_CLIENTS):
        sessions.sign_in(KEY, "guess", f"other {i}")
    assert sessions.retry_after("first") == 0  # forgotten, oldest first
    assert len(sessions._failures) == MAX_CLIENTS


def test_a_custom_form_becomes_the_api_request_and_back() -> None:
    fields = {"name": "cam", "input_type": "WHIP_INPUT", "room_name": "r",
              "participant_identity": "p", "enabled": "on", "transcoding": "on",
              "video_mode": "custom", "video_codec": "VP8", "frame_rate": "25",
              "layer0_quality": "HIGH", "layer0_width": "1280", "layer0_height": "720",
              "layer0_bitrate": "2000000", "layer1_quality": "LOW", "layer1_width": "640",
              "layer1_height": "360", "layer1_bitrate": "600000",
              "audio_mode": "custom", "audio_bitrate": "64000", "audio_channels": "1",
              "disable_dtx": "on"}
    request = forms.IngressForm.from_fields(fields).create_request()
    assert request.input_type == pb.IngressInput.WHIP_INPUT and request.enable_transcoding
    assert request.video.options.video_codec == models.VideoCodec.VP8
    assert [(layer.quality, layer.width, layer.height, layer.bitrate)
            for layer in request.video.options.layers] == [
        (models.VideoQuality.HIGH, 1280, 720, 2_000_000),
        (models.VideoQuality.LOW, 640, 360, 600_000)]
    assert (request.audio.options.bitrate, request.audio.options.channels,
            request.audio.options.disable_dtx) == (64000, 1, True)
    info = pb.IngressInfo(input_type=request.input_type, name=request.name,
                          room_name=request.room_name,
                          participant_identity=request.participant_identity,
                          enable_transcoding=True, video=request.video, audio=request.audio,
                          enabled=True)
    again = forms.IngressForm.from_info(info)
    assert again.create_request() == request


def test_presets_and_defaults() -> None:
    request = forms.IngressForm.from_fields({
        "input_type": "RTMP_INPUT", "video_preset": "H264_1080P_30FPS_3_LAYERS",
        "audio_preset": "OPUS_MONO_64KBS"}).create_request()
    assert request.video.preset == pb.IngressVideoEncodingPreset.H264_1080P_30FPS_3_LAYERS
    assert request.audio.preset == pb.IngressAudioEncodingPreset.OPUS_MONO_64KBS
    assert not request.enabled  # an unchecked box is not sent by the browser
    plain = forms.IngressForm.from_fields({"enabled": "on"}).create_request()
    assert not plain.HasField("video") and not plain.HasField("audio")
    assert not plain.HasField("enable_transcoding")


@pytest.mark.parametrize(("fields", "field", "text"), [
    ({"video_mode": "custom", "frame_rate": "fast"}, "video", "frame rate"),
    ({"video_mode": "custom", "frame_rate": "30", "layer0_width": "wide"}, "video",
     "layer width"),
    ({"audio_mode": "custom", "audio_bitrate": "-5"}, "audio", "audio bitrate"),
    ({"input_type": "SMOKE_SIGNALS"}, "input_type", "unknown value"),
])
def test_what_the_api_could_not_read_is_told_at_its_field(
        fields: dict[str, str], field: str, text: str) -> None:
    with pytest.raises(forms.FormError) as refused:
        forms.IngressForm.from_fields(fields).create_request()
    assert refused.value.field == field and text in str(refused.value)


@pytest.mark.parametrize(("message", "field"), [
    ("invalid ingress: no participant identity", "participant_identity"),
    ("invalid ingress: no room name", "room_name"),
    ("invalid ingress: missing URL parameter", "url"),
    ("invalid ingress: invalid url scheme ftp", "url"),
    ("invalid video parameters: invalid framerate", "video"),
    ("invalid ingress: layer width must be even", "video"),
    ("invalid audio parameters: invalid audio channel count", "audio"),
    ("invalid transcoding bypass configuration: video encoding options must be empty if "
     "transcoding is disabled", "transcoding"),
    ("ingress does not exist", ""),
])
def test_api_messages_go_next_to_their_field(message: str, field: str) -> None:
    assert forms.field_of_error(message) == field


def test_publisher_settings_per_input() -> None:
    rtmp = forms.publisher_settings(pb.IngressInfo(
        input_type=pb.IngressInput.RTMP_INPUT, url="rtmp://host/live", stream_key="K"))
    assert [(s.label, s.value) for s in rtmp[:2]] == [("OBS Server", "rtmp://host/live"),
                                                      ("OBS Stream Key", "K")]
    assert rtmp[2].value.endswith("-f flv rtmp://host/live/K")
    whip = forms.publisher_settings(pb.IngressInfo(
        input_type=pb.IngressInput.WHIP_INPUT, url="http://host/w", stream_key="K"))
    assert [s.value for s in whip] == ["http://host/w", "K", "http://host/w/K"]


@asynccontextmanager
async def console_app(tmp_path: Path, *, dev: bool = False) -> AsyncIterator[QuartTrio]:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        service = IngressService(store, EndpointUrls("rtmp://host/live", "http://host/w"))
        app = QuartTrio("console-test")
        app.register_blueprint(console_blueprint(
            service, ConsoleSettings(KEY, SECRET, "ws://127.0.0.1:7880", dev=dev)))
        yield app


async def csrf_of(page: Response) -> str:
    """The CSRF token in a page's form."""
    return (await page.get_data(as_text=True)).split('name="csrf" value="')[1].split('"')[0]


async def test_pages_need_a_session_and_posts_a_csrf_token(tmp_path: Path) -> None:
    async with console_app(tmp_path) as app:
        client = app.test_client()
        assert (await client.get("/console/")).headers["location"] == "/console/sign-in"
        assert (await client.post("/console/new", form={"name": "x"})).status_code == 403
        form_page = await client.get("/console/sign-in")
        assert "frame-ancestors 'none'" in form_page.headers["content-security-policy"]
        csrf = await csrf_of(form_page)
        refused = await client.post("/console/sign-in", form={
            "csrf": csrf, "api_key": KEY, "api_secret": "wrong"})
        assert refused.status_code == 401
        csrf = await csrf_of(refused)  # each sign-in form comes with a token of its own
        signed = await client.post("/console/sign-in", form={
            "csrf": csrf, "api_key": KEY, "api_secret": SECRET})
        assert signed.status_code == 302
        assert "HttpOnly" in signed.headers["set-cookie"]
        assert "SameSite=Strict" in signed.headers["set-cookie"]
        page = await client.get("/console/new")
        token = await csrf_of(page)
        fields = {"name": "n", "input_type": "RTMP_INPUT", "room_name": "r",
                  "participant_identity": "p", "enabled": "on"}
        assert (await client.post("/console/new", form=fields)).status_code == 403
        created = await client.post("/console/new", form={**fields, "csrf": token})
        assert created.status_code == 302
        ingress_page = await client.get(created.headers["location"])
        assert "OBS Stream Key" in await ingress_page.get_data(as_text=True)
        rows = await (await client.get("/console/rows")).get_data(as_text=True)
        assert 'data-status="inactive"' in rows


async def test_dev_mode_opens_without_sign_in_and_says_so(tmp_path: Path) -> None:
    async with console_app(tmp_path, dev=True) as app:
        client = app.test_client()
        page = await client.get("/console/")
        assert page.status_code == 200
        assert "Development mode" in await page.get_data(as_text=True)
        # the session the first page opened still wants its CSRF token on a POST
        assert (await client.post("/console/new", form={})).status_code == 403


async def test_room_filter_304_when_unchanged_secure_cookie_over_tls(tmp_path: Path) -> None:
    async with console_app(tmp_path) as app:
        client = app.test_client()
        form_page = await client.get("/console/sign-in", scheme="https")
        signed = await client.post("/console/sign-in", scheme="https", form={
            "csrf": await csrf_of(form_page), "api_key": KEY, "api_secret": SECRET})
        assert signed.status_code == 302 and "Secure" in signed.headers["set-cookie"]
        token = await csrf_of(await client.get("/console/new", scheme="https"))
        for room in ("stage", "backstage"):
            created = await client.post("/console/new", scheme="https", form={
                "csrf": token, "name": f"in {room}", "input_type": "RTMP_INPUT",
                "room_name": room, "participant_identity": "p", "enabled": "on"})
            assert created.status_code == 302
        reply = await client.get("/console/rows?room=stage", scheme="https")
        rows = await reply.get_data(as_text=True)
        assert "in stage" in rows and "in backstage" not in rows
        again = await client.get("/console/rows?room=stage", scheme="https",
                                 headers={"if-none-match": reply.headers["etag"]})
        assert again.status_code == 304 and not await again.get_data()  # unchanged
        everything = await (await client.get("/console/", scheme="https")).get_data(
            as_text=True)
        assert "in stage" in everything and "in backstage" in everything


async def test_odd_tokens_and_credentials_are_refused_not_errors(tmp_path: Path) -> None:
    """Text that is not ASCII in a token or a secret is a wrong one (403/401), not a
    server error (hmac.compare_digest refuses non-ASCII str)."""
    async with console_app(tmp_path) as app:
        client = app.test_client()
        await client.get("/console/sign-in")
        assert (await client.post("/console/sign-in", form={
            "csrf": "żółw", "api_key": KEY, "api_secret": SECRET})).status_code == 403
        form_page = await client.get("/console/sign-in")
        assert (await client.post("/console/sign-in", form={
            "csrf": await csrf_of(form_page), "api_key": "ключ",
            "api_secret": "秘密"})).status_code == 401


async def test_the_sign_in_form_answers_429_after_too_many_wrong_secrets(
        tmp_path: Path) -> None:
    async with console_app(tmp_path) as app:
        client = app.test_client()
        for _ in range(MAX_FAILURES):
            form_page = await client.get("/console/sign-in")
            refused = await client.post("/console/sign-in", form={
                "csrf": await csrf_of(form_page), "api_key": KEY, "api_secret": "guess"})
            assert refused.status_code == 401
        form_page = await client.get("/console/sign-in")
        held = await client.post("/console/sign-in", form={
            "csrf": await csrf_of(form_page), "api_key": KEY, "api_secret": SECRET})
        assert held.status_code == 429
        assert 0 < int(held.headers["retry-after"]) <= FAILURE_WINDOW + 1
