"""Fuzz harness for the sans-IO LiveKit signalling core (relay/lksignal/): what the
server may send on the signal WebSocket.

Byte 0 picks the mode (mod 4), the state the messages meet:

* 0 ``before-join``: a fresh SignalClient, nothing received yet;
* 1 ``joined``: after a valid JoinResponse (ping interval 5 s, timeout 15 s) and one
  ``ping`` of ours (so a ``pong_resp`` may echo it);
* 2 ``track-added``: as 1, then ``add_track`` of cid ``"v0"`` (so a TrackPublished for
  v0 is expected);
* 3 ``left``: as 1, then our own ``leave()``.

Bits 2-3 of byte 0 give the number of binary WebSocket messages minus one (1-4). The
rest of the input is that many messages: all but the last each as a 2-byte big-endian
length and that many bytes, the last one whatever remains (if a length runs past the
end, the rest is the last message). Each goes to ``SignalClient.receive(message, now)``
with ``now`` a little later each time.

Oracle (raises OracleFailure, i.e. a crash): ``receive`` raises only
SignalProtocolError, with a printable one-line message of at most MAX_ERROR characters,
and then leaves the client as it was (join, closed, pending tracks, RTT, keep-alive
times); otherwise it returns one event (none once closed) of a documented type with sane
fields: a Joined only as the first thing heard, and then ``joined`` is it; a Leave
closes the client; a TrackPublished only for a pending cid, which it removes; a Trickle
whose candidate is a JSON object for the publisher or subscriber; an Offer or Answer of
its type; a Pong whose RTT is there exactly when it echoes our ping, and is then
``rtt_ms``; an OtherResponse only for a kind not interpreted. Pending tracks never exceed
MAX_PENDING_TRACKS; ``next_ping`` and ``timed_out`` never raise (at ordinary, huge,
negative and infinite times) and return a float or None, a bool. Afterwards the client
still works as its state allows: a fresh join if none came; then a ping / ``pong_resp``
exchange giving the RTT and an ``add_track`` answered by its TrackPublished; once
closed, input is dropped and sending is a RuntimeError. Optionally a tracemalloc bound
(FUZZ_MEMCHECK=1).

Run: ``python fuzz/run.py lksignal --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import nullcontext
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import OracleFailure, expect, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.lksignal"])
      if atheris and __name__ == "__main__" else nullcontext()):
    from livekit.protocol import models, rtc

    from relay import lksignal

MODES = ("before-join", "joined", "track-added", "left")
MAX_MESSAGES = 4
MAX_ERROR = 400
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 2 * 1024 * 1024
MEM_PER_BYTE = 64

T0 = 1000.0  # the join (seconds of the client's monotonic clock)
PING_AT = T0 + 0.5  # the setup's ping: a pong_resp may echo PING_MS
PING_MS = math.floor(PING_AT * 1000)
NOW = T0 + 1.0  # the first fuzz message; each next one 0.125 s later
STEP = 0.125
CID = "v0"
EVENT_TYPES = (lksignal.Joined, lksignal.Offer, lksignal.Answer, lksignal.Trickle,
               lksignal.TrackPublished, lksignal.Leave, lksignal.Pong,
               lksignal.RequestResult, lksignal.OtherResponse)
INTERPRETED = {"join", "offer", "answer", "trickle", "track_published", "leave", "pong_resp",
               "pong", "request_response"}
TIMES = (0.0, T0, NOW + 20.0, -1e300, 1e300, math.inf, -math.inf)


def response(**fields: object) -> bytes:
    return rtc.SignalResponse(**fields).SerializeToString()  # type: ignore[arg-type]


def join_response() -> bytes:
    return response(join=rtc.JoinResponse(
        room=models.Room(name="room-a", sid="RM_fuzz"),
        participant=models.ParticipantInfo(sid="PA_fuzz", identity="ingress"),
        server_version="1.13.5", subscriber_primary=False,
        ice_servers=[rtc.ICEServer(urls=["stun:stun.example:3478"], username="u",
                                   credential="c")],
        ping_interval=5, ping_timeout=15))


def published(cid: str, sid: str = "TR_fuzz") -> bytes:
    return response(track_published=rtc.TrackPublishedResponse(
        cid=cid, track=models.TrackInfo(sid=sid, name="video",
                                        type=models.TrackType.VIDEO)))


def add_track(client: lksignal.SignalClient, cid: str) -> bytes:
    return client.add_track(cid, "video", "video", source="camera", width=1280, height=720,
                            layers=[("low", 640, 360, 500_000), ("high", 1280, 720, 2_000_000)],
                            simulcast_codecs=[("h264", cid)])


def setup(mode: str) -> lksignal.SignalClient:
    client = lksignal.SignalClient()
    if mode == "before-join":
        return client
    [joined] = client.receive(join_response(), T0)
    expect(isinstance(joined, lksignal.Joined), f"setup join gave {joined!r:.300}")
    client.ping(PING_AT)
    if mode == "track-added":
        add_track(client, CID)
    elif mode == "left":
        client.leave()
    return client


def split_messages(data: bytes, count: int) -> list[bytes]:
    """``count - 1`` messages each after a 2-byte length, then the rest as the last."""
    out = []
    rest = data
    while len(out) < count - 1 and len(rest) >= 2:
        n = int.from_bytes(rest[:2], "big")
        if n > len(rest) - 2:
            break
        out.append(rest[2:2 + n])
        rest = rest[2 + n:]
    out.append(rest)
    return out


def snapshot(client: lksignal.SignalClient) -> tuple[Any, ...]:
    """What an error must leave as it was."""
    return (id(client.joined), client.closed, client.pending_tracks, client.rtt_ms,
            *keepalive(client))


def keepalive(client: lksignal.SignalClient) -> list[Any]:
    """next_ping and timed_out at several times: they never raise, return their types."""
    out: list[Any] = []
    for now in TIMES:
        try:
            due = client.next_ping(now)
            late = client.timed_out(now)
        except Exception as exc:
            raise OracleFailure(f"keep-alive at {now} raised {type(exc).__name__}: "
                                f"{exc!s:.300}") from exc
        expect(due is None or (isinstance(due, float) and not math.isnan(due)),
               f"next_ping({now}) = {due!r}")
        expect(isinstance(late, bool), f"timed_out({now}) = {late!r}")
        expect(client.joined is not None or (due is None and not late),
               "keep-alive before the join")
        expect(not client.closed or (due is None and not late), "keep-alive after a leave")
        out += [due, late]
    return out


def protocol_error(exc: Exception) -> None:
    if not isinstance(exc, lksignal.SignalProtocolError):
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc!s:.300}") from exc
    message = str(exc)
    expect(bool(message) and message.isprintable() and len(message) <= MAX_ERROR,
           f"error message: {message!r:.500}")


def check_event(event: object, client: lksignal.SignalClient, before: tuple[Any, ...],
                pending: frozenset[str], now: float, pinged: bool) -> None:
    expect(isinstance(event, EVENT_TYPES), f"receive returned {event!r:.300}")
    was_joined = before[0] != id(None)
    if not was_joined:
        expect(isinstance(event, lksignal.Joined | lksignal.Leave),
               f"{type(event).__name__} before the join")
    if isinstance(event, lksignal.Joined):
        expect(not was_joined and client.joined is event, "Joined not first, or not kept")
        for name in ("room_name", "room_sid", "participant_sid", "participant_identity",
                     "server_version"):
            expect(isinstance(getattr(event, name), str), f"Joined.{name}")
        for value in (event.ping_interval, event.ping_timeout):
            expect(isinstance(value, float) and 0 <= value < 2**32, f"Joined interval {value}")
        expect(isinstance(event.ice_servers, tuple) and all(
            isinstance(s, lksignal.IceServer) and isinstance(s.urls, tuple)
            and all(isinstance(u, str) for u in s.urls) for s in event.ice_servers),
            f"Joined.ice_servers {event.ice_servers!r:.300}")
    elif isinstance(event, lksignal.Offer | lksignal.Answer):
        kind = "offer" if isinstance(event, lksignal.Offer) else "answer"
        expect(event.type == kind and isinstance(event.sdp, str) and isinstance(event.id, int),
               f"{event!r:.300}")
    elif isinstance(event, lksignal.Trickle):
        expect(event.target in ("publisher", "subscriber") and isinstance(event.final, bool),
               f"{event!r:.300}")
        expect(isinstance(json.loads(event.candidate_init), dict), "trickle not an object")
    elif isinstance(event, lksignal.TrackPublished):
        expect(event.cid in pending and event.cid not in client.pending_tracks,
               f"TrackPublished {event.cid!r:.80} pending before {sorted(pending)}")
        expect(isinstance(event.sid, str) and isinstance(event.name, str), f"{event!r:.300}")
    elif isinstance(event, lksignal.Leave):
        expect(client.closed and isinstance(event.reason, str) and event.reason != ""
               and isinstance(event.action, str) and event.action != "", f"{event!r:.300}")
    elif isinstance(event, lksignal.Pong):
        expect(isinstance(event.timestamp, int), f"{event!r:.300}")
        ours = pinged and event.last_ping == PING_MS
        if ours:
            expect(event.rtt == math.floor(now * 1000) - PING_MS and client.rtt_ms == event.rtt,
                   f"{event!r:.300} rtt_ms {client.rtt_ms}")
        else:
            expect(event.rtt is None and client.rtt_ms == before[3], f"{event!r:.300}")
    elif isinstance(event, lksignal.RequestResult):
        expect(isinstance(event.request_id, int) and isinstance(event.reason, str)
               and isinstance(event.message, str), f"{event!r:.300}")
    elif isinstance(event, lksignal.OtherResponse):
        expect(isinstance(event.kind, str) and event.kind not in INTERPRETED,
               f"OtherResponse for {event.kind!r}")
    if not isinstance(event, lksignal.TrackPublished):
        expect(client.pending_tracks == pending, "pending tracks changed")


def feed(client: lksignal.SignalClient, message: bytes, now: float, pinged: bool) -> None:
    before = snapshot(client)
    pending = client.pending_tracks
    closed = client.closed
    try:
        events = client.receive(message, now)
    except Exception as exc:
        protocol_error(exc)
        expect(snapshot(client) == before, "state changed by a refused message")
        return
    expect(isinstance(events, list) and len(events) == (0 if closed else 1),
           f"receive returned {events!r:.300}")
    for event in events:
        check_event(event, client, before, pending, now, pinged)
    expect(len(client.pending_tracks) <= lksignal.MAX_PENDING_TRACKS, "too many pending")
    keepalive(client)


def still_usable(client: lksignal.SignalClient, now: float) -> None:
    """A fresh join if none came, then a ping exchange and a published track; once
    closed, input dropped and sending refused."""
    if client.closed:
        expect(client.receive(join_response(), now) == [], "input after a leave")
        for send in (lambda: client.ping(now), client.leave, lambda: add_track(client, "fz")):
            try:
                send()
            except RuntimeError:
                continue
            raise OracleFailure("sending after a leave")
        return
    if client.joined is None:
        [event] = client.receive(join_response(), now)
        expect(isinstance(event, lksignal.Joined), f"fresh join gave {event!r:.300}")
    now += 1.0
    sent = rtc.SignalRequest()
    sent.ParseFromString(client.ping(now))
    expect(sent.WhichOneof("message") == "ping_req"
           and sent.ping_req.timestamp == math.floor(now * 1000), f"ping {sent!r:.300}")
    expect(client.next_ping(now) == now + client.joined.ping_interval  # type: ignore[union-attr]
           or client.next_ping(now) is None, "next_ping after a ping")
    pong = response(pong_resp=rtc.Pong(last_ping_timestamp=sent.ping_req.timestamp,
                                       timestamp=1_780_000_000_000))
    [event] = client.receive(pong, now + 0.25)
    rtt = math.floor((now + 0.25) * 1000) - sent.ping_req.timestamp
    expect(event == lksignal.Pong(sent.ping_req.timestamp, 1_780_000_000_000, rtt)
           and client.rtt_ms == rtt, f"pong gave {event!r:.300}")
    expect(not client.timed_out(now + 1.0), "timed out right after a pong")
    cid = "fz"
    pending = client.pending_tracks
    if len(pending) < lksignal.MAX_PENDING_TRACKS and cid not in pending:
        add_track(client, cid)
        expect(cid in client.pending_tracks, "add_track not pending")
        [event] = client.receive(published(cid, "TR_fresh"), now + 0.5)
        expect(event == lksignal.TrackPublished(cid, "TR_fresh", "video")
               and cid not in client.pending_tracks, f"fresh track gave {event!r:.300}")


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode = MODES[data[0] % len(MODES)]
    count = (data[0] >> 2) % MAX_MESSAGES + 1
    with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
        client = setup(mode)
        now = NOW
        for message in split_messages(data[1:], count):
            feed(client, message, now, mode != "before-join")
            now += STEP
        still_usable(client, now)


def main() -> None:
    libfuzzer_main(atheris, "lksignal", run_one)


if __name__ == "__main__":
    main()
