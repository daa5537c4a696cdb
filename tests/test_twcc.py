"""relay/worker/room/_twcc.py: transport-wide CC feedback, the estimate, the layers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.worker.room._twcc import (
    HEADROOM,
    FeedbackError,
    PacketResult,
    SendSideEstimator,
    layers_within,
    parse_feedback,
)


def feedback(base: int, arrivals: list[int | None], reference_64ms: int | None = None
             ) -> bytes:
    """An FCI with 2-bit status vector chunks: arrival in 250 us units (None: lost);
    small deltas 1 byte, others 2; the reference time just before the first arrival."""
    if reference_64ms is None:
        reference_64ms = min((a for a in arrivals if a is not None), default=0) // 256
    symbols, deltas = [], b""
    previous = reference_64ms * 256  # 64 ms in 250 us units
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        delta = arrival - previous
        previous = arrival
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas += bytes([delta])
        else:
            symbols.append(2)
            deltas += struct.pack("!h", delta)
    chunks = b""
    for i in range(0, len(symbols), 7):
        group = (symbols[i:i + 7] + [0] * 7)[:7]
        value = 0xC000
        for j, symbol in enumerate(group):
            value |= symbol << (12 - 2 * j)
        chunks += struct.pack("!H", value)
    head = struct.pack("!HH", base, len(arrivals)) + reference_64ms.to_bytes(3, "big") + b"\x01"
    data = head + chunks + deltas
    return data + b"\x00" * (-len(data) % 4)


def test_parse_status_vectors_small_and_large_deltas_and_losses() -> None:
    fci = feedback(65534, [4, None, 10, 2000, 1990], reference_64ms=0)
    assert parse_feedback(fci) == [
        PacketResult(65534, 1000), PacketResult(65535, None), PacketResult(0, 2500),
        PacketResult(1, 500_000), PacketResult(2, 497_500)]


def test_parse_run_length_and_one_bit_vectors() -> None:
    run = struct.pack("!HH", 10, 3) + (5).to_bytes(3, "big") + b"\x00"
    run += struct.pack("!H", 0x2000 | 3) + bytes([1, 1, 1]) + b"\x00"  # 3 x small delta
    assert [r.arrival_us for r in parse_feedback(run)] == [
        320_250, 320_500, 320_750]
    one_bit = struct.pack("!HH", 0, 2) + b"\x00\x00\x00\x00"
    one_bit += struct.pack("!H", 0x8000 | (1 << 13)) + bytes([8]) + b"\x00"
    assert parse_feedback(one_bit) == [PacketResult(0, 2000), PacketResult(1, None)]


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, struct.pack("!HH", 0, 5) + b"\0" * 4,
                                  struct.pack("!HH", 0, 1) + b"\0" * 4 + b"\x20\x01",
                                  struct.pack("!HH", 0, 65535) + b"\0" * 8])
def test_malformed_feedback_is_refused(data: bytes) -> None:
    with pytest.raises(FeedbackError):
        parse_feedback(data)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_feedback_error(data: bytes) -> None:
    try:
        results = parse_feedback(data)
    except FeedbackError:
        return
    assert len(results) <= 4096


def run(estimator: SendSideEstimator, seconds: float, *, queue_growth_ms: float = 0.0,
        loss_every: int = 0, rate_bps: int = 1_000_000, start_ms: float = 0.0) -> float:
    """Send 1,000-byte packets at `rate_bps`, feedback every 100 ms; a queue that
    grows by `queue_growth_ms` per second, every `loss_every`-th packet lost."""
    interval = 8_000 * 1000 / rate_bps  # ms between packets
    now, sequence, pending = start_ms, 0, []
    while now < start_ms + seconds * 1000:
        estimator.on_sent(sequence & 0xFFFF, 1000, now)
        queue = queue_growth_ms * (now - start_ms) / 1000
        lost = loss_every and sequence % loss_every == 0
        pending.append(None if lost else int((now + 20 + queue) * 4))  # 250 us units
        sequence += 1
        now += interval
        if len(pending) * interval >= 100:
            base = (sequence - len(pending)) & 0xFFFF
            estimator.on_feedback(feedback(base, pending), now)
            pending = []
    return estimator.estimate


def test_a_clean_path_keeps_the_estimate_at_its_ceiling() -> None:
    estimator = SendSideEstimator(3_000_000)
    assert run(estimator, 5) == 3_000_000


def test_a_growing_queue_cuts_the_estimate_below_what_arrives() -> None:
    estimator = SendSideEstimator(3_000_000)
    assert run(estimator, 5, queue_growth_ms=40) < 1_000_000
    assert estimator.overuses > 0


def test_heavy_loss_cuts_the_estimate_after_the_warm_up() -> None:
    estimator = SendSideEstimator(3_000_000)
    assert run(estimator, 1.5, loss_every=4) == 3_000_000  # warm-up: start-up losses
    assert run(estimator, 3, loss_every=4, start_ms=1500) < 1_500_000


def test_the_estimate_grows_back_once_the_path_is_clean() -> None:
    estimator = SendSideEstimator(3_000_000)
    low = run(estimator, 5, queue_growth_ms=40)
    assert run(estimator, 10, start_ms=5000) > 1.5 * low


def test_layers_drop_from_the_top_and_come_back_with_a_margin() -> None:
    rates = [200_000, 500_000, 1_500_000]
    assert layers_within(rates, HEADROOM * 2_200_000, 3) == 3
    assert layers_within(rates, 2_250_000, 3) == 3
    assert layers_within(rates, 2_100_000, 3) == 2
    assert layers_within(rates, 2_250_000, 2) == 2  # back only with 10% to spare
    assert layers_within(rates, 2_500_000, 2) == 3
    assert layers_within(rates, 100_000, 3) == 1  # never none


def test_one_late_feedback_is_not_a_queue() -> None:
    """A busy SFU stamping one batch late (one feedback's packets 100 ms later than
    the rest) does not cut the estimate: overuse takes two feedbacks in a row."""
    estimator = SendSideEstimator(3_000_000)
    for batch in range(30):
        late = 100 if batch == 10 else 0
        base = batch * 10
        for i in range(10):
            estimator.on_sent(base + i, 1000, batch * 100 + i * 10)
        arrivals = [int((batch * 100 + i * 10 + 20 + late) * 4) for i in range(10)]
        estimator.on_feedback(feedback(base, arrivals), batch * 100 + 100)
    assert estimator.estimate == 3_000_000 and estimator.overuses == 0
