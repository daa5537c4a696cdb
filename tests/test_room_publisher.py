"""relay/worker/room: our publisher. The offer rewrite by hand; simulcast layers,
audio and leaving against a real livekit-server with the SDK as subscriber."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import trio
import trio.testing
from livekit import api
from livekit.protocol import models

from relay.worker import aio_thread
from relay.worker.encode import LayerEncoder, OpusEncoder
from relay.worker.room import RoomPublisher, VideoLayer
from relay.worker.room._offer import (
    RID_URI,
    SectionStreams,
    answered_extension_ids,
    answered_payload_type,
    publish_offer,
    rids_for,
)
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, watch, watch_layer_stats

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=video 9 UDP/TLS/RTP/SAVPF 99", "c=IN IP4 0.0.0.0", "a=sendonly",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=mid:0", "a=msid:s t", "a=rtcp-mux", "a=ssrc:1111 cname:c",
    "a=rtpmap:99 H264/90000",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=sendonly",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid", "a=mid:1", "a=rtcp-mux",
    "a=ssrc:2222 cname:c", "a=rtpmap:96 opus/48000/2", ""])


def test_offer_rewrite_simulcast_and_single() -> None:
    sdp = publish_offer(OFFER, [SectionStreams("0", (5, 6, 7), ("q", "h", "f"), "me"),
                                SectionStreams("1", (9,), (), "me")])
    video, audio = sdp.split("m=audio")
    assert "a=ssrc" not in video
    assert f"a=extmap:10 {RID_URI}" in video
    assert video.index("a=extmap:10") < video.index("a=mid:0")
    assert "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f" in video
    assert "a=ssrc:9 cname:me" in audio and "2222" not in audio
    assert answered_extension_ids(sdp, "0")[RID_URI] == 10
    assert answered_payload_type(sdp, "1", "opus") == 96
    assert rids_for(1) == () and rids_for(2) == ("q", "h")


def test_offer_rewrite_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="not in the offer"):
        publish_offer(OFFER, [SectionStreams("7", (1,))])
    with pytest.raises(ValueError, match="one SSRC per rid"):
        publish_offer(OFFER, [SectionStreams("0", (1,), ("q", "h"))])
    with pytest.raises(ValueError):
        rids_for(4)
    with pytest.raises(ValueError, match="no VP8"):
        answered_payload_type(OFFER, "0", "VP8")


def _token(room: str) -> str:
    return (api.AccessToken(API_KEY, API_SECRET).with_identity("publisher")
            .with_kind("ingress")
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                         can_subscribe=False))
            .to_jwt())


LAYERS = [VideoLayer(models.VideoQuality.LOW, 320, 180, 200_000),
          VideoLayer(models.VideoQuality.MEDIUM, 640, 360, 500_000),
          VideoLayer(models.VideoQuality.HIGH, 1280, 720, 1_500_000)]


async def _publish(server: LiveKitServer, room: str, codec: str, seconds: float,
                   layers: list[VideoLayer], audio: bool = False,
                   congestion: list[object] | None = None) -> list[object]:
    """Publish moving noise (and a tone) for `seconds` while a subscriber watches;
    the TrackInfos the server gave back (and into `congestion`: the estimate, the
    feedbacks taken, the layers allowed at the end)."""
    async with aio_thread.open_asyncio_thread(), trio.open_nursery() as nursery:
        publisher = RoomPublisher()
        await nursery.start(publisher.run, server.url, _token(room))
        video = await publisher.publish_video(layers, codec=codec, name="cam",
                                              source=models.TrackSource.CAMERA)
        sound = None
        if audio:
            sound = await publisher.publish_audio(name="mic",
                                                  source=models.TrackSource.MICROPHONE,
                                                  stereo=True, dtx=False)
        encoders = [LayerEncoder(codec, layer.width, layer.height, layer.bitrate, 30)
                    for layer in layers]
        opus = OpusEncoder(2, 96_000, dtx=False)
        noise = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
        tone = (np.sin(np.arange(960) * 2 * math.pi * 440 / 48_000) * 8000).astype(np.int16)
        start = trio.current_time()
        for index in range(int(seconds * 30)):
            picture = av.VideoFrame.from_ndarray(np.roll(noise, index * 8, axis=1),
                                                 format="rgb24")
            for layer, encoder in enumerate(encoders):
                wanted = publisher.take_keyframe_request(video, layer)
                for frame in await trio.to_thread.run_sync(encoder.encode, picture,
                                                           index * 3000, wanted):
                    publisher.send(video, layer, frame.payloads, frame.timestamp)
            if sound is not None:
                samples = av.AudioFrame.from_ndarray(
                    np.repeat(tone, 2)[None, :][:, :1600 * 2], format="s16",
                    layout="stereo")
                samples.sample_rate = 48_000
                for packet, timestamp in opus.encode(samples):
                    publisher.send(sound, 0, (packet,), timestamp, marker=False)
            await trio.sleep_until(start + (index + 1) / 30)
        if congestion is not None:
            peer = publisher._peer
            assert peer is not None and peer.congestion is not None
            congestion += [publisher.estimate, peer.congestion.estimator.feedbacks,
                           publisher.layers_allowed(video)]
        nursery.cancel_scope.cancel()  # leaves the room
    return [track.info for track in publisher.tracks]


@pytest.mark.slow
async def test_every_layer_reaches_a_subscriber_that_selects_it(
        livekit: LiveKitServer) -> None:
    async with trio.open_nursery() as nursery:
        seen: dict[str, object] = {}

        async def viewer() -> None:
            seen.update(await trio.to_thread.run_sync(lambda: watch_layer_stats(
                livekit.url, "room-publisher", {"HIGH": 2, "MEDIUM": 1, "LOW": 0},
                ramp_to=1_300_000)))

        nursery.start_soon(viewer)
        congestion: list[object] = []
        tracks = await _publish(livekit, "room-publisher", "h264", 45, LAYERS,
                                congestion=congestion)
    info = tracks[0]
    assert info.simulcast and info.mime_type == "video/H264"
    # the server took transport-wide CC: its feedback came (~10 a second) and, on
    # loopback, left room for every layer
    estimate, feedbacks, allowed = congestion
    assert feedbacks > 100 and allowed == 3, congestion
    assert estimate >= 1.1 * sum(layer.bitrate for layer in LAYERS), congestion
    assert [(layer.width, layer.height) for layer in info.layers] == [
        (320, 180), (640, 360), (1280, 720)]
    for name, layer in zip(("LOW", "MEDIUM", "HIGH"), LAYERS, strict=True):
        got = seen[name]
        size, _ = got.sizes.most_common(1)[0]
        assert size == (layer.width, layer.height), (name, got.sizes)
        assert got.fps >= 27, (name, got.fps)
        assert abs(got.kbps * 1000 - layer.bitrate) <= 0.2 * layer.bitrate, (name, got.kbps)


@pytest.mark.slow
async def test_vp8_single_layer_with_opus_audio_and_leaving(livekit: LiveKitServer) -> None:
    async with trio.open_nursery() as nursery:
        seen: list[object] = []

        async def viewer() -> None:
            seen.append(await trio.to_thread.run_sync(lambda: watch(
                livekit.url, "room-publisher-vp8", 30, until_left="publisher")))

        nursery.start_soon(viewer)
        await trio.sleep(2)
        tracks = await _publish(livekit, "room-publisher-vp8", "vp8", 8, LAYERS[-1:],
                                audio=True)
    assert not tracks[0].simulcast and tracks[0].mime_type == "video/VP8"
    assert tracks[1].mime_type == "audio/opus" and tracks[1].stereo
    result = seen[0]
    assert result.video_sizes.most_common(1)[0][0] == (1280, 720)
    assert result.fps() >= 25
    assert max(result.audio_rms) > 1000  # the tone, not silence
    assert result.left  # the publisher left at the end: the viewer saw it go


async def test_a_message_in_the_upgrade_segment_is_read_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """livekit-server writes the JoinResponse right behind its 101: both often come in
    one TCP segment, and the join must not wait for the next message (it did: joins
    took 2-10 s, until the server's next participant update)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Message, Request

    from relay.worker.room import _socket

    client_end, server_end = trio.testing.memory_stream_pair()

    async def fake_open_tcp_stream(host: str, port: int) -> object:
        return client_end

    async def server() -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await server_end.receive_some(65536))
            if any(isinstance(e, Request) for e in ws.events()):
                break
        await server_end.send_all(ws.send(AcceptConnection())
                                  + ws.send(Message(data=b"join")))

    monkeypatch.setattr(trio, "open_tcp_stream", fake_open_tcp_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        socket = await _socket.open_signal_socket("ws://example.invalid", "/rtc")
        with trio.fail_after(1):
            assert await socket.receive() == b"join"


async def test_a_bad_server_candidate_costs_that_candidate_only() -> None:
    """A trickled candidate aiortc cannot read is logged and skipped: the session
    goes on (it used to escape as a ValueError and crash the worker)."""
    from relay.worker.room._peer import PublisherPeer

    async def check() -> None:
        peer = PublisherPeer([], lambda reason: None)
        try:
            peer._answered = True
            await peer.add_candidate('{"candidate": "candidate:garbage", "sdpMid": "0"}')
            await peer.add_candidate('{"candidate": 7}')
            await peer.add_candidate('{"candidate": ""}')
        finally:
            await peer.close()

    async with aio_thread.open_asyncio_thread():
        await aio_thread.call(check)


class _RecordingSender:
    """What RtpStream uses of its PacketSender, recording what is sent (unprotected)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.sent: list[bytes] = []

    def send_rtp(self, data: bytes) -> None:
        assert self.lock.locked()
        self.sent.append(data)

    send_rtcp = send_rtp


class _Sequences:
    """A stand-in for the PeerConnection's transport-wide CC (sequence, records)."""

    def __init__(self) -> None:
        self.next = 65534
        self.records: list[tuple[int, int]] = []

    def next_sequence(self) -> int:
        self.next = (self.next + 1) & 0xFFFF
        return self.next

    def sent(self, sequence: int, size: int) -> None:
        self.records.append((sequence, size))


def test_rtp_packets_read_back_with_aiortc() -> None:
    """Our packet writer against an independent reader (aiortc's RtpPacket.parse):
    header fields, marker on the frame's last packet, mid/rid/abs-send-time and the
    transport-wide sequence in one-byte extensions; NACKed packets are sent again."""
    import asyncio

    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import RTCP_RTPFB_NACK, HeaderExtensionsMap, RtcpRtpfbPacket, RtpPacket

    from relay.worker.room._offer import ABS_SEND_TIME_URI, MID_URI, TWCC_URI
    from relay.worker.room._rtp import RtpStream

    ids = {MID_URI: 1, ABS_SEND_TIME_URI: 3, RID_URI: 10, TWCC_URI: 5}
    transport, sequences = _RecordingSender(), _Sequences()
    stream = RtpStream(None, transport, ssrc=0xDEADBEEF, payload_type=102,
                       clock_rate=90_000, mid="0", rid="f", extension_ids=ids, cname="c",
                       congestion=sequences)
    stream.send_frame([b"a" * 1000, b"b" * 10], 3000)
    stream.send_frame([b"c"], 6000, marker_last=False)

    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]))
    packets = [RtpPacket.parse(data, extensions) for data in transport.sent]
    assert [p.payload for p in packets] == [b"a" * 1000, b"b" * 10, b"c"]
    assert [p.marker for p in packets] == [0, 1, 0]
    assert {(p.ssrc, p.payload_type) for p in packets} == {(0xDEADBEEF, 102)}
    first = packets[0].sequence_number
    assert [p.sequence_number for p in packets] == [first, (first + 1) & 0xFFFF,
                                                    (first + 2) & 0xFFFF]
    assert packets[1].timestamp == packets[0].timestamp
    assert (packets[2].timestamp - packets[0].timestamp) & 0xFFFFFFFF == 3000
    assert {(p.extensions.mid, p.extensions.rtp_stream_id) for p in packets} == {("0", "f")}
    assert all(p.extensions.abs_send_time is not None for p in packets)
    assert [p.extensions.transport_sequence_number for p in packets] == [65535, 0, 1]
    assert sequences.records == [(65535, len(transport.sent[0])), (0, len(transport.sent[1])),
                                 (1, len(transport.sent[2]))]

    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=0xDEADBEEF)
    nack.lost = [(first + 1) & 0xFFFF, (first + 500) & 0xFFFF]  # the second never sent
    asyncio.run(stream._handle_rtcp_packet(nack))
    assert transport.sent[3:] == [transport.sent[1]] and stream.retransmitted == 1

    audio_sender = _RecordingSender()
    audio = RtpStream(None, audio_sender, ssrc=7, payload_type=111, clock_rate=48_000,
                      mid="1", extension_ids={MID_URI: 1}, cname="c")
    audio.send_frame([b"opus"], 960, marker_last=False)
    packet = RtpPacket.parse(audio_sender.sent[0], extensions)
    assert (packet.extensions.mid, packet.extensions.rtp_stream_id) == ("1", None)
    assert packet.payload == b"opus" and packet.extensions.transport_sequence_number is None
