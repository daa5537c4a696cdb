"""Capacity admission (relay/service/ingest/admission.py): LiveKit's rule in cores, on a fake
NodeStatus and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.service.config import CpuCostConfig
from relay.service.ingest.admission import PROMISE_SECONDS, Admission


@dataclass
class FakeStatus:
    cpu_load: float = 0.0
    cpus: int = 2


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


COSTS = CpuCostConfig(rtmp_cpu_cost=0.5, whip_cpu_cost=0.6,
                      whip_bypass_transcoding_cpu_cost=0.25, url_cpu_cost=0.7,
                      min_idle_ratio=0.05)


def make(load: float = 0.0, cpus: int = 2, costs: CpuCostConfig = COSTS
         ) -> tuple[Admission, FakeStatus, Clock]:
    status, clock = FakeStatus(load, cpus), Clock()
    return Admission(status, costs, now=clock), status, clock


def test_available_is_idle_cores_minus_the_reserve() -> None:
    admission, status, _ = make(load=0.25, cpus=4)
    assert admission.available() == pytest.approx(4 * 0.75 - 0.05 * 4)  # 2.8
    assert admission.admit(2.8) and not admission.admit(2.81)
    status.cpu_load = 1.0
    assert admission.available() == pytest.approx(-0.2)
    assert not admission.admit(0.0)  # even a free session keeps the reserve


def test_promises_add_up_until_nothing_fits() -> None:
    admission, _, _ = make()  # 2 idle cores, 0.1 reserve: 1.9 available
    held = [admission.reserve(0.5) for _ in range(3)]
    assert all(held)
    assert admission.promised() == pytest.approx(1.5)
    assert admission.available() == pytest.approx(0.4)
    assert admission.reserve(0.5) is None  # 0.4 left
    assert admission.reserve(0.4) is not None  # exactly what is left: admitted
    assert admission.reserve(0.01) is None
    assert admission.promised() == pytest.approx(1.9)


def test_a_refusal_promises_nothing() -> None:
    admission, _, _ = make(load=0.9)  # 0.2 idle - 0.1 reserve
    assert admission.reserve(0.5) is None
    assert admission.promised() == 0


def test_promises_expire_after_promise_seconds() -> None:
    admission, status, clock = make()
    assert admission.reserve(1.0) is not None
    assert admission.reserve(1.0) is None
    clock.t += PROMISE_SECONDS - 0.01
    assert admission.promised() == pytest.approx(1.0)
    clock.t += 0.01  # the sampler has seen the session by now: its load counts instead
    assert admission.promised() == 0
    status.cpu_load = 0.5  # the first session measured at 1 core
    assert admission.available() == pytest.approx(0.9)
    assert admission.reserve(1.0) is None
    assert admission.reserve(0.9) is not None


def test_promise_released_when_the_session_ends() -> None:
    admission, _, _ = make()
    first = admission.reserve(1.0)
    assert first is not None and admission.reserve(1.0) is None
    first.release()
    assert admission.promised() == 0
    first.release()  # idempotent
    with admission.reserve(1.0) as second:  # type: ignore[union-attr]
        assert admission.promised() == pytest.approx(1.0)
        assert second.cost == 1.0
    assert admission.promised() == 0


def test_release_on_error_through_the_context_manager() -> None:
    admission, _, _ = make()
    promise = admission.reserve(1.5)
    assert promise is not None
    with pytest.raises(RuntimeError), promise:
        raise RuntimeError("the session failed")
    assert admission.promised() == 0


def test_release_after_expiry_is_harmless() -> None:
    admission, _, clock = make()
    old = admission.reserve(1.0)
    assert old is not None
    clock.t += PROMISE_SECONDS + 1
    new = admission.reserve(1.0)
    assert new is not None
    old.release()
    assert admission.promised() == pytest.approx(1.0)  # the new one still counts


def test_reserve_respects_min_idle_ratio() -> None:
    costs = CpuCostConfig(min_idle_ratio=0.5)
    admission, _, _ = make(load=0.0, cpus=2, costs=costs)  # 2 idle, 1 core reserved
    assert admission.available() == pytest.approx(1.0)
    assert admission.reserve(1.01) is None
    assert admission.reserve(1.0) is not None


@pytest.mark.parametrize(("kind", "transcoding", "expected"), [
    ("rtmp", True, 0.5),  # rtmp_cpu_cost
    ("rtmp", False, 0.25),  # RTMP passthrough (rtmp_passthrough): the bypass cost
    ("whip", True, 0.6),  # whip_cpu_cost
    ("whip", False, 0.25),  # whip_bypass_transcoding_cpu_cost
    ("url", True, 0.7),  # url_cpu_cost
    ("url", False, 0.7),
])
def test_cost_for_picks_the_key(kind: str, transcoding: bool, expected: float) -> None:
    admission, _, _ = make()
    assert admission.cost_for(kind, transcoding) == expected  # type: ignore[arg-type]


def test_unlimited_admits_everything_and_keeps_nothing() -> None:
    admission = Admission.unlimited()
    for _ in range(100):
        promise = admission.reserve(1000.0)
        assert promise is not None
    assert admission.admit(1e9) and admission.promised() == 0
    promise.release()


def test_defaults_fit_this_two_core_node() -> None:
    """The defaults are this implementation's measured costs (docs/PERFORMANCE.md):
    an idle 2-core node takes three transcoding sessions at once, more once their
    measured load replaces the promises; LiveKit's 2.0 would take none."""
    costs = CpuCostConfig()
    assert (costs.rtmp_cpu_cost, costs.whip_cpu_cost, costs.url_cpu_cost) == (0.5, 0.5, 0.5)
    assert costs.whip_bypass_transcoding_cpu_cost == 0.25 and costs.min_idle_ratio == 0.05
    admission, status, clock = make(costs=costs)
    cost = admission.cost_for("rtmp", True)
    assert [admission.reserve(cost) is not None for _ in range(4)] == [True, True, True, False]
    clock.t += PROMISE_SECONDS
    status.cpu_load = 3 * 0.41 / 2  # three 720p sessions as measured
    assert admission.reserve(cost) is not None  # a fourth (bench/sessions.py: 4 hold)
    status.cpu_load = 4 * 0.41 / 2
    clock.t += PROMISE_SECONDS
    assert admission.reserve(cost) is None  # a fifth would drop frames
    assert make(costs=CpuCostConfig(rtmp_cpu_cost=2.0))[0].reserve(2.0) is None
