"""relay/lksignal: LiveKit's client signalling core, by hand-built SignalResponses and
against a real livekit-server (the framing, path and join of a real session)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from livekit.protocol import models, rtc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

from relay import lksignal
from relay.lksignal import SignalClient, SignalProtocolError

CANDIDATE = json.dumps({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
                        "sdpMid": "0", "sdpMLineIndex": 0})


def response(**fields: object) -> bytes:
    return rtc.SignalResponse(**fields).SerializeToString()  # type: ignore[arg-type]


def join_bytes(interval: int = 5, timeout: int = 15) -> bytes:
    return response(join=rtc.JoinResponse(
        room=models.Room(name="room-a", sid="RM_1"),
        participant=models.ParticipantInfo(sid="PA_1", identity="ingress"),
        server_version="1.13.5", subscriber_primary=False,
        ice_servers=[rtc.ICEServer(urls=["stun:stun.example:3478"], username="u",
                                   credential="c")],
        ping_interval=interval, ping_timeout=timeout))


def request(data: bytes) -> rtc.SignalRequest:
    message = rtc.SignalRequest()
    message.ParseFromString(data)
    return message


def joined_client(now: float = 100.0) -> SignalClient:
    client = SignalClient()
    client.receive(join_bytes(), now)
    return client


# -- path ---------------------------------------------------------------------------------


def test_connect_path_carries_what_the_server_reads() -> None:
    path = lksignal.connect_path("tok en", version="0.1.0")
    parts = urlsplit(path)
    assert parts.path == "/rtc"
    assert parse_qs(parts.query) == {
        "access_token": ["tok en"], "auto_subscribe": ["0"], "sdk": ["python"],
        "version": ["0.1.0"], "protocol": ["17"]}
    assert SignalClient.connect_path is lksignal.connect_path
    again = parse_qs(urlsplit(lksignal.connect_path(
        "t", auto_subscribe=True, adaptive_stream=True, reconnect_sid="PA_1")).query)
    assert again["auto_subscribe"] == ["1"] and again["adaptive_stream"] == ["1"]
    assert again["reconnect"] == ["1"] and again["sid"] == ["PA_1"]


# -- join and publication -----------------------------------------------------------------


def test_join_is_summarised() -> None:
    client = SignalClient()
    assert client.joined is None and client.next_ping(0.0) is None
    [event] = client.receive(join_bytes(), 100.0)
    assert event == lksignal.Joined(
        room_name="room-a", room_sid="RM_1", participant_sid="PA_1",
        participant_identity="ingress", server_version="1.13.5",
        ice_servers=(lksignal.IceServer(("stun:stun.example:3478",), "u", "c"),),
        subscriber_primary=False, ping_interval=5.0, ping_timeout=15.0)
    assert isinstance(event, lksignal.Joined) and event.response is not None
    assert client.joined == event


def test_join_add_track_published_offer_answer_trickle() -> None:
    client = joined_client()
    data = client.add_track("TR_v", "camera", "video", source="camera", width=1280,
                            height=720, layers=[("low", 640, 360, 500_000),
                                                ("high", 1280, 720, 2_000_000)],
                            simulcast_codecs=[("h264", "TR_v")])
    add = request(data).add_track
    assert (add.cid, add.name, add.type, add.source) == (
        "TR_v", "camera", models.TrackType.VIDEO, models.TrackSource.CAMERA)
    assert [(x.quality, x.width, x.height, x.bitrate) for x in add.layers] == [
        (models.VideoQuality.LOW, 640, 360, 500_000),
        (models.VideoQuality.HIGH, 1280, 720, 2_000_000)]
    assert [(c.codec, c.cid) for c in add.simulcast_codecs] == [("h264", "TR_v")]
    assert client.pending_tracks == {"TR_v"}

    track = models.TrackInfo(sid="TR_abc", name="camera", type=models.TrackType.VIDEO)
    [published] = client.receive(response(track_published=rtc.TrackPublishedResponse(
        cid="TR_v", track=track)), 101.0)
    assert published == lksignal.TrackPublished(cid="TR_v", sid="TR_abc", name="camera")
    assert client.pending_tracks == frozenset()

    offer = request(client.offer("v=0 offer", id=3)).offer
    assert (offer.type, offer.sdp, offer.id) == ("offer", "v=0 offer", 3)
    [answer] = client.receive(response(answer=rtc.SessionDescription(
        type="answer", sdp="v=0 answer", id=3)), 102.0)
    assert answer == lksignal.Answer(sdp="v=0 answer", id=3)
    [offer_in] = client.receive(response(offer=rtc.SessionDescription(
        type="offer", sdp="v=0 sub", id=1)), 102.0)
    assert offer_in == lksignal.Offer(sdp="v=0 sub", id=1)
    assert request(client.answer("v=0 ans", id=1)).answer.type == "answer"

    trickle = request(client.trickle(CANDIDATE, "publisher")).trickle
    assert (trickle.candidateInit, trickle.target, trickle.final) == (
        CANDIDATE, rtc.SignalTarget.PUBLISHER, False)
    [cand] = client.receive(response(trickle=rtc.TrickleRequest(
        candidateInit=CANDIDATE, target=rtc.SignalTarget.SUBSCRIBER, final=True)), 103.0)
    assert cand == lksignal.Trickle(CANDIDATE, "subscriber", final=True)


def test_audio_track_and_enum_values() -> None:
    client = joined_client()
    add = request(client.add_track("TR_a", "mic", models.TrackType.AUDIO,
                                   source="microphone", disable_dtx=True,
                                   stereo=True)).add_track
    assert (add.type, add.source, add.disable_dtx, add.stereo) == (
        models.TrackType.AUDIO, models.TrackSource.MICROPHONE, True, True)
    with pytest.raises(ValueError, match="track type"):
        client.add_track("x", "x", "data-ish")
    with pytest.raises(ValueError, match="already"):
        client.add_track("TR_a", "mic", "audio")
    with pytest.raises(ValueError, match="target"):
        client.trickle(CANDIDATE, "both")
    with pytest.raises(ValueError, match="JSON"):
        client.trickle("candidate:1 ...")


def test_pending_tracks_are_bounded() -> None:
    client = joined_client()
    for i in range(lksignal.MAX_PENDING_TRACKS):
        client.add_track(f"c{i}", "t", "audio")
    with pytest.raises(RuntimeError):
        client.add_track("one-more", "t", "audio")


def test_other_responses_pass_through() -> None:
    client = joined_client()
    [event] = client.receive(response(room_update=rtc.RoomUpdate(
        room=models.Room(name="room-a"))), 101.0)
    assert isinstance(event, lksignal.OtherResponse) and event.kind == "room_update"
    [result] = client.receive(response(request_response=rtc.RequestResponse(
        request_id=7, reason=rtc.RequestResponse.Reason.NOT_ALLOWED, message="no")), 101.0)
    assert result == lksignal.RequestResult(7, "NOT_ALLOWED", "no")


# -- keep-alive ---------------------------------------------------------------------------


def test_ping_pong_rtt_and_deadlines() -> None:
    client = joined_client(now=100.0)
    assert client.next_ping(100.0) == 105.0
    ping = request(client.ping(105.0)).ping_req
    assert (ping.timestamp, ping.rtt) == (105_000, 0)
    assert client.next_ping(105.0) == 110.0
    [pong] = client.receive(response(pong_resp=rtc.Pong(
        last_ping_timestamp=105_000, timestamp=1_800_000_000_000)), 105.25)
    assert pong == lksignal.Pong(last_ping=105_000, timestamp=1_800_000_000_000, rtt=250)
    assert client.rtt_ms == 250
    assert request(client.ping(110.0)).ping_req.rtt == 250
    [legacy] = client.receive(response(pong=42), 110.1)
    assert legacy == lksignal.Pong(last_ping=None, timestamp=42)
    assert not client.timed_out(125.0)
    assert client.timed_out(125.2)


def test_no_pings_when_the_server_wants_none() -> None:
    client = SignalClient()
    client.receive(join_bytes(interval=0, timeout=0), 1.0)
    assert client.next_ping(1.0) is None and not client.timed_out(1e9)


# -- leave and errors ---------------------------------------------------------------------


def test_leave_both_ways() -> None:
    client = joined_client()
    leave = request(client.leave()).leave
    assert (leave.reason, leave.action) == (models.DisconnectReason.CLIENT_INITIATED,
                                            rtc.LeaveRequest.Action.DISCONNECT)
    assert client.closed and client.next_ping(200.0) is None
    assert client.receive(response(offer=rtc.SessionDescription(sdp="x")), 101.0) == []
    with pytest.raises(RuntimeError):
        client.offer("v=0")
    with pytest.raises(RuntimeError):
        client.leave()

    other = joined_client()
    [event] = other.receive(response(leave=rtc.LeaveRequest(
        reason=models.DisconnectReason.ROOM_DELETED, action=rtc.LeaveRequest.Action.DISCONNECT,
        can_reconnect=False)), 101.0)
    assert event == lksignal.Leave("ROOM_DELETED", "DISCONNECT", False)
    assert other.closed


def test_a_leave_may_come_instead_of_the_join() -> None:
    client = SignalClient()
    [event] = client.receive(response(leave=rtc.LeaveRequest(
        reason=models.DisconnectReason.JOIN_FAILURE)), 1.0)
    assert isinstance(event, lksignal.Leave) and event.reason == "JOIN_FAILURE"


@pytest.mark.parametrize("data, match", [
    (b"\xff\xff\xff", "not a SignalResponse"),
    (b"", "empty"),
    (b"\x00" * (lksignal.MAX_MESSAGE + 1), "limit"),
    (response(offer=rtc.SessionDescription(type="offer", sdp="x")), "before the join"),
    (response(pong=1), "before the join"),
])
def test_bad_input_before_the_join(data: bytes, match: str) -> None:
    client = SignalClient()
    with pytest.raises(SignalProtocolError, match=match):
        client.receive(data, 1.0)
    [event] = client.receive(join_bytes(), 2.0)  # still usable
    assert isinstance(event, lksignal.Joined)


@pytest.mark.parametrize("data, match", [
    (join_bytes(), "second join"),
    (response(track_published=rtc.TrackPublishedResponse(cid="nobody")), "unknown cid"),
    (response(trickle=rtc.TrickleRequest(candidateInit="nope")), "not JSON"),
    (response(trickle=rtc.TrickleRequest(candidateInit="[1]")), "JSON object"),
    (response(trickle=rtc.TrickleRequest(candidateInit=CANDIDATE, target=7)), "target"),
    (response(answer=rtc.SessionDescription(type="offer", sdp="x")), "type"),
])
def test_bad_input_after_the_join(data: bytes, match: str) -> None:
    client = joined_client()
    with pytest.raises(SignalProtocolError, match=match):
        client.receive(data, 101.0)
    assert not client.closed and client.joined is not None
    assert client.receive(response(pong=1), 102.0) == [lksignal.Pong(None, 1)]


def test_sending_before_the_join_is_a_bug() -> None:
    client = SignalClient()
    for send in (lambda: client.add_track("c", "n", "audio"), lambda: client.offer("v=0"),
                 lambda: client.answer("v=0"), lambda: client.trickle(CANDIDATE),
                 lambda: client.ping(0.0)):
        with pytest.raises(RuntimeError):
            send()
    assert request(client.leave()).WhichOneof("message") == "leave"


# -- a real livekit-server ----------------------------------------------------------------


async def _ws_session(host: str, port: int, path: str, client: SignalClient,
                      ) -> list[lksignal.SignalEvent]:
    """Open the signal WebSocket over plain TCP with wsproto, read until joined, ping
    once and read until the pong, then leave. The events seen, in order."""
    events: list[lksignal.SignalEvent] = []
    ws = WSConnection(ConnectionType.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=path)))
        buffer = bytearray()
        pinged = False
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise AssertionError("server closed the connection")
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, RejectConnection):
                    raise AssertionError(f"rejected with {ev.status_code}")
                if isinstance(ev, TextMessage):
                    raise AssertionError("a text message: the server switched to JSON")
                if isinstance(ev, CloseConnection):
                    raise AssertionError(f"closed: {ev.code} {ev.reason}")
                if isinstance(ev, AcceptConnection):
                    continue
                if isinstance(ev, BytesMessage):
                    buffer += ev.data
                    if not ev.message_finished:
                        continue
                    now = trio.current_time()
                    got = client.receive(bytes(buffer), now)
                    buffer.clear()
                    events.extend(got)
                    if any(isinstance(e, lksignal.Pong) for e in got):
                        await stream.send_all(ws.send(Message(data=client.leave())))
                        return events
                    if not pinged and client.joined is not None:
                        pinged = True
                        await stream.send_all(ws.send(Message(data=client.ping(now))))


@pytest.mark.slow
async def test_joins_a_real_livekit_server(livekit: object) -> None:
    from livekit import api

    from tests.livekit import API_KEY, API_SECRET, LiveKitServer

    assert isinstance(livekit, LiveKitServer)
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity("lksignal-probe")
             .with_grants(api.VideoGrants(room_join=True, room="lksignal-room",
                                          can_publish=True, can_subscribe=False))
             .to_jwt())
    client = SignalClient()
    with trio.fail_after(20):
        events = await _ws_session("127.0.0.1", livekit.port,
                                   client.connect_path(token, version="0.1.0"), client)
    joined = events[0]
    assert isinstance(joined, lksignal.Joined)
    assert joined.room_name == "lksignal-room"
    assert joined.participant_identity == "lksignal-probe"
    assert joined.participant_sid.startswith("PA_") and joined.room_sid.startswith("RM_")
    assert joined.server_version == "1.13.5"
    assert joined.ping_interval == 5.0 and joined.ping_timeout == 15.0
    assert joined.subscriber_primary is False  # no can_subscribe: the publisher PC leads
    assert all(not isinstance(e, lksignal.Offer) for e in events)
    pong = events[-1]
    assert isinstance(pong, lksignal.Pong) and pong.rtt is not None and pong.rtt < 5000
