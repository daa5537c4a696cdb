"""Fuzz harness for the send-side congestion control (relay/worker/room/_twcc.py): the
transport-wide CC feedback the SFU sends a publisher.

Byte 0 picks the mode (mod 2):

* 0 ``parse``: the rest is one feedback's FCI for ``parse_feedback``;
* 1 ``estimator``: the rest is up to 4 FCIs (2-byte big-endian lengths before all
  but the last) fed to a ``SendSideEstimator`` that has sent 300 packets, sequence
  numbers 65400 onwards (wrapping), 10 ms apart, before the first; 100 ms between
  feedbacks.

Oracle (raises OracleFailure, i.e. a crash): only FeedbackError escapes, with a short
printable message, and a refused feedback leaves the estimator as it was; a parsed
feedback has exactly its packet status count of results (at most MAX_STATUSES),
consecutive sequence numbers from its base (mod 2^16), arrival times only where the
status said received; the estimate stays finite, within [MIN_ESTIMATE, ceiling];
``layers_within`` gives 1..n layers for any estimate. Optionally a tracemalloc bound
(FUZZ_MEMCHECK=1).

Run: ``python fuzz/run.py twcc --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import OracleFailure, expect, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.worker.room._twcc"])
      if atheris and __name__ == "__main__" else nullcontext()):
    from relay.worker.room import _twcc

MODES = ("parse", "estimator")
MAX_FEEDBACKS = 4
MAX_ERROR = 200
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_BASE = 2 * 1024 * 1024
MEM_PER_BYTE = 64
CEILING = 3_300_000
FIRST_SEQUENCE = 65400
SENT = 300


def split(data: bytes, count: int) -> list[bytes]:
    out = []
    for _ in range(count - 1):
        if len(data) < 2:
            break
        size = int.from_bytes(data[:2], "big")
        if size > len(data) - 2:
            break
        out.append(data[2:2 + size])
        data = data[2 + size:]
    out.append(data)
    return out


def check_parse(fci: bytes) -> list[_twcc.PacketResult] | None:
    try:
        results = _twcc.parse_feedback(fci)
    except _twcc.FeedbackError as exc:
        message = str(exc)
        expect(0 < len(message) <= MAX_ERROR and message.isprintable(),
               f"error message {message!r:.300}")
        return None
    except Exception as exc:  # the oracle reports it
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc}") from exc
    expect(len(fci) >= 8, "parsed a feedback shorter than its header")
    base, count = int.from_bytes(fci[0:2], "big"), int.from_bytes(fci[2:4], "big")
    expect(len(results) == count <= _twcc.MAX_STATUSES, f"{len(results)} results, {count}")
    for index, result in enumerate(results):
        expect(result.sequence == (base + index) & 0xFFFF, f"sequence {result!r}")
    return results


def snapshot(estimator: _twcc.SendSideEstimator) -> tuple[object, ...]:
    return (estimator.estimate, estimator.feedbacks, estimator.lost, estimator.overuses,
            len(estimator._sent))


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    mode = MODES[data[0] % len(MODES)]
    payload = data[1:]
    with memory_bound(MEM_BASE + MEM_PER_BYTE * len(data) if MEMCHECK else None):
        if mode == "parse":
            check_parse(payload)
            return
        estimator = _twcc.SendSideEstimator(CEILING)
        for i in range(SENT):
            estimator.on_sent((FIRST_SEQUENCE + i) & 0xFFFF, 1200, i * 10.0)
        now = SENT * 10.0
        for fci in split(payload, MAX_FEEDBACKS):
            now += 100.0
            before = snapshot(estimator)
            parsed = check_parse(fci)
            try:
                estimate = estimator.on_feedback(fci, now)
            except _twcc.FeedbackError:
                expect(parsed is None, "on_feedback refused what parse_feedback took")
                expect(snapshot(estimator) == before, "a refused feedback changed state")
                continue
            expect(parsed is not None, "on_feedback took what parse_feedback refused")
            expect(math.isfinite(estimate), f"estimate {estimate}")
            expect(_twcc.MIN_ESTIMATE <= estimate <= estimator.ceiling, f"estimate {estimate}")
            for rates in ([200_000, 500_000, 1_500_000], [1_000_000]):
                count = _twcc.layers_within(rates, estimate, len(rates))
                expect(1 <= count <= len(rates), f"{count} layers of {len(rates)}")


def main() -> None:
    libfuzzer_main(atheris, "twcc", run_one)


if __name__ == "__main__":
    main()
