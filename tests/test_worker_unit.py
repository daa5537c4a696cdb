"""Worker pieces that need no room: the frame-rate limiter."""

from __future__ import annotations

from relay.worker import FrameRateLimiter


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
    from relay.worker import LagGate

    gate = LagGate(500)
    assert gate.admit(0)  # nothing seen yet
    for dts in range(0, 3000, 33):
        gate.observe(dts)
    assert not gate.admit(1000)  # 2 s behind: skipped
    assert gate.admit(2600)  # within half a second
    assert gate.skipped == 1
    gate.observe(40)  # the encoder restarted: its clock went back
    assert gate.newest == 40 and gate.admit(0)
