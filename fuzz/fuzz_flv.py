"""Fuzz harness for the FLV tag parsers (FLVReader, parse_tag, parse_video/audio_tag).

Input layout: byte 0 picks a mode (mod 4), the rest is:

* 0 ``file``: a whole FLV file for :class:`rtmp.FLVReader`, every tag through parse_tag;
* 1 ``video`` / 2 ``audio`` / 3 ``script``: one tag body (legacy or Enhanced RTMP).

Oracle (raises OracleFailure, i.e. a crash): only RTMPProtocolError escapes and never
through a parser's safety net; a file read whole or re-split gives the same tags, events and
error position, and the reader never holds more than the tag it waits for; a single tag
body gives the same events (or error) through ``parse_*_tag``, ``parse_tag``, an FLV file
and a live RTMP publish (the core's "same media-event boundary" promise); media events
carry the tag's time and stream id and immutable bytes; optionally a tracemalloc bound.

Run: ``python fuzz/run.py flv --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any

try:
    import atheris
except ImportError:  # plain random-mutation mode of run.py still works
    atheris = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["rtmp"]):
        import rtmp
else:
    import rtmp

import fuzz_session
from _common import check_error, expect, expect_same, libfuzzer_main, memory_bound, split

MODES = ("file", "video", "audio", "script")
TAG_TYPES = {1: 9, 2: 8, 3: 18}
MAX_TAG = 64 * 1024
DTS = 0x1234567  # > 24 bits: exercises extended timestamps on the RTMP path
SID = 1  # the message stream ffmpeg publishes on (captures)
CSID = 20  # a chunk stream the captures do not use
LIMITS = dict(
    max_depth=fuzz_session.CONFIG["max_amf_depth"],
    max_nodes=fuzz_session.CONFIG["max_amf_nodes"],
)
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 8 * 1024 * 1024
MEM_PER_BYTE = 64
CROSS = ("parse_tag", "other path")
FLV_HEADER = b"FLV\x01\x05" + struct.pack(">I", 9) + b"\x00\x00\x00\x00"

Result = tuple[list[Any], str | None]


def flv_tag(tag_type: int, ts: int, body: bytes) -> bytes:
    """One FLV tag with its back pointer (what muxers write)."""
    head = bytes([tag_type]) + len(body).to_bytes(3, "big")
    head += (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([(ts >> 24) & 0xFF]) + b"\x00\x00\x00"
    return head + body + struct.pack(">I", 11 + len(body))


def check_events(events: list[Any], dts: int | None, sid: int) -> None:
    """Field-level promises of the media-event boundary."""
    for ev in events:
        expect(getattr(ev, "stream_id", sid) == sid, f"stream id lost: {ev!r:.200}")
        if dts is not None and hasattr(ev, "dts"):
            expect(ev.dts == dts, f"dts changed: {ev!r:.200}")
        for name in ("data", "config"):
            value = getattr(ev, name, b"")
            expect(type(value) is bytes, f"{name} is {type(value).__name__}: {ev!r:.200}")
        expect(0 <= getattr(ev, "track_id", 0) <= 255, f"bad track id: {ev!r:.200}")
        if isinstance(ev, rtmp.VideoConfig):
            expect(ev.nal_length_size in (None, 1, 2, 3, 4), f"nal size: {ev!r:.200}")
        if isinstance(ev, rtmp.VideoFrame):
            expect(abs(ev.pts - ev.dts) <= 1 << 23, f"composition offset: {ev!r:.200}")


def read_file(pieces: list[bytes]) -> Result:
    """FLVReader over the pieces: per tag (tag, events-or-error); stops at a reader error."""
    reader = rtmp.FLVReader(max_tag_size=MAX_TAG)
    items: list[Any] = []
    prev_ts: int | None = None
    try:
        for piece in pieces:
            reader.feed(piece)
            while (tag := reader.next_tag()) is not None:
                expect(len(tag.data) <= MAX_TAG, "tag above max_tag_size")
                if prev_ts is not None:
                    expect(abs(tag.timestamp - prev_ts) <= 1 << 31, "timestamp jump")
                prev_ts = tag.timestamp
                try:
                    events: Any = rtmp.parse_tag(tag, stream_id=SID, **LIMITS)
                    check_events(events, tag.timestamp, SID)
                except rtmp.RTMPProtocolError as exc:
                    events = check_error(exc)
                items.append((tag, events))
            buf = reader._buf
            if reader._header_done:
                size = (buf[1] << 16 | buf[2] << 8 | buf[3]) if len(buf) >= 11 else 0
                expect(len(buf) < 11 + size + 4, "reader kept a whole tag")
            else:
                expect(len(buf) < 1024 + 4, "reader kept a whole header")
    except rtmp.RTMPProtocolError as exc:
        return items, check_error(exc)
    return items, None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Result:
    try:
        return list(fn(*args, **kwargs)), None
    except rtmp.RTMPProtocolError as exc:
        return [], check_error(exc)


def via_session(type_id: int, body: bytes) -> Result:
    """The body as a live RTMP message on an accepted publish (ffmpeg capture prefix)."""
    session = fuzz_session.base_session(2)
    expect(session.publishing_streams == (SID,), "capture prefix did not publish")
    writer = rtmp.ChunkWriter(session._reader.chunk_size)
    data = writer.write(CSID, type_id, SID, DTS, body)
    outcome = fuzz_session.drive(session, [data])
    return outcome.events, outcome.error


def run_file(stream: bytes) -> None:
    whole = read_file([stream])
    expect_same("FLV tags", whole, read_file(split(stream)))


def run_body(mode: int, body: bytes) -> None:
    tag_type = TAG_TYPES[mode]
    tag = rtmp.FLVTag(tag_type, DTS, 0, body)
    ref = _call(rtmp.parse_tag, tag, stream_id=SID, **LIMITS)
    check_events(ref[0], DTS, SID)
    if mode == 1:
        video = _call(rtmp.parse_video_tag, body, DTS, stream_id=SID)
        expect_same("parse_video_tag", ref, video, CROSS)
    elif mode == 2:
        audio = _call(rtmp.parse_audio_tag, body, DTS, stream_id=SID)
        expect_same("parse_audio_tag", ref, audio, CROSS)
    if len(body) <= MAX_TAG:
        items, error = read_file([FLV_HEADER + flv_tag(tag_type, DTS, body)])
        expect(error is None and len(items) == 1, f"FLV wrapper not read back: {error}")
        got = items[0][1]
        got_result = (got, None) if isinstance(got, list) else ([], got)
        expect_same("FLV file", ref, got_result, CROSS)
    expect_same("live RTMP", ref, via_session(tag_type, body), CROSS)


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode = data[0] % len(MODES)
    limit = MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None
    with memory_bound(limit):
        if mode == 0:
            run_file(data[1:])
        else:
            run_body(mode, data[1:])


def TestOneInput(data: bytes) -> None:
    run_one(data)


def main() -> None:
    libfuzzer_main(atheris, "flv", TestOneInput)


if __name__ == "__main__":
    main()
