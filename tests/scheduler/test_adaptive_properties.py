"""Properties of the adaptive limit's control law, on the policy alone (no queue, no engine).

- the limit stays within [min_limit, max_limit] whatever the signals;
- monotone reaction: worse latency ratios or a worse engine state never leave a higher limit
  than better ones from the same state, and the increase step grows with the slack;
- no oscillation: a steady signal moves the limit one way only (or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.scheduler.adaptive import (
    INCREASE,
    TPOT_LOW,
    TTFT_LOW,
    AdaptivePolicy,
    increase_slack,
    increase_step,
)
from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.types import EngineSnapshot, SchedulerConfig, SloTargets

SLO = SloTargets(ttft_s=1.0, tpot_s=0.1)
ratio = st.floats(0.0, 1.6, allow_nan=False)


def policy(initial: int, lo: int = 1, hi: int = 256) -> AdaptivePolicy:
    cfg = SchedulerConfig(policy="adaptive", initial_limit=initial, min_limit=lo, max_limit=hi)
    return AdaptivePolicy(SLO, cfg, ServiceEstimator(0.0))


def sample(p: AdaptivePolicy, r_ttft: float, r_tpot: float, now: float, epoch: int) -> None:
    """One request dispatched at the limit reports its engine TTFT and TPOT ratios."""
    p.on_dispatch(p.limit, now)
    p.on_first_token(r_ttft * SLO.ttft_s, epoch, now)
    p.on_finish(r_tpot * SLO.tpot_s, True, epoch, now)


@dataclass(frozen=True)
class State:
    """An engine state as scraped, relative to the policy's last reading."""

    running: int
    waiting: int
    kv: float
    preempted: int  # rise of the preemption counter since the previous scrape


engine_state = st.builds(State, st.integers(0, 300), st.integers(0, 5),
                         st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]), st.integers(0, 3))


def scrape(p: AdaptivePolicy, s: State, now: float, counter: int) -> int:
    counter += s.preempted
    p.on_engine_state(EngineSnapshot(now, s.running, s.waiting, s.kv, counter), p.limit)
    return counter


@settings(max_examples=200, deadline=None)
@given(bounds=st.tuples(st.integers(1, 40), st.integers(0, 40), st.integers(0, 200)),
       events=st.lists(st.one_of(st.tuples(st.just("lat"), ratio, ratio),
                                 st.tuples(st.just("state"), engine_state)), max_size=200))
def test_limit_stays_within_bounds(bounds, events) -> None:
    lo, up, more = bounds
    p = policy(lo + up, lo, lo + up + more)
    now, counter = 0.0, 0
    for ev in events:
        now += 0.3
        if ev[0] == "lat":
            sample(p, ev[1], ev[2], now, p.epoch)
        else:
            counter = scrape(p, ev[1], now, counter)
        assert lo <= p.limit <= lo + up + more


@given(a=ratio, b=ratio, da=ratio, db=ratio, limit=st.integers(1, 1000))
def test_increase_step_is_monotone_in_the_signals(a, b, da, db, limit) -> None:
    better, worse = increase_slack(a, b), increase_slack(a + da, b + db)
    assert 0.0 <= worse <= better <= 1.0
    if better > 0:
        assert 1 <= increase_step(limit, worse if worse > 0 else better) <= increase_step(
            limit, better) <= max(1, int(limit * INCREASE))
    assert increase_slack(TTFT_LOW, 0.0) == 0 and increase_slack(0.0, TPOT_LOW) == 0


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(2, 200), window=st.lists(st.tuples(ratio, ratio), min_size=1,
                                                  max_size=20),
       worse_by=st.lists(st.tuples(ratio, ratio), min_size=20, max_size=20))
def test_worse_latencies_never_leave_a_higher_limit(limit, window, worse_by) -> None:
    good, bad = policy(limit), policy(limit)
    for i, (t, p) in enumerate(window):
        dt, dp = worse_by[i]
        sample(good, t, p, 1.0 + i, 0)  # every request dispatched before any change
        sample(bad, t + dt, p + dp, 1.0 + i, 0)
    assert bad.limit <= good.limit


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(2, 200), history=st.lists(engine_state, max_size=4),
       now_state=engine_state, more_waiting=st.integers(0, 3), more_kv=st.floats(0, 0.1),
       more_preempted=st.integers(0, 2))
def test_a_worse_engine_state_never_leaves_a_higher_limit(limit, history, now_state,
                                                          more_waiting, more_kv,
                                                          more_preempted) -> None:
    good, bad = policy(limit), policy(limit)
    counters = [0, 0]
    for k, s in enumerate(history):
        counters[0] = scrape(good, s, 0.1 * k, counters[0])
        counters[1] = scrape(bad, s, 0.1 * k, counters[1])
    worse = State(now_state.running, now_state.waiting + more_waiting,
                  min(1.0, now_state.kv + more_kv), now_state.preempted + more_preempted)
    scrape(good, now_state, 5.0, counters[0])
    scrape(bad, worse, 5.0, counters[1])
    assert bad.limit <= good.limit


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 200), lat=st.tuples(ratio, ratio), state=engine_state,
       samples_per_scrape=st.integers(1, 40))
def test_a_steady_signal_moves_the_limit_one_way(limit, lat, state, samples_per_scrape) -> None:
    p = policy(limit)
    # the signal once observed: a counter's rise takes two readings
    counter = scrape(p, state, -0.5, scrape(p, state, -1.0, 0))
    limits, now = [p.limit], 0.0
    for _ in range(60):
        for _ in range(samples_per_scrape):
            now += 0.01
            sample(p, lat[0], lat[1], now, p.epoch)
            limits.append(p.limit)
        now += 0.5
        counter = scrape(p, state, now, counter)
        limits.append(p.limit)
    steps = [b - a for a, b in zip(limits, limits[1:], strict=False) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps), limits
