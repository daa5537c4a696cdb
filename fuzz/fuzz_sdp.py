"""Fuzz harness for the sans-IO WHIP core (whip.inspect_offer, whip.parse_trickle).

Input layout: byte 0 picks a mode (mod 4), the rest is an HTTP body:

* 0 ``offer``: a POST offer, passthrough (transcoding off);
* 1 ``transcoding``: the same with transcoding on;
* 2 ``vp8-first``: the same with ``video_codecs=("VP8", "H264")``;
* 3 ``trickle``: a PATCH body (application/trickle-ice-sdpfrag).

Oracle (raises OracleFailure, i.e. a crash): only WhipOfferError escapes, with status
400 or 406 and a short, printable, one-line message, and never wrapping a stray
exception (only a UTF-8 decode error may be its context); the body with CRLF line ends
turned into LF, and LF into CRLF, gives the same result (but for the kept offer text);
str and bytes give the same result; transcoding on and off differ only for simulcast
(refused with LiveKit's text when transcoding, taken or refused otherwise); an accepted
offer keeps the promises of OfferSummary (one section per kind, the
chosen codec is one we take and the first of ``payload_types``, its mid is bundled,
valid ICE credentials); a trickle update stays within its bounds. Optionally a
tracemalloc bound (FUZZ_MEMCHECK=1).

Run: ``python fuzz/run.py sdp --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import OracleFailure, expect, expect_same, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
# libFuzzer's coverage comes from instrumenting the package under test at import time
with (atheris.instrument_imports(include=["whip"]) if atheris and __name__ == "__main__"
      else nullcontext()):
    import whip

MODES = ("offer", "transcoding", "vp8-first", "trickle")
CODEC_ORDER = {0: ("H264", "VP8"), 1: ("H264", "VP8"), 2: ("VP8", "H264")}
SIMULCAST_TRANSCODING = "simulcast is not supported when transcoding"
MAX_MESSAGE = 300  # the longest: 10 codec names of 20 characters
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 2 * 1024 * 1024
MEM_PER_BYTE = 64

Result = tuple[str, Any]


def check_error(exc: BaseException) -> tuple[int, str]:
    """(status, message) of an allowed error; OracleFailure for anything else."""
    if not isinstance(exc, whip.WhipOfferError):
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc}") from exc
    ctx = exc.__context__
    if ctx is not None and not isinstance(ctx, UnicodeError):
        raise OracleFailure(f"WhipOfferError raised while handling {ctx!r}") from ctx
    status, message = exc.status, exc.message
    expect(status in (400, 406), f"status {status}: {message!r}")
    expect(isinstance(message, str) and 0 < len(message) <= MAX_MESSAGE,
           f"message length: {message!r:.300}")
    expect(message.isprintable(), f"message not one printable line: {message!r:.300}")
    expect(str(exc) == message, f"str(exc) is not the message: {exc!s:.300}")
    return status, message


def _call(fn: Any, *args: Any, **kwargs: Any) -> Result:
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return "error", check_error(exc)


def offer(body: str | bytes, mode: int, transcoding: bool | None = None) -> Result:
    if transcoding is None:
        transcoding = mode == 1
    return _call(whip.inspect_offer, body, transcoding=transcoding,
                 video_codecs=CODEC_ORDER[mode])


def without_text(result: Result) -> Result:
    kind, value = result
    return (kind, dataclasses.replace(value, sdp="")) if kind == "ok" else result


def check_summary(summary: Any, body: bytes, mode: int) -> None:
    """The promises of an accepted offer."""
    expect(summary.sdp == body.decode("utf-8"), "sdp is not the offer text")
    expect(summary.audio is not None or summary.video is not None, "no section")
    whip._sdp.check_ice_credentials(summary.ice_ufrag, summary.ice_pwd)
    for kind, section in (("audio", summary.audio), ("video", summary.video)):
        if section is None:
            continue
        expect(section.kind == kind, f"{kind} slot holds {section.kind}")
        expect(section.direction in ("sendonly", "sendrecv"), f"direction {section!r:.300}")
        expect(section.mid and section.mid in summary.bundle, f"mid not bundled: {section.mid!r}")
        expect(section.payload_types[:1] == (section.payload_type,), f"pt {section!r:.300}")
        expect(len(set(section.payload_types)) == len(section.payload_types), "pt twice")
        expect(all(0 <= pt <= 127 for pt in section.payload_types), "pt out of range")
        if kind == "audio":
            expect((section.codec, section.clock_rate, section.channels) == ("opus", 48000, 2),
                   f"audio codec {section!r:.300}")
        else:
            expect(section.codec in CODEC_ORDER[mode] and section.clock_rate == 90000,
                   f"video codec {section!r:.300}")
            if section.codec == "H264":
                expect(section.fmtp_params.get("packetization-mode") == "1", "H.264 mode 0")
            expect(len(section.rids) <= whip._sdp.MAX_SIMULCAST_LAYERS, "too many rids")
            expect((section.rid_extension is not None) == bool(section.rids),
                   f"rid extension {section!r:.300}")
            expect(not section.rids or mode != 1, "simulcast taken while transcoding")
    if summary.audio is not None and summary.video is not None:
        expect(summary.audio.mid != summary.video.mid, "one mid for two sections")


def run_offer(body: bytes, mode: int) -> None:
    ref = offer(body, mode)
    if ref[0] == "ok":
        check_summary(ref[1], body, mode)
    lf = body.replace(b"\r\n", b"\n")
    crlf = lf.replace(b"\n", b"\r\n")
    expect_same("LF", without_text(ref), without_text(offer(lf, mode)), ("as sent", "LF"))
    if len(crlf) <= whip.MAX_BODY_BYTES:
        expect_same("CRLF", without_text(ref), without_text(offer(crlf, mode)),
                    ("as sent", "CRLF"))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        expect(ref == ("error", (400, "offer is not UTF-8 text")), f"not UTF-8: {ref!r:.300}")
    else:
        expect_same("str", ref, offer(text, mode), ("bytes", "str"))
    other = offer(body, mode, transcoding=mode != 1)
    passthrough, transcoded = (other, ref) if mode == 1 else (ref, other)
    simulcast_taken = passthrough[0] == "ok" and passthrough[1].video is not None and bool(
        passthrough[1].video.rids)
    if transcoded == ("error", (406, SIMULCAST_TRANSCODING)):
        pass  # passthrough takes the layers, or refuses them for what they are
    else:
        expect(not simulcast_taken, f"simulcast taken, but transcoding said {transcoded!r:.300}")
        expect_same("transcoding", ref, other, ("as mode", "other transcoding"))


def trickle(body: str | bytes) -> Result:
    return _call(whip.parse_trickle, body)


def check_update(update: Any) -> None:
    expect(len(update.candidates) <= whip.MAX_CANDIDATES, "too many candidates")
    expect((update.ice_ufrag is None) == (update.ice_pwd is None), "half credentials")
    if update.ice_ufrag is not None:
        expect(not update.is_ice_restart(update.ice_ufrag), "restart to the same ufrag")
        expect(update.is_ice_restart(update.ice_ufrag + "x"), "new ufrag not a restart")
    for cand in update.candidates:
        expect(cand.raw.startswith("candidate:"), f"raw {cand.raw!r:.200}")
        expect(1 <= cand.component <= 256 and 0 <= cand.port <= 65535
               and 0 <= cand.priority <= 0xFFFFFFFF, f"candidate {cand!r:.300}")
        expect(cand.related_port is None or 0 <= cand.related_port <= 65535, "rport")


def run_trickle(body: bytes) -> None:
    ref = trickle(body)
    if ref[0] == "ok":
        check_update(ref[1])
    lf = body.replace(b"\r\n", b"\n")
    crlf = lf.replace(b"\n", b"\r\n")
    expect_same("LF", ref, trickle(lf), ("as sent", "LF"))
    if len(crlf) <= whip.MAX_BODY_BYTES:
        expect_same("CRLF", ref, trickle(crlf), ("as sent", "CRLF"))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return
    expect_same("str", ref, trickle(text), ("bytes", "str"))


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if data:
        mode, body = data[0] % len(MODES), data[1:]
        with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
            if MODES[mode] == "trickle":
                run_trickle(body)
            else:
                run_offer(body, mode)


def main() -> None:
    libfuzzer_main(atheris, "sdp", run_one)


if __name__ == "__main__":
    main()
