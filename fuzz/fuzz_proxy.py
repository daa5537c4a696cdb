"""Fuzz harness for the egress gate's request parser (relay/worker/_proxy_requests.py).

Input layout: byte 0 picks a mode (mod 4), the rest is what a proxy client (FFmpeg, the
urllib probe) sends on one connection; it is always fed whole first (the reference),
then again re-split as the mode says, each time followed by the end of the input
(``receive_data(b"")``) unless the parser has paused for a tunnel:

* 0 ``whole``: re-split byte by byte (up to 256 bytes) or at hashed cut points;
* 1 ``bytewise``: re-split one byte per ``receive_data()``, whatever the length;
* 2 ``cuts``: re-split before and after every CR and LF (so a head's blank line
  arrives in every way) and at cut points hashed from the input;
* 3 ``after-get``: after a valid GET on the same connection, re-split as that GET in
  one ``receive_data()``, then the input as in 0.

Events are read as the gate's shell reads them: ``next_event()`` until NEED_DATA
after each ``receive_data()``.

Oracle (raises OracleFailure, i.e. a crash): only ProxyRequestError escapes, with
status 400 or 405 and a short printable reason, never wrapping a stray exception (only
urlsplit's ValueError may be its context); once failed, next_event() raises the same
error again; the whole and re-split feeds give the same events, at the same place
relative to the end of the input, the same error (status and reason) and the same
tunnel bytes (trailing_data and what was not fed); every Forward has method GET or
HEAD, 0 < port < 65536, a non-empty host, and a head starting with ``GET /`` or
``HEAD /`` (its method), ending with its one blank line, of at most HEAD_LIMIT + 4
bytes, with no bare CR, LF or NUL in a line, no proxy-* header and no body header
(names read as the parser reads them: stripped, case-insensitive); a Connect comes
first or not at all, with 0 < port < 65536 and a host, and the parser then stays
PAUSED and takes no more data; ConnectionClosed comes only after the end of the input,
and stays; the buffer holds at most HEAD_LIMIT + 3 bytes whenever next_event() says
NEED_DATA (the module's bound: a head that still fits, its blank line not whole), so
at most that plus one ``receive_data()`` in between. Optionally a tracemalloc bound
(FUZZ_MEMCHECK=1).

Run: ``python fuzz/run.py proxy --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import OracleFailure, expect, expect_same, libfuzzer_main, memory_bound, split

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.worker._proxy_requests"])
      if atheris and __name__ == "__main__" else nullcontext()):
    from relay.worker._proxy_requests import (
        HEAD_LIMIT,
        NEED_DATA,
        PAUSED,
        Connect,
        ConnectionClosed,
        Forward,
        ProxyRequestError,
        ProxyRequests,
    )

MODES = ("whole", "bytewise", "cuts", "after-get")
GET = b"GET http://a.test/ HTTP/1.1\r\n\r\n"  # mode 3's first request
GET_EVENT = Forward(b"GET", "a.test", 80, b"GET / HTTP/1.1\r\n\r\n")
END = b"\r\n\r\n"
BUFFER_BOUND = HEAD_LIMIT + len(END) - 1  # buffered at NEED_DATA, at most
MAX_REASON = 120
EOF = "end of input"  # where the end of the input was given, among the events
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 2 * 1024 * 1024
MEM_PER_BYTE = 64

Outcome = tuple[list[object], tuple[int, str] | None, bytes]  # events, error, tunnel bytes


def check_error(exc: BaseException) -> tuple[int, str]:
    """(status, reason) of an allowed error; OracleFailure for anything else."""
    if not isinstance(exc, ProxyRequestError):
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc!s:.300}") from exc
    ctx = exc.__context__
    if ctx is not None and not isinstance(ctx, ValueError):
        raise OracleFailure(f"ProxyRequestError raised while handling {ctx!r:.300}") from ctx
    reason = str(exc)
    expect(exc.status in (400, 405), f"status {exc.status}: {reason!r:.300}")
    expect(0 < len(reason) <= MAX_REASON, f"reason of {len(reason)} characters: {reason!r:.300}")
    expect(reason.isprintable(), f"reason not one printable line: {reason!r:.300}")
    return exc.status, reason


def header_name(line: bytes) -> bytes:
    """A header's name as the parser reads it."""
    return line.partition(b":")[0].strip().lower()


def check_forward(event: Forward) -> None:
    method, head = event.method, event.head
    expect(method in (b"GET", b"HEAD"), f"method {method!r:.100}")
    expect(isinstance(event.port, int) and 0 < event.port < 65536, f"port {event.port!r}")
    expect(isinstance(event.host, str) and bool(event.host), f"host {event.host!r:.100}")
    expect(head.startswith(method + b" /"), f"head not in origin form: {head!r:.300}")
    expect(head.endswith(END) and head.find(END) == len(head) - len(END),
           f"head not ending at its one blank line: {head!r:.300}")
    expect(len(head) <= HEAD_LIMIT + len(END), f"head of {len(head)} bytes")
    line, *headers = head[:-len(END)].split(b"\r\n")
    for part in (line, *headers):
        expect(not any(c in part for c in (b"\r", b"\n", b"\0")), f"bare CR/LF/NUL: {part!r:.300}")
    parts = line.split(b" ")
    expect(len(parts) == 3 and parts[2].startswith(b"HTTP/1."), f"request line {line!r:.300}")
    for header in headers:
        name = header_name(header)
        expect(not name.startswith(b"proxy-"), f"proxy header forwarded: {header!r:.300}")
        expect(name != b"transfer-encoding", f"body forwarded: {header!r:.300}")
        expect(name != b"content-length" or header.partition(b":")[2].strip() == b"0",
               f"body forwarded: {header!r:.300}")


def check_event(event: object, events: list[object]) -> None:
    """The promises of one event, given those before it."""
    if isinstance(event, Forward):
        check_forward(event)
    elif isinstance(event, Connect):
        expect(not events, f"Connect after {events!r:.300}")
        expect(isinstance(event.port, int) and 0 < event.port < 65536, f"port {event.port!r}")
        expect(isinstance(event.host, str) and bool(event.host), f"host {event.host!r:.100}")
    elif isinstance(event, ConnectionClosed):
        expect(EOF in events, "ConnectionClosed before the end of the input")
    else:
        raise OracleFailure(f"next_event() returned {event!r:.300}")


def check_paused(parser: ProxyRequests) -> None:
    expect(parser.next_event() is PAUSED, "not PAUSED again")
    try:
        parser.receive_data(b"x")
    except RuntimeError:
        pass
    else:
        raise OracleFailure("a paused parser took more data")


def check_closed(parser: ProxyRequests) -> None:
    expect(isinstance(parser.next_event(), ConnectionClosed), "not ConnectionClosed again")
    try:
        parser.receive_data(b"x")
    except RuntimeError:
        pass
    else:
        raise OracleFailure("a closed parser took more data")


def feed(chunks: Iterable[bytes]) -> Outcome:
    """Feed the non-empty chunks, then the end of the input, as the gate's shell does;
    check every event and the buffer's bound on the way."""
    parser = ProxyRequests()
    events: list[object] = []
    pieces = iter(chunks)
    try:
        try:
            for chunk in pieces:
                if not chunk:
                    continue  # b"" is the end of the input
                parser.receive_data(chunk)
                expect(len(parser._buffer) <= BUFFER_BOUND + len(chunk),
                       f"{len(parser._buffer)} bytes buffered after {len(chunk)} more")
                while (event := parser.next_event()) is not NEED_DATA:
                    if event is PAUSED:
                        expect(bool(events) and isinstance(events[-1], Connect),
                               "PAUSED without a Connect")
                        tunnel = parser.trailing_data + b"".join(pieces)
                        check_paused(parser)
                        return events, None, tunnel
                    check_event(event, events)
                    events.append(event)
                expect(len(parser._buffer) <= BUFFER_BOUND,
                       f"{len(parser._buffer)} bytes buffered at NEED_DATA")
            events.append(EOF)
            parser.receive_data(b"")
            event = parser.next_event()
            expect(isinstance(event, ConnectionClosed), f"at the end of the input: {event!r:.300}")
            check_event(event, events)
            events.append(event)
            check_closed(parser)
            return events, None, b""
        except ProxyRequestError as exc:
            error = check_error(exc)
            try:
                parser.next_event()
            except ProxyRequestError as again:
                expect(again is exc, f"another error after the first: {again!r:.300}")
            else:
                raise OracleFailure("a failed parser gave an event") from None
            return events, error, b""
    except OracleFailure:
        raise
    except Exception as exc:
        check_error(exc)  # raises OracleFailure
        raise


def bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i:i + 1] for i in range(len(data)))


def at_line_ends(data: bytes) -> Iterator[bytes]:
    """Pieces cut before and after every CR and LF, and at cut points hashed from data."""
    cuts = {m.start() for m in re.finditer(rb"[\r\n]", data)}
    cuts |= {c + 1 for c in cuts}
    if len(data) > 1:
        rng = random.Random(hashlib.blake2b(data, digest_size=8).digest())
        cuts |= set(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 48))))
    prev = 0
    for cut in sorted(cuts):
        yield data[prev:cut]
        prev = cut
    yield data[prev:]


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode, payload = data[0] % len(MODES), data[1:]
    with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
        stream = GET + payload if MODES[mode] == "after-get" else payload
        ref = feed([stream])
        if MODES[mode] == "after-get":
            expect(ref[0][:1] == [GET_EVENT], f"the GET before the input gave {ref[0][:1]!r:.300}")
            pieces: Iterable[bytes] = [GET, *split(payload)]
        elif MODES[mode] == "bytewise":
            pieces = bytewise(stream)
        elif MODES[mode] == "cuts":
            pieces = at_line_ends(stream)
        else:
            pieces = split(stream)
        expect_same("outcomes", ref, feed(pieces))


def main() -> None:
    libfuzzer_main(atheris, "proxy", run_one)


if __name__ == "__main__":
    main()
