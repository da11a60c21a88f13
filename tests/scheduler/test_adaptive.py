"""The adaptive limit: direction of change on a fake engine, bounds, engine-state signals."""

from __future__ import annotations

from fineserve.scheduler import (
    EngineScheduler,
    EngineSnapshot,
    RequestInfo,
    SchedulerConfig,
    SloTargets,
)
from tests.scheduler.fake_engine import FakeEngine, poisson_arrivals, run

SLO = SloTargets(ttft_s=1.0, tpot_s=0.1)


def adaptive(initial: int, lo: int = 1, hi: int = 256) -> EngineScheduler:
    cfg = SchedulerConfig(
        policy="adaptive", initial_limit=initial, min_limit=lo, max_limit=hi, max_queue=64
    )
    return EngineScheduler("e0", SLO, cfg)


# First token 0.05 + 0.1 s per request in flight: past 0.8 x SLO from 8 in flight on.
SLOW = FakeEngine(ttft_base=0.05, ttft_per_inflight=0.1)
# First token 0.01 + 1 ms per request in flight: comfortable far beyond 32.
FAST = FakeEngine(ttft_base=0.01, ttft_per_inflight=0.001)
OVERLOAD = poisson_arrivals(rate=60.0, duration=20.0, prompt=100, out=10)


def test_limit_decreases_when_engine_ttft_exceeds_slo() -> None:
    s = adaptive(initial=32)
    res = run(s, SLOW, OVERLOAD)
    assert s.stats.limit <= 8
    assert min(res.limits) >= 1
    # and it keeps the engine under its SLO once settled: most late samples meet the TTFT
    late = [o for o in res.outcomes.values() if o.dispatched and o.dispatched > 10.0]
    engine_ttft_ok = [o.first - o.dispatched <= SLO.ttft_s for o in late]
    assert sum(engine_ttft_ok) / len(engine_ttft_ok) > 0.9


def test_limit_increases_when_ttft_comfortably_below_slo() -> None:
    s = adaptive(initial=2)
    res = run(s, FAST, OVERLOAD)
    assert max(res.limits) >= 8
    assert s.stats.limit > 2


def test_limit_stays_within_bounds() -> None:
    s = adaptive(initial=3, lo=2, hi=5)
    res = run(s, FAST, OVERLOAD)
    assert set(res.limits) <= {2, 3, 4, 5} and res.limits[-1] == 5
    s = adaptive(initial=4, lo=3, hi=5)
    res = run(s, FakeEngine(ttft_base=2.0), OVERLOAD)  # every first token misses the SLO
    assert set(res.limits) <= {3, 4, 5} and res.limits[-1] == 3


def test_limit_idle_does_not_grow() -> None:
    """A limit that is never reached must not creep up (nothing proves it could)."""
    s = adaptive(initial=8)
    light = poisson_arrivals(rate=2.0, duration=30.0, prompt=100, out=10)
    res = run(s, FAST, light)
    assert max(res.limits) == 8


def test_engine_waiting_clamps_limit_to_running() -> None:
    s = adaptive(initial=32)
    s.on_engine_state(EngineSnapshot(10.0, running=12, waiting=5, kv_usage=0.3))
    assert s.stats.limit == 32  # one scrape may be a transient
    s.on_engine_state(EngineSnapshot(10.5, running=12, waiting=5, kv_usage=0.3))
    assert s.stats.limit == 13


def test_kv_near_full_backs_off_once_per_slo_interval() -> None:
    s = adaptive(initial=16)
    s.on_engine_state(EngineSnapshot(10.0, running=16, waiting=0, kv_usage=0.97))
    assert s.stats.limit == 12
    s.on_engine_state(EngineSnapshot(10.5, running=12, waiting=0, kv_usage=0.97))
    assert s.stats.limit == 12  # within one TTFT SLO of the last change
    s.on_engine_state(EngineSnapshot(11.1, running=12, waiting=0, kv_usage=0.97))
    assert s.stats.limit == 9


def test_stale_samples_from_before_a_decrease_are_ignored() -> None:
    s = adaptive(initial=10)
    for i in range(10):
        s.submit(RequestInfo(f"r{i}", "m", 10, 4, 0.0), 0.0)
    s.on_first_token("r0", 1.5)  # 1.5 x SLO: a certain miss -> decrease
    assert s.stats.limit == 7
    for i in range(1, 10):  # same epoch as r0: already accounted for
        s.on_first_token(f"r{i}", 1.5)
    assert s.stats.limit == 7
