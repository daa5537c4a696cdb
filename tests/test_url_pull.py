"""relay/worker/url_input.py without a room: the pacing clock, the HTTP probe, opening
sources."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.worker.egress_gate import EgressGate, open_egress_gate
from relay.worker.url_input import MediaClock, SourceError, open_source, probe_http, redact
from tests.clock import ManualClock
from tests.livekit import free_port
from tests.media_http import MediaServer, public_here, serve_media
from tests.test_egress import in_thread, pull


def fails_with(text: str, *, whole: bool = False) -> Any:
    """pytest.raises(SourceError) whose message starts with (or is) `text`."""
    return pytest.raises(SourceError, match=f"^{re.escape(text)}{'$' if whole else ''}")


def test_clock_paces_from_the_first_frame() -> None:
    t = ManualClock(100.0)
    clock = MediaClock(t)
    assert clock.due(5_000) == 100.0
    assert clock.due(5_040) == pytest.approx(100.04)
    t.now = 100.3
    assert clock.due(6_000) == pytest.approx(101.0)  # early: wait for it
    assert clock.reanchored == 0


def test_a_file_that_stalled_continues_from_the_late_frame() -> None:
    t = ManualClock(100.0)
    clock = MediaClock(t)
    clock.due(0)
    t.now = 103.0  # 3 s of wall time later, the frame at 1 s arrives: 2 s late
    assert clock.due(1_000) == 103.0
    assert clock.due(1_040) == pytest.approx(103.04)  # the clock moved with it
    assert (clock.reanchored, clock.skipped) == (1, 0)


def test_a_timestamp_jump_restarts_the_clock() -> None:
    t = ManualClock(100.0)
    clock = MediaClock(t)
    clock.due(0)
    assert clock.due(3_600_000) == 100.0  # an hour ahead: a discontinuity, not a wait
    assert clock.due(3_600_040) == pytest.approx(100.04)


def test_a_live_source_behind_its_edge_skips_late_frames() -> None:
    t = ManualClock(100.0)
    clock = MediaClock(t, live=True)
    clock.due(0)
    t.now = 104.0  # stalled 4 s; the missed segments then arrive faster than real time
    assert clock.due(1_000) is None  # late: skipped
    t.now = 104.5
    assert clock.due(3_000) is None
    t.now = 105.0
    assert clock.due(4_980) == pytest.approx(104.98)  # back at the edge, on the old clock
    assert (clock.skipped, clock.reanchored) == (2, 0)
    t.now = 105.0
    assert clock.due(5_020) == pytest.approx(105.02)  # on time: the catch-up window resets
    t.now = 108.0  # a new stall: a new window of its own
    assert clock.due(6_000) is None


def test_a_live_source_that_cannot_catch_up_is_followed() -> None:
    t = ManualClock(100.0)
    clock = MediaClock(t, live=True)
    clock.due(0)
    t.now = 104.0
    for step in range(40):  # 4 s late, and staying late: what SRT does after a stall
        t.now = 104.0 + step * 0.1
        due = clock.due(step * 100)
        if due is not None:
            break
    assert due == pytest.approx(t.now)  # re-anchored once the catch-up window ran out
    assert t.now - 104.0 >= 3.0 - 1e-9
    assert clock.reanchored == 1
    assert clock.due(step * 100 + 40) == pytest.approx(t.now + 0.04)


def test_redact_drops_credentials_and_query() -> None:
    assert redact("https://user:pw@cdn.example:8443/a/b.m3u8?token=s3cret") == \
        "https://cdn.example:8443/a/b.m3u8"


@pytest.fixture
def media(tmp_path: Path) -> Iterator[MediaServer]:
    (tmp_path / "notes.bin").write_bytes(b"this is not media at all\n" * 100)
    with serve_media(tmp_path) as server:
        yield server


@pytest.fixture(params=["direct", "through the egress gate"])
async def gate(request: pytest.FixtureRequest) -> AsyncIterator[EgressGate | None]:
    """The probe as url_allow_private_addresses runs it, and through the gate (served by
    the test's event loop, the probe in a thread): the gate's 502 or 504 must not
    replace the messages the user gets."""
    if request.param == "direct":
        yield None
    else:
        async with open_egress_gate(public_here) as gate:
            yield gate


async def test_probe_reports_http_errors_and_types(media: MediaServer, gate: EgressGate | None
                                                   ) -> None:
    assert await in_thread(probe_http, f"{media.base}/page.html", gate=gate) == "text/html"
    assert await in_thread(probe_http, f"{media.base}/notes.bin", gate=gate) == \
        "application/octet-stream"
    with fails_with(f"HTTP 404 Not Found from {media.base}/nope.mp4", whole=True):
        await in_thread(probe_http, f"{media.base}/nope.mp4?sig=abc", gate=gate)
    with fails_with("HTTP 500 Internal Server Error from "):
        await in_thread(probe_http, f"{media.base}/status/500", gate=gate)
    port = free_port()
    with fails_with(f"cannot reach 127.0.0.1:{port}: connection refused", whole=True):
        await in_thread(probe_http, f"http://127.0.0.1:{port}/x.mp4", gate=gate)
    with fails_with("cannot resolve host nowhere.invalid", whole=True):
        await in_thread(probe_http, "http://nowhere.invalid/x.mp4", gate=gate)


async def test_probe_refuses_an_untrusted_certificate(media: MediaServer, tmp_path: Path,
                                                      gate: EgressGate | None) -> None:
    from tests.test_rtmp_ingest import make_cert

    with (serve_media(tmp_path, certificate=make_cert(tmp_path)) as server,
          fails_with("TLS failure with 127.0.0.1: self-signed")):
        await in_thread(probe_http, f"https://127.0.0.1:{server.server_address[1]}/x.mp4",
                        gate=gate)


async def test_content_that_is_not_media_is_refused(media: MediaServer) -> None:
    with fails_with("unsupported mime type (text/html) for the source media"):
        await pull(f"{media.base}/page.html", refuse=public_here)
    # a type that might be media: FFmpeg probes it, finds nothing, same message
    with fails_with("unsupported mime type (application/octet-stream) for the source media"):
        await pull(f"{media.base}/notes.bin", refuse=public_here)


def test_srt_url_errors_are_source_errors() -> None:
    with fails_with("only caller mode is supported"):
        open_source("srt://127.0.0.1:9000?mode=listener", refuse=public_here)
    with fails_with("SRT connection to 127.0.0.1:"):
        open_source(f"srt://127.0.0.1:{free_port()}?connect_timeout=300", refuse=public_here)
