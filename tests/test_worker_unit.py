"""Worker pieces that need no room: the frame-rate limiter, the lag gate, the RTMP
router's no-media timeout, and the front's side of a WHIP ICE restart."""

from __future__ import annotations

import trio
import trio.testing

from relay.worker.session import FrameRateLimiter


def kept(fps_in: float, fps_out: float, seconds: float = 10.0) -> int:
    limiter = FrameRateLimiter(fps_out)
    count = int(fps_in * seconds)
    return sum(limiter.accept(round(i * 1000 / fps_in)) for i in range(count))


def test_same_rate_keeps_every_frame() -> None:
    assert kept(30, 30) == 300
    assert kept(25, 30) == 250
    assert kept(29.97, 30) == 299


def test_higher_rate_is_limited() -> None:
    assert kept(60, 30) == 300
    assert 295 <= kept(50, 30) <= 301
    assert kept(60, 25) in range(245, 252)


def test_jumps_restart_the_cadence() -> None:
    limiter = FrameRateLimiter(30)
    assert [limiter.accept(t) for t in (0, 33, 67)] == [True, True, True]
    assert limiter.accept(10_000)  # a gap
    assert limiter.accept(10_033)
    assert limiter.accept(5)  # encoder restarted: timestamps went back
    assert limiter.accept(38)


def test_lag_gate_skips_pictures_far_behind_the_newest_arrival() -> None:
    from relay.worker.session import LagGate

    gate = LagGate(500)
    assert gate.admit(0)  # nothing seen yet
    for dts in range(0, 3000, 33):
        gate.observe(dts)
    assert not gate.admit(1000)  # 2 s behind: skipped
    assert gate.admit(2600)  # within half a second
    assert gate.skipped == 1
    gate.observe(40)  # the encoder restarted: its clock went back
    assert gate.newest == 40 and gate.admit(0)


# A stand-in session worker for the front's side of an ICE restart: it answers the
# first IceRestart late (after the front gave up), the second at once, then exits.
FAKE_WORKER = """
import sys, time
from relay.wire import IceCredentials, IceRestart, MessageReader, encode
reader, answered = MessageReader(), 0
while data := sys.stdin.buffer.read1(65536):
    reader.receive_data(data)
    for message in reader:
        assert isinstance(message, IceRestart), message
        if answered == 0:
            time.sleep(0.6)
        answered += 1
        sys.stdout.buffer.write(encode(IceCredentials(f"late{answered}" if answered == 1
                                                      else message.ufrag[::-1], "p" * 22)))
        sys.stdout.buffer.flush()
        if answered == 2:
            sys.exit(0)
"""


async def test_ice_restart_answers_reach_the_restart_that_asked() -> None:
    """A late answer is not taken for the next restart's; a worker gone is None."""
    import subprocess
    import sys

    from relay.service.ingest.worker_client import SessionWorker
    from relay.wire import IceCredentials, IceRestart

    process = await trio.lowlevel.open_process([sys.executable, "-c", FAKE_WORKER],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    worker = SessionWorker(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker._read_reports)
        assert await worker.restart_ice(IceRestart("abcd", "q" * 22), timeout=0.2) is None
        await trio.sleep(0.8)  # the late answer arrives now, and waits unclaimed
        assert await worker.restart_ice(IceRestart("wxyz", "q" * 22), timeout=5) == (
            IceCredentials("zyxw", "p" * 22))
        await worker.exited.wait()
        assert await worker.restart_ice(IceRestart("efgh", "q" * 22), timeout=5) is None
    assert process.returncode == 0


def test_simulcast_passthrough_orders_and_guesses_layers() -> None:
    from relay.worker.passthrough import _guess_sizes, _layer_order

    seen = {"q": (320, 180), "h": (640, 360)}
    assert _layer_order(("q", "h", "f"), seen) == ["q", "h", "f"]
    # an offer listing its layers high to low, as some clients do
    assert _layer_order(("f", "h", "q"), seen) == ["q", "h", "f"]
    # the top layer not seen yet (the browser's estimate has not allowed it): twice its
    # neighbour's size; a lower one unseen: half
    assert _guess_sizes(["q", "h", "f"], seen) == [(320, 180), (640, 360), (1280, 720)]
    assert _guess_sizes(["q", "h", "f"], {"f": (1280, 720)}) == [
        (320, 180), (640, 360), (1280, 720)]


def test_rtp_timestamps_only_move_forward() -> None:
    from relay.worker.session import MonotonicClock

    clock = MonotonicClock()
    assert [clock(pts, pts / 1000) for pts in (0, 33, 66)] == [0, 33, 66]
    assert clock(3_600_000, 0.1) == 100  # a leap: continues by the wall time (34 ms)
    assert clock(3_600_033, 0.133) == 133  # then follows the source again
    assert clock(0, 0.166) == 166  # an encoder restart at 0
    assert clock(0, 0.166) == 166 + 0  # a repeated timestamp stays (no step back)
    assert clock(33, 0.2) == 199


async def test_rtmp_router_ends_a_session_without_media_and_not_one_with_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """The no-media timeout is pushed on by each read (one cancel scope for the
    session): media every 0.6 timeouts keeps the session; silence ends it with
    the error the ingress shows."""
    import contextlib

    import rtmp
    from relay.wire import EndOfStream, MessageReader, encode
    from relay.worker import rtmp_input
    from relay.worker.session import InputStats, LagGate, SessionFailed

    class _Session:  # what the router reads and counts of a Session
        video_in, audio_in = InputStats(), InputStats()
        video_lag, audio_lag = LagGate(500), LagGate(50)
        dropped_video = dropped_audio = 0

    async def run(feed: list[bytes | None]) -> tuple[object, int]:
        send, receive = trio.testing.memory_stream_one_way_pair()
        video_send, _video = trio.open_memory_channel[object](10)
        audio_send, audio_receive = trio.open_memory_channel[object](10)
        result: list[object] = []

        async def front() -> None:
            for item in feed:
                await trio.sleep(0.6 * rtmp_input.NO_MEDIA_TIMEOUT)
                if item is None:
                    return  # then silence
                await send.send_all(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(front)
            try:
                result.append(await rtmp_input.route(
                    _Session(), MessageReader(), receive, rtmp_input.ChannelQueue(video_send),
                    audio_send))
            except SessionFailed as exc:
                result.append(exc)
            nursery.cancel_scope.cancel()
        queued = 0
        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
            while audio_receive.receive_nowait():
                queued += 1
        return result[0], queued

    frame = encode(rtmp.AudioFrame("aac", 0, b"\x21\x00"))
    end, queued = await run([frame] * 4 + [encode(EndOfStream("the publisher stopped"))])
    assert end == EndOfStream("the publisher stopped") and queued == 4
    failure, queued = await run([frame, frame, None])
    assert isinstance(failure, SessionFailed) and queued == 2
    assert str(failure) == f"no media received for {rtmp_input.NO_MEDIA_TIMEOUT:.0f} s"


async def test_simulcast_passthrough_holds_back_layers_over_the_estimate() -> None:
    """Layers above the bandwidth estimate are not forwarded, from the top down; a
    layer that fits again waits for its next keyframe and asks for one."""
    from relay.worker.passthrough import EncodedVideoOutput

    class _Publisher:  # what EncodedVideoOutput uses of RoomPublisher, once published
        allowed, estimate = 3, 1e6
        sent: list[tuple[int, bool]] = []

        def layers_allowed(self, track: object) -> int:
            return self.allowed

        def take_keyframe_request(self, track: object, layer: int) -> bool:
            return False

        def send(self, track: object, layer: int, payloads: object, timestamp: int) -> None:
            self.sent.append((layer, self.keyframe))

    class _Session:
        publisher = _Publisher()
        video_in = type("Stats", (), {"mime": "", "width": 0, "height": 0})()
        captured_video = 0

    session = _Session()
    publisher = session.publisher
    output = EncodedVideoOutput(session, ("q", "h", "f"))  # type: ignore[arg-type]
    output.track = object()  # type: ignore[assignment]  # published already
    output.layers = ["q", "h", "f"]
    output.sizes = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
    vp8_delta = b"\x01\x00\x00" + b"\x00" * 20  # a VP8 inter frame (no size probe)

    async def unit(rid: str) -> None:
        publisher.keyframe = False
        await output.send("vp8", vp8_delta, False, 33_000, rid)

    for rid in "qhf":
        await unit(rid)
    assert publisher.sent == [(0, False), (1, False), (2, False)]
    publisher.sent.clear()
    publisher.allowed = 1  # the estimate fell: only LOW fits
    for rid in "qhf":
        await unit(rid)
    assert publisher.sent == [(0, False)] and output.held == {1, 2}
    publisher.allowed = 3  # it rose again: the held layers wait for a keyframe
    publisher.sent.clear()
    for rid in "qhf":
        await unit(rid)
    assert publisher.sent == [(0, False)]
    assert output.keyframe_requested(1) and output.keyframe_requested(2)
    assert not output.keyframe_requested(1)  # asked once per wait
    publisher.keyframe = True
    await output.send("vp8", vp8_delta, True, 66_000, "h")
    await output.send("vp8", vp8_delta, False, 66_000, "f")
    assert publisher.sent[1:] == [(1, True)] and output.held == {2}


def test_rtp_timestamps_go_on_across_the_wrap() -> None:
    """relay/worker/whip_peer.RtpClock: a publisher's 32-bit RTP time, which wraps
    every 13.3 h at 90 kHz, goes on as a count; reordering across the wrap keeps its
    order; the first value and one just before it stay positive."""
    from relay.worker.whip_peer import RtpClock

    clock = RtpClock()
    top = (1 << 32) - 3000
    sent = [top, top + 3000 - (1 << 32), top + 1500, 3000, 6000]  # 0, then a late one
    got = [clock.unwrap(t) for t in sent]
    assert [g - got[0] for g in got] == [0, 3000, 1500, 6000, 9000]
    assert RtpClock().unwrap(0) > 0
    early = RtpClock()
    first = early.unwrap(10)
    assert early.unwrap((1 << 32) - 10) == first - 20 > 0  # just before the first
    long_run = RtpClock()
    values = [long_run.unwrap((i * 3000) & 0xFFFFFFFF) for i in range(0, 5_000_000, 997)]
    assert values == sorted(values) and values[-1] - values[0] == 3000 * 997 * (
        len(values) - 1)  # ~46 h at 30 fps: three wraps, never a step back
