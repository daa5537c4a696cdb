"""The sans-IO WHIP core: offer inspection (whip.inspect_offer) and PATCH bodies
(whip.parse_trickle), on offers made by a real WebRTC stack (aiortc) and a
Chromium-style offer, plus every refusal with its HTTP status and exact text."""

from __future__ import annotations

import asyncio
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

import whip

# -- real offers ------------------------------------------------------------------------


async def _aiortc_offer(kinds: tuple[str, ...], video_codec: str | None) -> str:
    pc = RTCPeerConnection()
    try:
        for kind in kinds:
            transceiver = pc.addTransceiver(kind, direction="sendonly")
            if kind == "video" and video_codec:
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in (
                    f"video/{video_codec.lower()}", "video/rtx")])
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


AIORTC_CASES = {
    "av": (("video", "audio"), None),
    "vp8": (("video", "audio"), "VP8"),
    "h264": (("video", "audio"), "H264"),
    "audio": (("audio",), None),
    "video": (("video",), None),
}


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    """Offers from aiortc 1.16 sendonly transceivers (what tests/whip_client.py sends)."""

    async def make() -> dict[str, str]:
        return {name: await _aiortc_offer(*case) for name, case in AIORTC_CASES.items()}

    return asyncio.run(make())


# What Chromium (M12x) offers for addTransceiver(track, {direction: "sendonly",
# sendEncodings: [q, h, f]}): RED/FEC/RTX, H.264 in several profiles and both
# packetization modes, VP9, AV1, a header-extension zoo, rids and a=simulcast.
# The transport lines and per-codec blocks, which Chrome repeats, are written once; a
# backslash at the end of a line continues it (no line of this file above 100).
CHROME_TRANSPORT = """\
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Ow5S
a=ice-pwd:nIbbnW8Dwx9ENd7Ez2hjAvYD
a=ice-options:trickle
a=fingerprint:sha-256 5D:9A:0B:7C:61:3E:8F:42:AA:10:C7:D2:E9:35:4F:88:B1:06:2C:7D:9E:F0:13:A4:5B:\
C6:D7:E8:F9:0A:1B:2C
a=setup:actpass
"""
CHROME_FEEDBACK = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
H264_FMTP = "level-asymmetry-allowed=1;packetization-mode={};profile-level-id={}"
CHROME_VIDEO_CODECS = "".join(  # (payload type, codec, fmtp, rtx payload type)
    f"a=rtpmap:{pt} {name}/90000\n"
    + "".join(f"a=rtcp-fb:{pt} {fb}\n" for fb in CHROME_FEEDBACK)
    + (f"a=fmtp:{pt} {fmtp}\n" if fmtp else "")
    + f"a=rtpmap:{rtx} rtx/90000\na=fmtp:{rtx} apt={pt}\n"
    for pt, name, fmtp, rtx in (
        (96, "VP8", "", 97),
        (102, "H264", H264_FMTP.format(1, "42001f"), 103),
        (104, "H264", H264_FMTP.format(0, "42001f"), 105),
        (106, "H264", H264_FMTP.format(1, "42e01f"), 107),
        (108, "H264", H264_FMTP.format(0, "42e01f"), 109),
        (127, "H264", H264_FMTP.format(1, "4d001f"), 125),
        (39, "H264", H264_FMTP.format(0, "4d001f"), 40),
        (45, "AV1", "level-idx=5;profile=0;tier=0", 46),
        (98, "VP9", "profile-id=0", 99),
        (100, "VP9", "profile-id=2", 101),
        (112, "H264", H264_FMTP.format(1, "64001f"), 113),
    ))
CHROME_SIMULCAST = f"""\
v=0
o=- 4215775240449105457 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS 5f4a3b8c-2d1e-4c6f-9a7b-1e2d3c4b5a69
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
{CHROME_TRANSPORT}a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:5f4a3b8c-2d1e-4c6f-9a7b-1e2d3c4b5a69 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3735928559 cname:Jm2kd8wq0Lx7FzvA
a=ssrc:3735928559 msid:5f4a3b8c-2d1e-4c6f-9a7b-1e2d3c4b5a69 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 \
101 112 113 116 117 118
{CHROME_TRANSPORT}a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:5f4a3b8c-2d1e-4c6f-9a7b-1e2d3c4b5a69 7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d
a=rtcp-mux
a=rtcp-rsize
{CHROME_VIDEO_CODECS}a=rtpmap:116 red/90000
a=rtpmap:117 rtx/90000
a=fmtp:117 apt=116
a=rtpmap:118 ulpfec/90000
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
""".replace(
    "\n", "\r\n")

SIMULCAST_LINES = ("a=rid:q send\r\n", "a=rid:h send\r\n", "a=rid:f send\r\n",
                   "a=simulcast:send q;h;f\r\n")


def without(text: str, *lines: str) -> str:
    for line in lines:
        assert line in text, line
        text = text.replace(line, "")
    return text


CHROME = without(CHROME_SIMULCAST, *SIMULCAST_LINES)  # the same browser, one layer


def attr_value(sdp: str, name: str) -> str:
    match = re.search(rf"^a={name}:(.*?)\r?$", sdp, re.M)
    assert match, name
    return match.group(1)


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def refused(sdp: str | bytes, status: int, message: str, *, transcoding: bool = False,
            check: Callable[..., object] | None = None) -> None:
    """The offer is refused with this status and text, with CRLF and LF line ends."""
    fn = check or (lambda body: whip.inspect_offer(body, transcoding=transcoding))
    variants = [sdp]
    if isinstance(sdp, str):
        variants += [lf(sdp), lf(sdp).replace("\n", "\r\n"), sdp.encode(errors="surrogatepass")]
    for body in variants:
        with pytest.raises(whip.WhipOfferError) as info:
            fn(body)
        assert (info.value.status, info.value.message) == (status, message)


def accepted(sdp: str, **kwargs: object) -> whip.OfferSummary:
    """Inspect with CRLF, LF and as bytes; all must agree (but for the kept text)."""
    summary = whip.inspect_offer(sdp, transcoding=kwargs.pop("transcoding", False), **kwargs)
    for body in (lf(sdp), lf(sdp).replace("\n", "\r\n"), sdp.encode()):
        again = whip.inspect_offer(body, transcoding=False, **kwargs)
        assert replace(again, sdp="") == replace(summary, sdp="")
    assert summary.sdp == sdp
    return summary


# -- aiortc offers ----------------------------------------------------------------------


def test_aiortc_vp8_offer(offers: dict[str, str]) -> None:
    sdp = offers["vp8"]
    summary = accepted(sdp)
    video, audio = summary.video, summary.audio
    assert video is not None and audio is not None
    assert (video.codec, video.clock_rate, video.direction, video.index) == (
        "VP8", 90000, "sendonly", 0)
    assert video.payload_types == (video.payload_type,)
    assert f"a=rtpmap:{video.payload_type} VP8/90000" in sdp
    assert f"a=fmtp:{video.rtx_payload_type} apt={video.payload_type}" in sdp
    assert "nack pli" in video.rtcp_fb
    assert video.profile_level_id is None
    group = attr_value(sdp, "ssrc-group").split()
    assert group[0] == "FID" and video.ssrc == int(group[1])
    assert (audio.codec, audio.clock_rate, audio.channels, audio.index) == ("opus", 48000, 2, 1)
    assert f"a=rtpmap:{audio.payload_type} opus/48000/2" in sdp
    assert (summary.ice_ufrag, summary.ice_pwd) == (attr_value(sdp, "ice-ufrag"),
                                                    attr_value(sdp, "ice-pwd"))
    assert summary.bundle == (video.mid, audio.mid) == ("0", "1")
    assert summary.sections == (video, audio)


def test_aiortc_h264_offer_prefers_constrained_baseline(offers: dict[str, str]) -> None:
    sdp = offers["h264"]
    video = accepted(sdp).video
    assert video is not None
    assert video.codec == "H264" and video.profile_level_id == "42e01f"
    assert video.fmtp_params["packetization-mode"] == "1"
    assert f"a=fmtp:{video.payload_type} " in sdp and "VP8" not in sdp
    assert len(video.payload_types) == 2  # aiortc offers 42001f and 42e01f
    assert video.rtx_payload_type is not None


def test_aiortc_default_offer_codec_order_is_a_parameter(offers: dict[str, str]) -> None:
    sdp = offers["av"]  # aiortc lists VP8 first, then H.264
    assert sdp.index("VP8/90000") < sdp.index("H264/90000")
    h264 = accepted(sdp).video
    vp8 = accepted(sdp, video_codecs=("VP8", "H264")).video
    only_vp8 = accepted(sdp, video_codecs=("vp8",)).video
    assert h264 is not None and vp8 is not None and only_vp8 is not None
    assert (h264.codec, vp8.codec, only_vp8.codec) == ("H264", "VP8", "VP8")
    assert vp8.payload_types[1:] == h264.payload_types[:-1]
    assert only_vp8.payload_types == (vp8.payload_type,)


def test_aiortc_audio_only_and_video_only(offers: dict[str, str]) -> None:
    audio_only = accepted(offers["audio"])
    assert audio_only.video is None and audio_only.audio is not None
    assert audio_only.audio.codec == "opus" and audio_only.audio.mid == "0"
    video_only = accepted(offers["video"])
    assert video_only.audio is None and video_only.video is not None
    assert video_only.bundle == ("0",)


def test_aiortc_offers_need_their_ice_and_dtls_lines(offers: dict[str, str]) -> None:
    sdp = offers["vp8"]
    fingerprints = dict.fromkeys(re.findall(r"a=fingerprint:[^\r\n]*\r\n", sdp))
    refused(without(sdp, *fingerprints), 400, "offer has no DTLS fingerprint")
    refused(without(sdp, *dict.fromkeys(re.findall(r"a=ice-pwd:[^\r\n]*\r\n", sdp))), 400,
            "offer has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    refused(without(sdp, "a=group:BUNDLE 0 1\r\n"), 400,
            "offer has no BUNDLE group (a=group:BUNDLE)")


def test_simulcast_with_aiortc_rids(offers: dict[str, str]) -> None:
    sdp = offers["video"].replace("a=mid:0\r\n", "a=mid:0\r\na=rid:h send\r\na=rid:l send\r\n")
    # rids need the rtp-stream-id extension to be told apart
    refused(sdp, 406, whip._sdp.SIMULCAST_NO_RID_EXTENSION)
    with_ext = sdp.replace("a=mid:0\r\n", f"a=mid:0\r\na=extmap:9 {whip._sdp.RID_URI}\r\n")
    video = accepted(with_ext).video
    assert video is not None and video.rids == ("h", "l") and video.rid_extension == 9
    refused(sdp, 406, "simulcast is not supported when transcoding", transcoding=True)
    one = offers["video"].replace("a=mid:0\r\n", "a=mid:0\r\na=rid:h send\r\n")
    video = accepted(one).video
    assert video is not None and video.rids == ()  # one rid is one layer


# -- Chromium ---------------------------------------------------------------------------


def test_chrome_simulcast_is_taken_without_transcoding() -> None:
    video = accepted(CHROME_SIMULCAST).video
    assert video is not None
    assert (video.rids, video.rid_extension, video.mid) == (("q", "h", "f"), 10, "1")
    refused(CHROME_SIMULCAST, 406, "simulcast is not supported when transcoding",
            transcoding=True)
    # the rids alone (no a=simulcast) are simulcast too, in their order
    alone = accepted(without(CHROME_SIMULCAST, SIMULCAST_LINES[3])).video
    assert alone is not None and alone.rids == ("q", "h", "f")
    refused(without(CHROME_SIMULCAST, *SIMULCAST_LINES[:3]), 400,
            "a=simulcast names rid q, which no a=rid line sends")
    paused = CHROME_SIMULCAST.replace("a=simulcast:send q;h;f", "a=simulcast:send ~q;h,f;f")
    video = accepted(paused).video
    assert video is not None and video.rids == ("q", "h", "f")
    four = CHROME_SIMULCAST.replace("a=simulcast:send q;h;f",
                                    "a=rid:x send\r\na=simulcast:send q;h;f;x")
    refused(four, 406, "4 simulcast layers (at most 3)")
    with pytest.raises(whip.WhipOfferError, match="malformed a=rid"):
        whip.inspect_offer(CHROME_SIMULCAST.replace("a=rid:q send", "a=rid:q! send"),
                           transcoding=False)


def test_simulcast_answer_accepts_the_offered_layers() -> None:
    video = accepted(CHROME_SIMULCAST).video
    assert video is not None
    answer = ("v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
              "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n")
    munged = whip.simulcast_answer(answer, video)
    audio_part, video_part = munged.split("m=video")
    assert "rid" not in audio_part
    assert video_part.endswith("a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\n"
                               "a=simulcast:recv q;h;f\r\n")
    assert f"a=mid:1\r\na=extmap:10 {whip._sdp.RID_URI}" in video_part
    single = accepted(CHROME).video
    assert single is not None and whip.simulcast_answer(answer, single) == answer


def test_chrome_legacy_sim_ssrc_group_is_refused() -> None:
    sdp = CHROME.replace("a=rtpmap:96 VP8/90000\r\n", "a=ssrc-group:SIM 11 22 33\r\n"
                         "a=ssrc:11 cname:x\r\na=rtpmap:96 VP8/90000\r\n")
    refused(sdp, 406, whip._sdp.SIMULCAST_SSRC_GROUP)


def test_chrome_single_layer_picks_h264_42e01f_then_the_rest() -> None:
    summary = accepted(CHROME)
    video, audio = summary.video, summary.audio
    assert video is not None and audio is not None
    assert (video.codec, video.payload_type, video.rtx_payload_type) == ("H264", 106, 107)
    # 42e01f, baseline 42001f, main 4d001f, high 64001f, then VP8; never mode 0, VP9, AV1
    assert video.payload_types == (106, 102, 127, 112, 96)
    assert video.fmtp == "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    assert video.rtcp_fb == ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    assert video.ssrc is None  # Chrome announces rids, not SSRCs, with sendEncodings
    assert (audio.payload_type, audio.fmtp, audio.rtcp_fb) == (
        111, "minptime=10;useinbandfec=1", ("transport-cc",))
    assert audio.fmtp_params == {"minptime": "10", "useinbandfec": "1"}
    assert audio.ssrc == 3735928559
    assert (summary.ice_ufrag, summary.ice_pwd, summary.bundle) == (
        "Ow5S", "nIbbnW8Dwx9ENd7Ez2hjAvYD", ("0", "1"))
    vp8 = accepted(CHROME, video_codecs=("VP8", "H264")).video
    assert vp8 is not None and vp8.payload_types == (96, 106, 102, 127, 112)
    assert vp8.rtx_payload_type == 97 and "ccm fir" in vp8.rtcp_fb


def test_h264_without_42e01f_prefers_constrained_baseline() -> None:
    sdp = CHROME.replace("profile-level-id=42e01f", "profile-level-id=640c1f")
    sdp = sdp.replace("packetization-mode=1;profile-level-id=4d001f",
                      "packetization-mode=1;profile-level-id=42C01F")
    video = accepted(sdp).video
    assert video is not None
    assert video.payload_types[:4] == (127, 102, 106, 112)  # 42c01f, 42001f, then in order
    assert video.profile_level_id == "42C01F"  # as offered


def test_wildcard_rtcp_fb_and_session_level_attributes() -> None:
    sdp = CHROME.replace("a=rtcp-fb:96 goog-remb\r\n", "a=rtcp-fb:* nack\r\n")
    video = accepted(sdp, video_codecs=("VP8",)).video
    assert video is not None and video.rtcp_fb.count("nack") == 1
    # ICE and DTLS at session level only (what Firefox and GStreamer send)
    moved = CHROME
    for name in ("ice-ufrag", "ice-pwd", "fingerprint"):
        line = f"a={name}:{attr_value(CHROME, name)}\r\n"
        moved = moved.replace(line, "")
        moved = moved.replace("a=extmap-allow-mixed\r\n", f"a=extmap-allow-mixed\r\n{line}")
    assert accepted(moved).ice_ufrag == "Ow5S"


# -- refusals ---------------------------------------------------------------------------


def test_bodies_that_are_not_offers() -> None:
    refused(b"v=0\r\n" + b"a=x\r\n" * (64 * 1024 // 5), 400, "offer is larger than 64 KiB")
    refused("v=0\n" + "é" * (32 * 1024), 400, "offer is larger than 64 KiB")
    refused(CHROME.encode("utf-16"), 400, "offer is not UTF-8 text")
    refused(CHROME.encode().replace(b"s=-", b"s=\xff"), 400, "offer is not UTF-8 text")
    refused(CHROME.replace("s=-", "s=\udc80"), 400, "offer is not UTF-8 text")
    for body in ("", "\r\n", "o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n", "v=1\r\n", "V=0\r\n",
                 "<html>\r\n"):
        refused(body, 400, "not an SDP offer: the first line must be v=0")
    refused(CHROME.replace("s=-\r\n", "s=-\r\nwhat is this\r\n"), 400,
            "line 4 is not <type>=<value>: what is this")
    refused(CHROME.replace("s=-\r\n", "s=-\r\n=x\r\n"), 400, "line 4 is not <type>=<value>: =x")
    refused("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 400, "offer has no m-line")
    refused(CHROME.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
                           "m=audio 9 UDP/TLS/RTP/SAVPF"), 400,
            "line 8: malformed m-line (m=<media> <port> <proto> <formats>)")
    refused(CHROME.replace("m=audio 9 ", "m=audio 99999 "), 400,
            "line 8: malformed m-line (m=<media> <port> <proto> <formats>)")


def test_a_second_track_of_a_kind_is_406() -> None:
    video = CHROME[CHROME.index("m=video"):]
    audio = CHROME[CHROME.index("m=audio"):CHROME.index("m=video")]
    refused(CHROME + video.replace("a=mid:1", "a=mid:2"), 406,
            "more than 1 track with given media kind")
    refused(CHROME + audio.replace("a=mid:0", "a=mid:2"), 406,
            "more than 1 track with given media kind")


def test_inactive_recvonly_and_other_media_are_ignored() -> None:
    video = CHROME[CHROME.index("m=video"):]
    audio = CHROME[CHROME.index("m=audio"):CHROME.index("m=video")]
    extra = (video.replace("a=mid:1", "a=mid:2").replace("a=sendonly", "a=inactive")
             + audio.replace("a=mid:0", "a=mid:3").replace("a=sendonly", "a=recvonly")
             + video.replace("a=mid:1", "a=mid:4").replace("m=video 9 ", "m=video 0 ")
             + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:5\r\n"
             "a=sctp-port:5000\r\n")
    summary = accepted(CHROME + extra)
    assert summary.video is not None and summary.video.mid == "1"
    assert summary.audio is not None and summary.audio.mid == "0"
    # a bundle-only m-line has port 0 and is received
    bundle_only = CHROME.replace("m=video 9 ", "m=video 0 ").replace(
        "a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n")
    assert accepted(bundle_only).video is not None


def test_an_offer_that_sends_nothing_is_400() -> None:
    message = "offer sends no media"
    refused(CHROME.replace("a=sendonly", "a=recvonly"), 400, message)
    refused(CHROME.replace("a=sendonly", "a=inactive"), 400, message)
    # a session-level direction is the default for every m-line
    session_level = CHROME.replace("a=sendonly\r\n", "").replace(
        "a=extmap-allow-mixed\r\n", "a=extmap-allow-mixed\r\na=recvonly\r\n")
    refused(session_level, 400, message)
    refused(CHROME[:CHROME.index("m=audio")]
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n", 400, message)
    # no direction at all is sendrecv (RFC 3264), which sends
    sendrecv = accepted(CHROME.replace("a=sendonly\r\n", ""))
    assert sendrecv.video is not None and sendrecv.video.direction == "sendrecv"


def test_no_supported_codec_is_406_and_names_what_was_offered() -> None:
    vp9 = CHROME.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 "
        "46 98 99 100 101 112 113 116 117 118", "m=video 9 UDP/TLS/RTP/SAVPF 98 99 45 46")
    refused(vp9, 406, "no supported codec for video (offered: VP9, rtx, AV1)")
    mode0 = CHROME.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 "
        "46 98 99 100 101 112 113 116 117 118", "m=video 9 UDP/TLS/RTP/SAVPF 104 105 108")
    refused(mode0, 406, "no supported codec for video (offered: H264, rtx)")
    g711 = CHROME.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
                          "m=audio 9 UDP/TLS/RTP/SAVPF 0 8 13 110")
    refused(g711, 406, "no supported codec for audio (offered: PCMU, PCMA, CN, telephone-event)")
    static = g711.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace("a=rtpmap:8 PCMA/8000\r\n", "")
    refused(static, 406, "no supported codec for audio (offered: PCMU, PCMA, CN, telephone-event)")
    unmapped = CHROME.replace(" 111 63 9 0 8 13 110 126", " 111 63 35").replace(
        "a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/48000/1")
    refused(unmapped, 406, "no supported codec for audio (offered: opus, red, 35)")
    refused(CHROME, 406, "no supported codec for video (offered: VP8, rtx, H264, AV1, VP9, red, "
            "ulpfec)", check=lambda body: whip.inspect_offer(body, transcoding=False,
                                                             video_codecs=()))
    many = CHROME.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
                          "m=audio 9 UDP/TLS/RTP/SAVPF " + " ".join(map(str, range(14))))
    with pytest.raises(whip.WhipOfferError) as info:
        whip.inspect_offer(many, transcoding=False)
    assert info.value.message == ("no supported codec for audio (offered: "
                                  "PCMU, 1, 2, GSM, G723, 5, 6, 7, PCMA, G722, ...)")


# One edit of the single-layer Chrome offer (first occurrence) -> status and exact text.
CHROME_EDITS = [
    ("m=video 9 UDP/TLS/RTP/SAVPF", "m=video 9 RTP/AVP", 406,
     "video transport RTP/AVP is not DTLS-SRTP (UDP/TLS/RTP/SAVPF)"),
    (" 111 63 9 0 8 13 110 126", " 111 63 200", 400, "line 8: payload type 200 is not 0-127"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus", 400,
     "line 25: malformed a=rtpmap (a=rtpmap:<pt> <name>/<clock rate>[/<channels>])"),
    ("a=fmtp:111 ", "a=fmtp:x ", 400, "line 27: malformed a=fmtp"),
    ("a=rtcp-fb:111 ", "a=rtcp-fb:-1 ", 400, "line 26: malformed a=rtcp-fb"),
    ("a=ssrc:3735928559 cname", "a=ssrc:x cname", 400, "line 36: malformed a=ssrc"),
    ("a=mid:1\r\n", "", 400, "the video m-line (line 38) has no a=mid"),
    ("a=mid:1\r\n", "a=mid:0\r\n", 400, "a=mid:0 is used by two m-lines"),
    ("a=group:BUNDLE 0 1", "a=group:BUNDLE 0", 400,
     "a=mid:1 is not in the BUNDLE group of the other media"),
    ("a=group:BUNDLE 0 1", "a=group:LS 0 1", 400, "offer has no BUNDLE group (a=group:BUNDLE)"),
    ("a=ice-ufrag:Ow5S\r\n", "", 400,
     "offer has no ICE credentials (a=ice-ufrag and a=ice-pwd)"),
    ("a=ice-ufrag:Ow5S", "a=ice-ufrag:O:w", 400,
     "invalid a=ice-ufrag O:w (4 to 256 of A-Z a-z 0-9 + /)"),
    ("nIbbnW8Dwx9ENd7Ez2hjAvYD", "short", 400, "invalid a=ice-pwd (22 to 256 of A-Z a-z 0-9 + /)"),
    ("a=ice-ufrag:Ow5S", "a=ice-ufrag:Zzzz", 400,
     "the bundled m-lines have different ICE credentials"),
    ("a=fingerprint:sha-256 5D:", "a=fingerprint:sha-256 5D;", 400,
     "malformed a=fingerprint sha-256 5D;9A:0B:7C:61:3E:8F:42:AA:10:C7..."),
]


@pytest.mark.parametrize(("old", "new", "status", "message"), CHROME_EDITS)
def test_edited_chrome_offer_is_refused(old: str, new: str, status: int, message: str) -> None:
    assert old in CHROME
    refused(CHROME.replace(old, new, 1), status, message)


def test_error_messages_are_one_escaped_line() -> None:
    with pytest.raises(whip.WhipOfferError) as info:
        whip.inspect_offer(CHROME.replace("a=mid:1\r\n", "a=mid:0\r\n").replace(
            "a=mid:0\r\n", "a=mid:\x1b[31m\rx\r\n"), transcoding=False)
    assert info.value.message == "a=mid:'\\x1b[31m\\rx' is used by two m-lines"
    exc = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert (exc.status, exc.message, str(exc)) == (400, info.value.message, info.value.message)
    assert isinstance(exc, ValueError)


def test_hostile_offers_cost_linear_time() -> None:
    """64 KiB built to multiply work (wildcard rtcp-fb over 128 payload types took seconds
    before wildcards were kept apart; session attributes times m-lines) stays cheap."""
    pts = " ".join(map(str, range(128)))
    bodies = [
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF " + pts + "\r\n"
        + "".join(f"a=rtcp-fb:* x{i}\r\n" for i in range(3400)),
        "v=0\r\n" + "a=x\r\n" * 1500 + "m=application 9 b c\r\n" * 2500,
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF" + " 96" * 20000 + "\r\n",
    ]
    for body in bodies:
        assert len(body) <= whip.MAX_BODY_BYTES
        started = time.perf_counter()
        with pytest.raises(whip.WhipOfferError):
            whip.inspect_offer(body, transcoding=False)
        assert time.perf_counter() - started < 1.0


def test_caller_bugs_are_not_offer_errors() -> None:
    with pytest.raises(ValueError, match="H264 or VP8"):
        whip.inspect_offer(CHROME, transcoding=False, video_codecs=("VP9",))
    with pytest.raises(TypeError):
        whip.inspect_offer(42, transcoding=False)  # type: ignore[arg-type]


# -- trickle (PATCH) --------------------------------------------------------------------

# RFC 9725 §4.3.1's example fragment (trickle) and §4.3.2's (ICE restart, new credentials).
RFC_TRICKLE = """\
a=ice-options:trickle ice2
a=group:BUNDLE 0 1
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=mid:0
a=ice-ufrag:EsAw
a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw \
network-id 1
a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw \
network-id 2
a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0 ufrag \
EsAw network-id 1
a=candidate:2154773085 1 tcp 1518214911 198.51.100.2 9 typ host tcptype active generation 0 ufrag \
EsAw network-id 2
a=end-of-candidates
"""
RFC_RESTART = RFC_TRICKLE[:RFC_TRICKLE.index("a=candidate:473322822")].replace(
    "a=ice-ufrag:EsAw\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
    "a=ice-ufrag:ysXw\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k")  # and only the UDP candidates
# What a browser trickles: mDNS host names, STUN and TURN candidates with related addresses.
BROWSER_CANDIDATES = """\
a=ice-ufrag:Ow5S
a=ice-pwd:nIbbnW8Dwx9ENd7Ez2hjAvYD
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=mid:0
a=candidate:2999745851 1 udp 2122260223 6a4f8c1e-7d2b-4e3a-9c5f-0b1a2d3e4f5a.local 54400 typ host \
generation 0 network-id 1
a=candidate:842163049 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 0.0.0.0 rport 0 \
generation 0 network-id 1
a=candidate:1638318316 1 udp 41885439 2001:db8::42 3478 typ relay raddr 203.0.113.7 rport 54400 \
generation 0 network-id 1
a=end-of-candidates
"""


def trickle_variants(text: str) -> list[str | bytes]:
    crlf = text.replace("\n", "\r\n")
    return [text, crlf, crlf.encode()]


def same_update(text: str) -> whip.TrickleUpdate:
    updates = [whip.parse_trickle(body) for body in trickle_variants(text)]
    assert updates[0] == updates[1] == updates[2]
    return updates[0]


def test_rfc_trickle_fragment() -> None:
    update = same_update(RFC_TRICKLE)
    assert (update.ice_ufrag, update.ice_pwd, update.end_of_candidates) == (
        "EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", True)
    assert len(update.candidates) == 4
    first, tcp = update.candidates[0], update.candidates[2]
    assert first == whip.Candidate(
        foundation="1387637174", component=1, protocol="udp", priority=2122260223,
        ip="192.0.2.1", port=61764, type="host", related_address=None, related_port=None,
        raw="candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 "
            "ufrag EsAw network-id 1", mid="0")
    assert (tcp.protocol, tcp.port) == ("tcp", 9)
    assert not update.is_ice_restart("EsAw")
    assert update.is_ice_restart("ysXw")


def test_rfc_ice_restart_fragment() -> None:
    update = same_update(RFC_RESTART)
    assert update.is_ice_restart("EsAw")
    assert (update.ice_ufrag, update.ice_pwd) == ("ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k")
    assert not update.end_of_candidates and len(update.candidates) == 2


def test_browser_candidates() -> None:
    host, srflx, relay = same_update(BROWSER_CANDIDATES).candidates
    assert (host.ip, host.type) == ("6a4f8c1e-7d2b-4e3a-9c5f-0b1a2d3e4f5a.local", "host")
    assert (srflx.type, srflx.related_address, srflx.related_port) == ("srflx", "0.0.0.0", 0)
    assert (relay.ip, relay.port, relay.related_address, relay.related_port) == (
        "2001:db8::42", 3478, "203.0.113.7", 54400)


def test_aiortc_candidates_as_a_fragment(offers: dict[str, str]) -> None:
    sdp = offers["av"]
    lines = re.findall(r"a=candidate:[^\r\n]*", sdp)
    assert lines
    body = "a=mid:0\n" + "\n".join(lines) + "\na=end-of-candidates\n"
    update = same_update(body)
    assert [c.raw for c in update.candidates] == [line[2:] for line in lines]
    assert {c.mid for c in update.candidates} == {"0"}
    assert update.ice_ufrag is None and not update.is_ice_restart(attr_value(sdp, "ice-ufrag"))


def test_candidates_follow_their_mid() -> None:
    cand = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\n"
    update = same_update(cand + "m=audio 9 RTP/SAVPF 0\n" + cand + "a=mid:a\n" + cand
                         + "m=video 9 RTP/SAVPF 0\na=mid:v\n" + cand)
    assert [c.mid for c in update.candidates] == [None, None, "a", "v"]
    assert same_update("") == whip.TrickleUpdate(None, None, (), False)


def test_trickle_refusals() -> None:
    def fails(body: str | bytes, message: str) -> None:
        variants = trickle_variants(body) if isinstance(body, str) else [body]
        for variant in variants:
            with pytest.raises(whip.WhipOfferError) as info:
                whip.parse_trickle(variant)
            assert (info.value.status, info.value.message) == (400, message)

    cand = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\n"
    fails(cand * (whip.MAX_CANDIDATES + 1), "more than 100 candidates")
    assert len(whip.parse_trickle(cand * whip.MAX_CANDIDATES).candidates) == 100
    fails(b"a=x\n" * (16 * 1024 + 1), "trickle fragment is larger than 64 KiB")
    fails(b"a=candidate:\xc0\n", "trickle fragment is not UTF-8 text")
    fails("a=ice-ufrag:EsAw\n", "a=ice-ufrag and a=ice-pwd must come together")
    fails("a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\n", "a=ice-ufrag and a=ice-pwd must come together")
    fails("a=ice-ufrag:EsAw\na=ice-ufrag:ysXw\n", "line 2: a second, different a=ice-ufrag")
    fails("a=ice-ufrag:E\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\n",
          "invalid a=ice-ufrag E (4 to 256 of A-Z a-z 0-9 + /)")
    fails("candidate:1 1 udp 1 192.0.2.1 1 typ host\n",
          "line 1 is not <type>=<value>: candidate:1 1 udp 1 192.0.2.1 1 typ host")
    bad = {
        "1 1 udp 1 192.0.2.1 1 host": "expected <foundation> <component> <transport> "
                                      "<priority> <address> <port> typ <type>",
        "f@ 1 udp 1 192.0.2.1 1 typ host": "foundation must be 1 to 32 of A-Z a-z 0-9 + /",
        "1 0 udp 1 192.0.2.1 1 typ host": "component must be 1-256",
        "1 1 udp 4294967296 192.0.2.1 1 typ host": "priority must be 0-4294967295",
        "1 1 udp 1 192.0.2.999 1 typ host": "address must be an IP address or a host name",
        "1 1 udp 1 192.0.2.1 65536 typ host": "port must be 0-65535",
        "1 1 udp 1 192.0.2.1 1 typ srflx raddr ::g rport 1": "raddr must be an IP address "
                                                             "or a host name",
        "1 1 udp 1 192.0.2.1 1 typ srflx raddr ::1 rport -1": "rport must be 0-65535",
        "1 1 u\"dp 1 192.0.2.1 1 typ host": "bad transport or type",
    }
    for value, why in bad.items():
        shown = value if len(value) <= 40 else value[:40] + "..."
        fails(f"a=mid:0\na=candidate:{value}\n",
              f"line 2: malformed a=candidate ({why}): {shown}")
