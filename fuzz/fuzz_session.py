"""Fuzz harness for rtmp.ServerSession (handshake, chunk stream, AMF, commands, media).

Input layout: byte 0 picks a starting point (mod 4), the rest is client->server bytes:

* 0 ``raw``: a fresh session, handshake included;
* 1 ``handshake``: after a real C0+C1+C2 (ffmpeg capture), so bytes hit the chunk layer;
* 2 ``h264``: after ffmpeg's connect/createStream/publish (accepted), media layer;
* 3 ``hevc``: the same after PyAV's Enhanced RTMP publish (chunk size 4096).

Oracle (raises OracleFailure, i.e. a crash): only RTMPProtocolError escapes and never
with another exception in its context (a safety net was reached); next_event() ends on
NEED_DATA (publishes are answered at once, so never on PAUSED); caps on buffered bytes,
chunk/message streams and unparsed input hold after every read; feeding the bytes whole
or re-split yields the same events, the same error at the same event position and the
same bytes to send; a failed session stays failed; optionally a tracemalloc peak bound.

Run: ``python fuzz/run.py session --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass

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

from _common import (
    HANDSHAKE_LEN,
    DetRandom,
    capture,
    check_error,
    expect,
    expect_same,
    libfuzzer_main,
    memory_bound,
    split,
)

MODES = ("raw", "handshake", "h264", "hevc")
PUBLISH_END = 3396  # offset just after the publish command in the captures
MAX_HEADER = 3 + 11 + 4  # largest chunk header: unparsed input never exceeds one
# Small caps, so the fuzzer can reach every limit with short inputs.
CONFIG = dict(
    max_message_size=256 * 1024,
    max_chunk_streams=16,
    max_buffered_bytes=512 * 1024,
    max_receive_buffer=1024 * 1024,
    max_streams=4,
    max_amf_depth=16,
    max_amf_nodes=2_000,
)
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 8 * 1024 * 1024  # bound = MEM_BASE + MEM_PER_BYTE * len(input)
MEM_PER_BYTE = 64


@dataclass
class Outcome:
    """What a client's bytes did to a session: compared between whole and split feeds."""

    events: list[rtmp.Event]
    error: str | None
    out: bytes
    bytes_received: int
    dropped: int


def new_session() -> rtmp.ServerSession:
    return rtmp.ServerSession(rtmp.SessionConfig(randbytes=DetRandom(), **CONFIG))


def _decide(session: rtmp.ServerSession, req: rtmp.PublishRequested) -> None:
    """Accept most publishes, reject some (deterministically) to cover that path too."""
    if len(req.stream_key) % 7 == 6:
        session.reject_publish("fuzz says no")
    else:
        session.accept_publish()


def check_bounds(session: rtmp.ServerSession) -> None:
    """Caps that must hold whenever the caller has drained next_event()."""
    cfg = session.config
    reader = session._reader
    expect(reader.buffered_bytes <= cfg.max_buffered_bytes, "partial messages above cap")
    expect(reader.buffered_bytes >= 0, "negative buffered byte count")
    expect(len(session._hs_buf) < HANDSHAKE_LEN, "handshake buffer holds a whole handshake")
    expect(len(reader._streams) <= cfg.max_chunk_streams, "chunk streams above cap")
    expect(len(reader._clocks) <= reader.max_message_streams, "message clocks above cap")
    expect(len(session._streams) <= cfg.max_streams, "message streams above cap")
    expect(len(session._fcpublished) <= cfg.max_streams, "FCPublish names above cap")
    expect(not session._events, "events left after next_event() returned a sentinel")
    if session.pending_publish is None:
        expect(reader.pending_bytes <= MAX_HEADER, f"{reader.pending_bytes} unparsed bytes")


def drive(session: rtmp.ServerSession, pieces: list[bytes]) -> Outcome:
    """Feed pieces like a server loop would, answering publishes; record everything."""
    events: list[rtmp.Event] = []
    out = bytearray()
    error = None
    try:
        for piece in pieces:
            session.receive_data(piece)
            while isinstance(event := session.next_event(), rtmp.Event):
                events.append(event)
                if isinstance(event, rtmp.PublishRequested):
                    _decide(session, event)
            # every publish was answered at once, so the session only ever waits for bytes
            expect(event is rtmp.NEED_DATA, f"next_event() returned {event!r}")
            out += session.data_to_send()
            check_bounds(session)
    except rtmp.RTMPProtocolError as exc:  # anything else propagates: a crash
        error = check_error(exc)
        out += session.data_to_send()
        try:
            session.receive_data(b"x")
        except rtmp.RTMPProtocolError:
            pass
        else:
            expect(False, "a failed session accepted more data")
    return Outcome(events, error, bytes(out), session.bytes_received, session.dropped_messages)


def _base(prefix: bytes) -> rtmp.ServerSession:
    session = new_session()
    outcome = drive(session, [prefix])
    assert outcome.error is None, outcome.error
    return session


_BASES: dict[int, bytes] = {}


def base_session(mode: int) -> rtmp.ServerSession:
    """A copy of a session advanced through a real capture's prefix (built once)."""
    if mode not in _BASES:
        if mode == 1:
            prefix = capture("ffmpeg51_h264_aac")[:HANDSHAKE_LEN]
        elif mode == 2:
            prefix = capture("ffmpeg51_h264_aac")[:PUBLISH_END]
        else:
            prefix = capture("pyav_hevc_aac")[:PUBLISH_END]
        _BASES[mode] = pickle.dumps(_base(prefix))
    return pickle.loads(_BASES[mode])


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode = data[0] % len(MODES)
    stream = data[1:]
    limit = MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None
    with memory_bound(limit):
        whole = drive(base_session(mode) if mode else new_session(), [stream])
    split_run = drive(base_session(mode) if mode else new_session(), split(stream))
    n = min(len(whole.events), len(split_run.events))
    for i in range(n):
        expect_same(f"event {i}", whole.events[i], split_run.events[i])
    expect_same("event counts", len(whole.events), len(split_run.events))
    expect_same("errors", whole.error, split_run.error)
    expect_same("bytes sent", whole.out, split_run.out)
    expect_same("bytes received", whole.bytes_received, split_run.bytes_received)
    expect_same("dropped messages", whole.dropped, split_run.dropped)


def TestOneInput(data: bytes) -> None:
    run_one(data)


def main() -> None:
    libfuzzer_main(atheris, "session", TestOneInput)


if __name__ == "__main__":
    main()
