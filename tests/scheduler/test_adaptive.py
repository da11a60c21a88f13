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


def test_kv_usage_alone_does_not_cut() -> None:
    """A KV Slab engine's gauge reads near 1 by design (it maps lazily): no cut on it alone."""
    s = adaptive(initial=16)
    for t in (10.0, 11.1, 12.2):
        s.on_engine_state(EngineSnapshot(t, running=16, waiting=0, kv_usage=0.99))
    assert s.stats.limit == 16


def test_preemptions_back_off_once_per_slo_interval() -> None:
    s = adaptive(initial=16)
    s.on_engine_state(EngineSnapshot(9.0, running=16, waiting=0, kv_usage=0.9, preemptions=4))
    assert s.stats.limit == 16  # the first reading is only a baseline
    s.on_engine_state(EngineSnapshot(10.0, running=16, waiting=0, kv_usage=0.9, preemptions=5))
    assert s.stats.limit == 12
    s.on_engine_state(EngineSnapshot(10.5, running=12, waiting=0, kv_usage=0.9, preemptions=7))
    assert s.stats.limit == 12  # within one TTFT SLO of the last change
    s.on_engine_state(EngineSnapshot(11.1, running=12, waiting=0, kv_usage=0.9, preemptions=8))
    assert s.stats.limit == 9
    s.on_engine_state(EngineSnapshot(12.2, running=9, waiting=0, kv_usage=0.9, preemptions=8))
    assert s.stats.limit == 9  # no new preemption
    s.on_engine_state(EngineSnapshot(13.3, running=9, waiting=0, kv_usage=0.9, preemptions=0))
    assert s.stats.limit == 9  # the counter went back: a restarted engine, not a preemption


def test_waiting_with_a_full_cache_backs_off() -> None:
    s = adaptive(initial=16)
    s.on_engine_state(EngineSnapshot(10.0, running=16, waiting=1, kv_usage=0.97))
    assert s.stats.limit == 12  # KV-bound at once; waiting with room left clamps only later


def test_waiting_at_the_batch_cap_is_no_kv_shortage() -> None:
    """At its batch cap vLLM leaves requests waiting for a slot: no x0.75 cut, even with the
    (lazily mapped) cache gauge near 1; only the waiting clamp may act, one slot at a time."""
    s = adaptive(initial=16, hi=16)
    s.on_engine_state(EngineSnapshot(10.0, running=16, waiting=2, kv_usage=0.99))
    assert s.stats.limit == 16
    s.on_engine_state(EngineSnapshot(11.1, running=16, waiting=2, kv_usage=0.99))
    assert s.stats.limit == 15  # the clamp (two scrapes), not floor(0.75 x 16) = 12


def _window(s: EngineScheduler, n: int, ttft_s: float, tpot_s: float) -> None:
    """Fill the limit at t = 0; then ``n`` of those requests report the given engine TTFT
    and TPOT."""
    for i in range(s.stats.limit):
        s.submit(RequestInfo(f"r{i}", "m", 10, 11, 0.0), 0.0)
    for i in range(n):
        s.on_first_token(f"r{i}", ttft_s)
        s.on_finish(f"r{i}", ttft_s + 10 * tpot_s, 11, True)


def test_recovery_is_proportional_to_slack() -> None:
    """Far inside the SLOs a window wins back up to a quarter of the limit; near them, one."""
    fast, near = adaptive(initial=64), adaptive(initial=64)
    _window(fast, 16, ttft_s=0.0, tpot_s=0.0)
    _window(near, 16, ttft_s=0.39, tpot_s=0.079)
    assert fast.stats.limit == 80  # 64 + 64 / 4
    assert near.stats.limit == 65
