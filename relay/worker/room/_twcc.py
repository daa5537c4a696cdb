"""Send-side congestion control from transport-wide CC feedback (sans-IO).

livekit-server sends a publisher no REMB; what it sends, when the offer negotiates
it, is transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01,
RTCP RTPFB FMT 15): for every packet carrying the transport-wide sequence number,
whether and when it arrived. From that this module keeps a bandwidth estimate,
a simplified GCC (draft-ietf-rmcat-gcc-02):

* delay: the one-way delay of each packet, less the smallest seen in the last
  `BASE_WINDOW_MS` (clock offsets cancel out), is the queue it met; when the median
  of a feedback's packets is above `OVERUSE_MS` for `OVERUSE_FEEDBACKS` feedbacks in
  a row (~200 ms: one late wakeup of a busy SFU is not a queue), the path is
  overused and the estimate drops to `DECREASE` x what arrived in the last second;
* loss: more than `HIGH_LOSS` of a feedback's packets lost cuts the estimate by
  half the loss fraction (GCC's loss controller);
* otherwise the estimate grows by `INCREASE_PER_S` a second, up to `ceiling`.

Bytes in (the FCI of a feedback packet, send records), numbers out; no sockets,
no clocks: times are passed in (ms of one monotonic clock). Malformed feedback
raises :class:`FeedbackError` (a ``ValueError``) and changes nothing. Bounded:
`MAX_RECORDS` send records, at most `MAX_STATUSES` statuses per feedback.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
FMT_TWCC = 15
MAX_RECORDS = 8192  # packets remembered for their feedback (~8 s at 1,000 packets/s)
MAX_STATUSES = 4096  # packet statuses one feedback may describe
DELTA_US = 250  # receive deltas are in units of 250 us
BASE_WINDOW_MS = 10_000
OVERUSE_MS = 40.0
OVERUSE_FEEDBACKS = 2
DECREASE = 0.85
HIGH_LOSS = 0.10
INCREASE_PER_S = 0.08
RATE_WINDOW_MS = 1_000
MIN_ESTIMATE = 50_000
# the first feedbacks report as lost what was sent before the SFU had bound the
# streams (seen: 67 of the first ~500 packets against livekit-server 1.13.5)
WARMUP_MS = 2_000
HEADROOM = 1.5  # the ceiling over the layers' sum: packet overhead, encoder overshoot


class FeedbackError(ValueError):
    """A transport-wide CC feedback that cannot be read."""


@dataclass(frozen=True)
class PacketResult:
    """One packet of a feedback: its transport-wide sequence number and arrival time
    (us on the receiver's clock), or None if it was reported lost."""

    sequence: int
    arrival_us: int | None


def parse_feedback(fci: bytes) -> list[PacketResult]:
    """The packets one feedback reports (the FCI: after the two SSRCs)."""
    if len(fci) < 8:
        raise FeedbackError(f"feedback of {len(fci)} bytes")
    base = int.from_bytes(fci[0:2], "big")
    count = int.from_bytes(fci[2:4], "big")
    if count > MAX_STATUSES:
        raise FeedbackError(f"{count} packet statuses (at most {MAX_STATUSES})")
    reference = int.from_bytes(fci[4:7], "big", signed=True) * 64_000  # us
    pos = 8
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > len(fci):
            raise FeedbackError("feedback ends inside its packet chunks")
        chunk = int.from_bytes(fci[pos:pos + 2], "big")
        pos += 2
        if chunk & 0x8000 == 0:  # run length
            symbol, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            symbols += [symbol] * min(run, count - len(symbols))
        elif chunk & 0x4000 == 0:  # status vector, 14 one-bit symbols
            symbols += [(chunk >> (13 - i)) & 0x1 for i in range(14)]
        else:  # status vector, 7 two-bit symbols
            symbols += [(chunk >> (12 - 2 * i)) & 0x3 for i in range(7)]
    symbols = symbols[:count]
    results = []
    arrival = reference
    for index, symbol in enumerate(symbols):
        sequence = (base + index) & 0xFFFF
        if symbol == 0:
            results.append(PacketResult(sequence, None))
            continue
        if symbol == 1:
            if pos + 1 > len(fci):
                raise FeedbackError("feedback ends inside its receive deltas")
            delta = fci[pos]
            pos += 1
        elif symbol == 2:
            if pos + 2 > len(fci):
                raise FeedbackError("feedback ends inside its receive deltas")
            delta = int.from_bytes(fci[pos:pos + 2], "big", signed=True)
            pos += 2
        else:
            raise FeedbackError("reserved packet status symbol")
        arrival += delta * DELTA_US
        results.append(PacketResult(sequence, arrival))
    return results


class SendSideEstimator:
    """The estimate (bit/s) a publisher should stay within; starts at `ceiling`
    (`HEADROOM` over what the publisher means to send)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(MIN_ESTIMATE, ceiling)
        self.estimate = float(self.ceiling)
        self._sent: OrderedDict[int, tuple[float, int]] = OrderedDict()  # seq -> (ms, bytes)
        self._base: deque[tuple[float, float]] = deque()  # (now ms, delay ms), rising
        self._acked: deque[tuple[float, int]] = deque()  # (arrival ms, bytes)
        self._last_update: float | None = None
        self._first_feedback: float | None = None
        self.feedbacks = 0
        self.lost = 0
        self.overuses = 0
        self._overused = 0  # feedbacks in a row over OVERUSE_MS

    def on_sent(self, sequence: int, size: int, now_ms: float) -> None:
        self._sent[sequence] = (now_ms, size)
        self._sent.move_to_end(sequence)
        while len(self._sent) > MAX_RECORDS:
            self._sent.popitem(last=False)

    def on_feedback(self, fci: bytes, now_ms: float) -> float:
        """Take one feedback; the new estimate. FeedbackError if malformed."""
        results = parse_feedback(fci)
        self.feedbacks += 1
        if self._first_feedback is None:
            self._first_feedback = now_ms
        warming_up = now_ms - self._first_feedback < WARMUP_MS
        known = [(r, self._sent[r.sequence]) for r in results if r.sequence in self._sent]
        if not known:
            return self.estimate
        lost = sum(1 for r, _ in known if r.arrival_us is None)
        self.lost += lost
        queues: list[float] = []
        for result, (sent_ms, size) in known:
            if result.arrival_us is None:
                continue
            arrival_ms = result.arrival_us / 1000
            delay = arrival_ms - sent_ms
            while self._base and self._base[-1][1] >= delay:
                self._base.pop()  # a rising minimum over the window
            self._base.append((now_ms, delay))
            while self._base[0][0] < now_ms - BASE_WINDOW_MS:
                self._base.popleft()
            queues.append(delay - self._base[0][1])
            self._acked.append((arrival_ms, size))
        if self._acked:
            newest = self._acked[-1][0]
            while self._acked and self._acked[0][0] < newest - RATE_WINDOW_MS:
                self._acked.popleft()
        acked_bps = sum(size for _, size in self._acked) * 8 * 1000 / RATE_WINDOW_MS
        elapsed_s = 0.0 if self._last_update is None else (now_ms - self._last_update) / 1000
        self._last_update = now_ms
        loss = lost / len(known)
        queue_ms = sorted(queues)[len(queues) // 2] if queues else 0.0
        self._overused = self._overused + 1 if queue_ms > OVERUSE_MS else 0
        if self._overused >= OVERUSE_FEEDBACKS:
            self.overuses += 1
            self.estimate = min(self.estimate, DECREASE * acked_bps)
        elif loss > HIGH_LOSS and not warming_up:
            self.estimate *= 1 - 0.5 * loss
        else:
            self.estimate *= (1 + INCREASE_PER_S) ** min(elapsed_s, 1.0)
        self.estimate = max(MIN_ESTIMATE, min(self.estimate, self.ceiling))
        return self.estimate


def layers_within(bitrates: list[int], estimate: float, current: int,
                  margin: float = 1.1) -> int:
    """How many layers (lowest first) to send within `estimate`: never fewer than
    one; a layer comes back only when the estimate covers it with `margin` to spare,
    so a borderline estimate does not switch it on and off."""
    if estimate >= HEADROOM * sum(bitrates):  # the ceiling: nothing holds back
        return len(bitrates)
    count = 1
    total = bitrates[0] if bitrates else 0
    for bitrate in bitrates[1:]:
        need = total + bitrate
        if need * (margin if count >= current else 1.0) > estimate:
            break
        total, count = need, count + 1
    return count
