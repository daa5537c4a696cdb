"""Regenerate the seed corpora (fuzz/corpus/*/seed-*) from the real captures.

Seeds are slices of the ffmpeg/PyAV captures plus a few hand-built messages for paths
those publishers never take (aggregate messages, AMF3, pings, multitrack, ModEx...),
for the egress gate's request parser the requests FFmpeg and the urllib probe send, and
for the psrpc core the Redis messages its fixed exchange meets, for the LiveKit signalling
core the SignalResponses a publisher meets.
Crashers and merged fuzzer finds live beside them under other names and are kept.
Run: ``python fuzz/make_corpus.py`` (deterministic; rewrites only ``seed-*`` files).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CORPUS, HANDSHAKE_LEN, DetRandom, capture
from fuzz_flv import FLV_HEADER, flv_tag
from fuzz_lksignal import CID, PING_MS, join_response, published, response
from fuzz_lksignal import MODES as LKSIGNAL_MODES
from fuzz_proxy import MODES as PROXY_MODES
from fuzz_psrpc import CLIENT_ID, NOW, RID, SERVER_ID, T0
from fuzz_psrpc import MODES as PSRPC_MODES
from fuzz_session import PUBLISH_END
from livekit.protocol import models, rtc

import rtmp
from relay import psrpc
from relay.worker._proxy_requests import HEAD_LIMIT
from rtmp._handshake import client_hello

FFMPEG, HEVC, AV1 = "ffmpeg51_h264_aac", "pyav_hevc_aac", "pyav_av1_opus"
FRAME_CUT = 600  # coded frames are opaque to the parser: keep seeds small


def cut(msg: rtmp.RTMPMessage) -> bytes:
    """The payload, shortened unless it is a decoder configuration (parsed in full)."""
    tag = rtmp.FLVTag(msg.type_id, 0, 0, msg.payload)
    configs = (rtmp.VideoConfig, rtmp.AudioConfig)
    if any(isinstance(ev, configs) for ev in rtmp.parse_tag(tag)):
        return msg.payload
    return msg.payload[:FRAME_CUT]


def messages(name: str) -> list[rtmp.RTMPMessage]:
    """Every RTMP message of a capture, in order."""
    reader = rtmp.ChunkReader()
    reader.feed(capture(name)[HANDSHAKE_LEN:])
    out = []
    while (msg := reader.next_message()) is not None:
        out.append(msg)
    return out


def cmd(w: rtmp.ChunkWriter, name: str, txn: float, *args: object, sid: int = 0) -> bytes:
    return w.write(3, 20, sid, 0, rtmp.amf0_encode(name, txn, *args))


def session_seeds() -> dict[str, bytes]:
    ff, hevc, av1 = capture(FFMPEG), capture(HEVC), capture(AV1)
    seeds = {
        "raw-c0c1": b"\x00" + ff[:1537],
        "raw-ffmpeg-publish": b"\x00" + ff[:5000],
        "raw-av1-full": b"\x00" + av1,
        "hs-ffmpeg": b"\x01" + ff[HANDSHAKE_LEN:5000],
        "hs-hevc": b"\x01" + hevc[HANDSHAKE_LEN:6600],
        "hs-av1": b"\x01" + av1[HANDSHAKE_LEN:5000],
        "h264-media": b"\x02" + ff[PUBLISH_END:9000],
        "h264-tail": b"\x02" + ff[-3000:],
        "hevc-media": b"\x03" + hevc[PUBLISH_END:7000],
        "av1-media": b"\x03" + av1[PUBLISH_END:6000],
    }
    plain = client_hello(DetRandom(b"c"), digest=False)
    seeds["raw-plain-handshake"] = b"\x00" + plain + bytes(1536) + b"\x03" + bytes(11)

    # after the handshake (chunk size 128): every command and control message
    w = rtmp.ChunkWriter(128)
    props = {
        "app": "live",
        "tcUrl": "rtmp://h/live",
        "objectEncoding": 3.0,
        "fourCcList": ["hvc1", "av01", "Opus"],
        "videoFourCcInfoMap": {"hvc1": 7.0},
        "capsEx": 15.0,
    }
    data = w.write(2, 5, 0, 0, struct.pack(">I", 1000))  # window ack size
    data += w.set_chunk_size(300)
    data += cmd(w, "connect", 1.0, props)
    data += w.write(2, 4, 0, 0, struct.pack(">HI", 6, 77))  # ping request
    data += w.write(2, 4, 0, 0, struct.pack(">HI", 7, 78))  # ping response
    data += w.write(2, 3, 0, 0, struct.pack(">I", 100))  # ack
    data += w.write(2, 6, 0, 0, struct.pack(">IB", 1000, 2))  # peer bandwidth
    data += cmd(w, "releaseStream", 2.0, None, "k")
    data += cmd(w, "FCPublish", 3.0, None, "k")
    data += cmd(w, "createStream", 4.0, None)
    data += cmd(w, "createStream", 5.0, None)
    data += w.write(4, 20, 1, 0, rtmp.amf0_encode("publish", 6.0, None, "app/k?x=1", "live"))
    data += w.write(6, 18, 1, 0, rtmp.amf0_encode("@setDataFrame", "onMetaData", {"w": 1.0}))
    amf3 = b"\x00" + rtmp.amf0_encode("getStreamLength", 7.0, None) + b"\x11"
    data += w.write(3, 17, 0, 0, amf3 + rtmp.amf3_encode({"a": [1, "b"]}))
    data += w.write(6, 15, 1, 0, b"\x00" + rtmp.amf0_encode("onCuePoint", rtmp.AVMPlus([1.5])))
    data += w.write(70, 9, 1, 0x1000000, b"\x17\x02\x00\x00\x00")  # 2-byte csid, ext ts
    data += w.write(400, 8, 1, 0x1000021, b"\x2f" + bytes(300))  # 3-byte csid, type 3 ext
    data += w.write(8, 2, 0, 0, struct.pack(">I", 8))  # abort
    data += w.write(8, 0x7F, 0, 0, b"?")  # unknown type
    data += cmd(w, "FCUnpublish", 8.0, None, "k")
    data += w.write(4, 20, 1, 0, rtmp.amf0_encode("closeStream", 0.0, None))
    data += w.write(4, 20, 1, 0, rtmp.amf0_encode("deleteStream", 9.0, None, 1.0))
    data += cmd(w, "checkBandwidth", 10.0, None)
    seeds["hs-commands"] = b"\x01" + data
    w = rtmp.ChunkWriter(128, repeat_extended_timestamp=False)
    data = cmd(w, "connect", 1.0, {"app": "a"}) + w.write(5, 9, 0, 0xFFFFFF, bytes(300))
    seeds["hs-librtmp-ext-ts"] = b"\x01" + data

    # on ffmpeg's accepted publish (stream 1, chunk size 4096)
    w = rtmp.ChunkWriter(4096)
    agg = flv_tag(9, 5, b"\x17\x01\x00\x00\x00" + bytes(8)) + flv_tag(8, 4, b"\xaf\x01\x21")
    data = w.write(20, 22, 1, 40, agg)  # aggregate
    data += w.write(21, 8, 1, 0xFFFFFFF0, b"\x2f\xff\xfb\x90\x00" + bytes(30))  # mp3, wraps
    data += w.write(21, 8, 1, 0x10, b"\x72" + bytes(20))  # G.711 A-law
    data += w.write(22, 9, 1, 50, b"\x57\x00")  # video info frame
    data += w.write(23, 18, 2, 0, rtmp.amf0_encode("onTextData", {"t": "x"}))  # not publishing
    data += w.write(3, 20, 0, 0, rtmp.amf0_encode("FCUnpublish", 0.0, None, "KEY"))
    seeds["h264-extra"] = b"\x02" + data
    return seeds


def ex_video(frame_type: int, packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    return bytes([0x80 | frame_type << 4 | packet_type]) + fourcc + body


def ex_audio(packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    return bytes([0x90 | packet_type]) + fourcc + body


def flv_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for name in (FFMPEG, HEVC, AV1):
        msgs = messages(name)
        short = name.split("_", 1)[1]
        kinds: dict[tuple[int, bytes], rtmp.RTMPMessage] = {}
        for m in msgs:
            if m.type_id in (8, 9):
                kinds.setdefault((m.type_id, bytes(m.payload[:2])), m)
            elif m.type_id == 18:
                kinds.setdefault((18, b""), m)
        for (type_id, head), m in kinds.items():
            mode = {9: 1, 8: 2, 18: 3}[type_id]
            seeds[f"{short}-{type_id}-{head.hex()}"] = bytes([mode]) + cut(m)
        media = [m for m in msgs if m.type_id in (8, 9, 18)]
        body = bytearray(FLV_HEADER)
        for m in media:
            tag = flv_tag(m.type_id, m.timestamp, cut(m))
            if len(body) + len(tag) > 8000:
                break
            body += tag
        seeds[f"file-{short}"] = b"\x00" + bytes(body)

    avcc = bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 4]) + b"\x67\x64\x00\x1f" + b"\x01\x00\x02hh"
    hvcc = bytes([1, 1]) + bytes(10) + bytes([93]) + bytes(8) + bytes([0x0F, 1, 0x20, 0, 1, 0, 2])
    hvcc += b"\x40\x01"
    synth = {
        "v-legacy-avc-config": b"\x17\x00\x00\x00\x00" + avcc,
        "v-legacy-hevc-config": b"\x1c\x00\x00\x00\x00" + hvcc,
        "v-legacy-avc-cts": b"\x27\x01\xff\xff\xf0" + b"\x00\x00\x00\x01\x41",
        "v-legacy-vp6": b"\x14" + bytes(10),
        "v-vp09-config": ex_video(1, 0, b"vp09", bytes([1, 0, 0, 0, 0, 31, 0x80, 1, 1, 1, 0, 0])),
        "v-vvc-frame": ex_video(1, 1, b"vvc1", b"\x00\x00\x10" + bytes(6)),
        "v-av1-mpeg2ts": ex_video(1, 5, b"av01", b"\x80\x04\x00\x00"),
        "v-seq-end": ex_video(1, 2, b"hvc1", b""),
        "v-codedx": ex_video(2, 3, b"avc1", b"\x00\x00\x00\x01\x41"),
        "v-metadata": ex_video(5, 4, b"av01", rtmp.amf0_encode("colorInfo", {"hdr": 1.0})),
        "v-modex": bytes([0x80 | 1 << 4 | 7, 2, 0, 0, 7, 0x11]) + b"avc1" + b"\x00\x00\x01\x41",
        "v-mt-one": bytes([0x80 | 1 << 4 | 6, 0x01]) + b"av01" + b"\x02" + bytes(4),
        "v-mt-many": bytes([0x80 | 1 << 4 | 6, 0x13]) + b"vp09\x00\x00\x00\x02ab\x01\x00\x00\x01c",
        "v-mt-codecs": bytes([0x80 | 1 << 4 | 6, 0x21])
        + b"avc1\x00\x00\x00\x05\x00\x00\x00\x41\x42"
        + b"xxxx\x01\x00\x00\x01z",
        "a-legacy-mp3": b"\x2f\xff\xfb\x90\x64" + bytes(8),
        "a-legacy-pcmu": b"\x83" + bytes(16),
        "a-legacy-speex": b"\xb6" + bytes(8),
        "a-aac-sbr": b"\xaf\x00" + bytes([0x2B, 0x92, 0x08, 0x00]),
        "a-aac-escape": b"\xaf\x00" + bytes([0xF8, 0x01, 0xE0, 0x00, 0x00, 0x00, 0x10]),
        "a-flac-config": ex_audio(0, b"fLaC", b"fLaC" + bytes(14) + b"\x0b\xb8\x02" + bytes(5)),
        "a-ac3-frame": ex_audio(1, b"ac-3", b"\x0b\x77" + bytes(6)),
        "a-mp3-frame": ex_audio(1, b".mp3", b"\xff\xf3\x90\xc4" + bytes(4)),
        "a-multichannel": ex_audio(4, b"Opus", b"\x01\x02\x00\x01"),
        "a-mt-many": bytes([0x95, 0x10]) + b"Opus" + b"\x00\x00\x00\x02ab\x01\x00\x00\x01c",
        "a-modex": bytes([0x97, 0, 0, 0x01]) + b"Opus" + b"\x00",
        "s-avmplus": rtmp.amf0_encode("onMetaData") + b"\x11" + rtmp.amf3_encode({"x": [1.0]}),
    }
    for key, body in synth.items():
        mode = {"v": 1, "a": 2, "s": 3}[key[0]]
        seeds[key] = bytes([mode]) + body
    return seeds


def proxy_seeds() -> dict[str, bytes]:
    """What a pull sends through the egress gate: FFmpeg's GET, the probe's HEAD, a
    CONNECT with the tunnel's first bytes, requests switching origin, a head at the limit."""
    mode = {name: bytes([i]) for i, name in enumerate(PROXY_MODES)}
    get = (b"GET http://media.example:8080/live/index.m3u8?token=x HTTP/1.1\r\n"
           b"User-Agent: Lavf/60.16.100\r\nAccept: */*\r\nRange: bytes=0-\r\n"
           b"Connection: close\r\nHost: media.example:8080\r\nIcy-MetaData: 1\r\n"
           b"Proxy-Connection: keep-alive\r\n\r\n")
    head = (b"HEAD http://a.test/x.mp4 HTTP/1.1\r\nAccept-Encoding: identity\r\n"
            b"Host: a.test\r\nUser-Agent: Python-urllib/3.11\r\n"
            b"Proxy-Authorization: Basic eDp5\r\nConnection: close\r\n\r\n")
    connect = (b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"
               b"\x16\x03\x01\x00\x05hello")
    switch = (b"GET http://b.test:81/seg1.ts HTTP/1.1\r\nHost: b.test:81\r\n"
              b"Content-Length: 0\r\n\r\n"
              b"GET http://[2001:db8::1]/seg2.ts HTTP/1.0\r\nHost: [2001:db8::1]\r\n\r\n")
    line = b"GET http://a.test/ HTTP/1.1\r\nX: "
    limit = line + b"a" * (HEAD_LIMIT - len(line)) + b"\r\n\r\n" + get
    return {
        "get-ffmpeg": mode["whole"] + get,
        "head-urllib": mode["bytewise"] + head,
        "connect-v6-tunnel": mode["cuts"] + connect,
        "switch-origin": mode["after-get"] + switch,
        "head-at-limit": mode["whole"] + limit,
    }


def psrpc_seeds() -> dict[str, bytes]:
    """Messages the fixed state of fuzz_psrpc meets: requests (fresh, expired, with a
    malformed body, with metadata), claim answers naming the server or another, claims for
    each client request, responses (a reply, an error, a bad body) and the wrong type."""
    mode = {name: bytes([i]) for i, name in enumerate(PSRPC_MODES)}
    body = psrpc.StartIngressRequest(token="t", ws_url="ws://lk").SerializeToString()

    def request(rid: str, expiry: int, raw: bytes = body, **extra: object) -> bytes:
        return psrpc.encode(psrpc.Request(request_id=rid, client_id="CLI_otherclient01",
                                          sent_at=T0, expiry=expiry, raw_request=raw,
                                          **extra))

    sessions = psrpc.ListActiveIngressResponse(ingress_sessions=[psrpc.IngressSession(
        ingress_id="IN_a", resource_id="RS_b")]).SerializeToString()
    return {
        "req-fresh": mode["req"] + request("REQ_seed00000001", NOW + 3_000_000_000),
        "req-expired": mode["req"] + request("REQ_seed00000002", NOW),
        "req-bad-body": mode["req"] + request("REQ_seed00000003", NOW + 1, b"\x0a\x05ab"),
        "req-metadata-multi": mode["req"] + request(
            "REQ_seed00000004", NOW + 1, b"", multi=True, metadata={"k": "v"}),
        "req-pending-id": mode["req"] + request(RID[0], NOW + 1),
        "rclaim-chosen": mode["rclaim"] + psrpc.encode(psrpc.ClaimResponse(
            request_id=RID[0], server_id=SERVER_ID)),
        "rclaim-other": mode["rclaim"] + psrpc.encode(psrpc.ClaimResponse(
            request_id=RID[0], server_id="SRV_someoneelse1")),
        "claim-selecting": mode["claim"] + psrpc.encode(psrpc.ClaimRequest(
            request_id=RID[0], server_id="SRV_x", affinity=0.9)),
        "claim-waiting": mode["claim"] + psrpc.encode(psrpc.ClaimRequest(
            request_id=RID[2], server_id="SRV_x", affinity=2.0)),
        "res-multi": mode["res"] + psrpc.encode(psrpc.Response(
            request_id=RID[1], server_id="SRV_x", sent_at=NOW, raw_response=sessions)),
        "res-error": mode["res"] + psrpc.encode(psrpc.Response(
            request_id=RID[2], server_id=SERVER_ID, error="gone", code="not_found")),
        "res-selecting-error": mode["res"] + psrpc.encode(psrpc.Response(
            request_id=RID[0], error="bad", code="malformed_request")),
        "res-bad-body": mode["res"] + psrpc.encode(psrpc.Response(
            request_id=RID[2], raw_response=b"\x0a\x05ab")),
        "res-wrong-type": mode["res"] + psrpc.encode(psrpc.ClaimRequest(request_id=RID[2])),
        "claim-garbage": mode["claim"] + b"\x0a\xff\xff\xff\xff\x0f" + CLIENT_ID.encode(),
    }


def lksignal_seeds() -> dict[str, bytes]:
    """SignalResponses a publisher meets: the join, an answer, a trickle, v0's
    TrackPublished, a leave, a pong echoing the setup's ping, a refreshed token, and a
    few in one input (bits 2-3 of byte 0: messages - 1, 2-byte lengths before all but
    the last)."""
    mode = {name: i for i, name in enumerate(LKSIGNAL_MODES)}

    def one(name: str, message: bytes) -> bytes:
        return bytes([mode[name]]) + message

    def several(name: str, *messages: bytes) -> bytes:
        head = b"".join(len(m).to_bytes(2, "big") + m for m in messages[:-1])
        return bytes([mode[name] | (len(messages) - 1) << 2]) + head + messages[-1]

    candidate = ('{"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", '
                 '"sdpMid": "0", "sdpMLineIndex": 0}')
    answer = response(answer=rtc.SessionDescription(
        type="answer", sdp="v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", id=1))
    trickle = response(trickle=rtc.TrickleRequest(
        candidateInit=candidate, target=rtc.SignalTarget.PUBLISHER))
    leave = response(leave=rtc.LeaveRequest(
        can_reconnect=True, reason=models.DisconnectReason.SERVER_SHUTDOWN,
        action=rtc.LeaveRequest.Action.RESUME))
    pong = response(pong_resp=rtc.Pong(last_ping_timestamp=PING_MS, timestamp=1_780_000_000_000))
    return {
        "join": one("before-join", join_response()),
        "answer": one("joined", answer),
        "trickle": one("joined", trickle),
        "track-published-v0": one("track-added", published(CID)),
        "leave": one("joined", leave),
        "pong-resp": one("joined", pong),
        "refresh-token": one("joined", response(refresh_token="eyJhbGciOiJIUzI1NiJ9.e30.x")),
        "after-leave-answer": one("left", answer),
        "join-trickle-leave": several("before-join", join_response(), trickle, leave),
        "published-pong-answer-v0": several("track-added", published(CID), pong, answer,
                                            published(CID)),
    }


def twcc_seeds() -> dict[str, bytes]:
    """Feedback as livekit-server sends it: run length, both status vectors, a large
    and a negative delta, losses, a sequence wrap; and a mix for the estimator."""
    def fci(base: int, chunks: list[int], deltas: bytes, count: int, ref: int = 0) -> bytes:
        data = base.to_bytes(2, "big") + count.to_bytes(2, "big") + ref.to_bytes(3, "big")
        data += b"\x01" + b"".join(c.to_bytes(2, "big") for c in chunks) + deltas
        return data + b"\x00" * (-len(data) % 4)

    run = fci(65400, [0x2000 | 20], bytes([40] * 20), 20)
    one_bit = fci(65420, [0x8000 | 0x3FFF], bytes([40] * 14), 14)
    two_bit = fci(65534, [0xC000 | (1 << 12) | (2 << 10) | (0 << 8) | (1 << 6)],
                  bytes([4]) + (-8).to_bytes(2, "big", signed=True) + bytes([1]), 4)
    lost = fci(65440, [0x0000 | 30], b"", 30)
    twice = len(run).to_bytes(2, "big") + run + len(lost).to_bytes(2, "big") + lost
    return {"parse-run-length": b"\x00" + run, "parse-one-bit": b"\x00" + one_bit,
            "parse-two-bit-wrap": b"\x00" + two_bit, "estimator-run-then-lost": b"\x01" + twice,
            "estimator-vectors": b"\x01" + len(one_bit).to_bytes(2, "big") + one_bit + two_bit}


def http_seeds() -> dict[str, bytes]:
    """Console requests of a signed-in browser (fuzz_http.py: cookie and CSRF "fuzz"),
    in mode 0 (whole)."""
    def request(method: str, target: str, form: str = "", cookie: str = "ingress_console=fuzz"
                ) -> bytes:
        body = form.encode()
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
        if method == "POST":
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\n")
        return b"\0" + head.encode() + b"\r\n" + body

    custom = ("csrf=fuzz&name=cam&input_type=WHIP_INPUT&room_name=r&participant_identity=p"
              "&enabled=on&transcoding=on&video_mode=custom&video_codec=VP8&frame_rate=30"
              "&layer0_quality=HIGH&layer0_width=1280&layer0_height=720&layer0_bitrate=2000000"
              "&layer1_quality=LOW&layer1_width=640&layer1_height=360&layer1_bitrate=500000"
              "&audio_mode=custom&audio_bitrate=64000&audio_channels=1&disable_dtx=on")
    preset = ("csrf=fuzz&name=obs&input_type=RTMP_INPUT&room_name=r&participant_identity=p"
              "&video_preset=H264_1080P_30FPS_3_LAYERS&audio_preset=OPUS_MONO_64KBS")
    return {
        "console-list": request("GET", "/console/?room=r")
        + request("GET", "/console/rows?room=r")[1:],
        "console-create-custom": request("POST", "/console/new", custom),
        "console-create-then-edit": request("POST", "/console/new", preset)
        + request("GET", "/console/ingress/IN_x/edit")[1:]
        + request("POST", "/console/ingress/IN_x/edit", preset)[1:]
        + request("POST", "/console/ingress/IN_x/delete", "csrf=fuzz")[1:],
        "console-url": request("POST", "/console/new", "csrf=fuzz&input_type=URL_INPUT"
                               "&url=srt%3A%2F%2Fh%3A1&room_name=r&participant_identity=p"),
        "console-sign-in": request("POST", "/console/sign-in",
                                   "csrf=t&api_key=key&api_secret=wrong",
                                   "ingress_console_sign_in=t"),
        "console-preview": request("GET", "/console/ingress/IN_x/preview-token"),
    }


def write(harness: str, seeds: dict[str, bytes]) -> None:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for key, data in seeds.items():
        (folder / f"seed-{key}").write_bytes(data)
    size = sum(len(d) for d in seeds.values())
    print(f"{harness}: {len(seeds)} seeds, {size} bytes")


def main() -> None:
    write("session", session_seeds())
    write("flv", flv_seeds())
    write("proxy", proxy_seeds())
    write("psrpc", psrpc_seeds())
    write("lksignal", lksignal_seeds())
    write("twcc", twcc_seeds())
    write("http", http_seeds())


if __name__ == "__main__":
    main()
