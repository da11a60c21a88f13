"""GpuArbiter: GPU-wide budget, priority first, no starvation, both poll styles."""

from __future__ import annotations

import pytest

from fineserve.scheduler import (
    EngineScheduler,
    GpuArbiter,
    RequestInfo,
    SchedulerConfig,
    SchedulerConfigError,
    SloTargets,
    Verdict,
)

SLO = SloTargets(ttft_s=100.0, tpot_s=1.0)
CFG = SchedulerConfig(policy="fcfs", initial_limit=2, max_queue=1000)


def pair(budget: int | None = 2) -> tuple[GpuArbiter, EngineScheduler, EngineScheduler]:
    arb = GpuArbiter("0", budget=budget)
    lo = EngineScheduler("lo", SLO, CFG, arbiter=arb, priority=0)
    hi = EngineScheduler("hi", SLO, CFG, arbiter=arb, priority=1)
    return arb, lo, hi


def fill(s: EngineScheduler, n: int, start: int = 0) -> list:
    return [
        s.submit(RequestInfo(f"{s.engine_id}{i}", "m", 10, 4, 0.0), 0.0).verdict
        for i in range(start, start + n)
    ]


def test_default_budget_is_sum_of_initial_limits() -> None:
    arb, _, _ = pair(budget=None)
    assert arb.budget == 4


def test_budget_caps_the_gpu_not_each_engine() -> None:
    arb, lo, hi = pair(budget=2)
    assert fill(lo, 3) == [Verdict.ADMIT, Verdict.ADMIT, Verdict.QUEUE]
    assert fill(hi, 1) == [Verdict.QUEUE]  # hi's own limit has room; the GPU has not
    assert arb.stats.in_flight == 2 and arb.stats.queued == 2
    arb.check_integrity()


def test_higher_priority_is_dispatched_first_when_saturated() -> None:
    arb, lo, hi = pair(budget=2)
    fill(lo, 4)
    fill(hi, 2)
    lo.on_finish("lo0", 1.0, 4, True)
    assert arb.poll(1.0).dispatch == [("hi", "hi0")]


def test_lower_priority_is_not_starved() -> None:
    arb, lo, hi = pair(budget=1)
    fill(lo, 1)
    fill(lo, 200, start=1)
    fill(hi, 200)
    granted = {"lo": 0, "hi": 0}
    running = "lo0"
    for step in range(100):
        owner = "lo" if running.startswith("lo") else "hi"
        (lo if owner == "lo" else hi).on_finish(running, float(step), 4, True)
        ((engine, running),) = arb.poll(float(step)).dispatch
        granted[engine] += 1
        arb.check_integrity()
    assert granted["hi"] > granted["lo"] >= 15  # share_base 4: about 80 / 20
    assert granted["hi"] >= 75


def test_engine_poll_leaves_other_grants_for_their_own_poll() -> None:
    arb, lo, hi = pair(budget=2)
    fill(lo, 4)
    fill(hi, 1)
    lo.on_finish("lo0", 1.0, 4, True)
    lo.on_finish("lo1", 1.0, 4, True)
    assert lo.poll(1.0) == (["lo2"], [])  # hi got the first slot by priority
    assert hi.poll(1.0) == (["hi0"], [])
    assert hi.poll(1.0) == ([], [])
    arb.check_integrity()


def test_cancel_of_a_granted_but_unpolled_request_frees_it() -> None:
    arb, lo, hi = pair(budget=1)
    fill(lo, 1)
    fill(hi, 1)
    lo.on_finish("lo0", 1.0, 4, True)
    assert lo.poll(1.0) == ([], [])  # the GPU-wide pass granted hi0
    hi.cancel("hi0", 1.5)
    assert hi.poll(1.5) == ([], [])
    assert arb.stats.in_flight == 0
    arb.check_integrity()


@pytest.mark.parametrize(
    ("kw", "field"), [({"budget": 0}, "budget"), ({"share_base": 1.0}, "share_base")]
)
def test_bad_arbiter_settings_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(SchedulerConfigError, match=field):
        GpuArbiter("0", **kw)


def test_same_engine_twice_is_an_error() -> None:
    arb = GpuArbiter("0")
    EngineScheduler("e", SLO, CFG, arbiter=arb)
    with pytest.raises(SchedulerConfigError, match="attached twice"):
        EngineScheduler("e", SLO, CFG, arbiter=arb)
