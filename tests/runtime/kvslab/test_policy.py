"""Policy: floors, pool bound, tokens-per-byte preference, stability, exhaustive optimality."""

import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.runtime.kvslab.errors import FloorsExceedPool, KvSlabError
from fineserve.runtime.kvslab.policy import (
    EngineKvDemand,
    KvTargets,
    PolicyParams,
    certain_value,
    compute_targets,
    expected_needed_tokens,
    slab_value,
)

MIB = 1 << 20
SLAB = 64 * MIB  # 32 layers x K/V x 1 granule
BF16 = 128 * 1024  # Llama-3.1-8B bytes per token, bf16 KV
FP8 = 64 * 1024


BY_VALUE = PolicyParams(fair_share=False)  # value per byte from the floors up


def eng(eid, *, bpt=BF16, slab=SLAB, floor=1, cap=100, held=None, demand=0, mean=0.0, std=0.0,
        w=1.0):
    return EngineKvDemand(eid, bpt, slab, floor, cap, floor if held is None else held,
                          used_tokens=0, demand_tokens=demand, slo_weight=w,
                          demand_mean_tokens=mean, demand_std_tokens=std)


def total_bytes(t: KvTargets, engines) -> int:
    return sum(t.slabs[e.engine_id] * e.slab_bytes for e in engines)


engine_st = st.builds(
    lambda i, bpt, slab_mib, floor, extra, held, demand, mean, std, w: eng(
        f"e{i}", bpt=bpt, slab=slab_mib * MIB, floor=floor, cap=floor + extra,
        held=min(held, floor + extra), demand=demand, mean=mean, std=std, w=w),
    st.integers(0, 10**6), st.sampled_from([FP8 // 2, FP8, BF16, 3 * BF16]),
    st.sampled_from([32, 64, 128]), st.integers(0, 4), st.integers(0, 30), st.integers(0, 40),
    st.integers(0, 20000), st.floats(0, 20000), st.floats(0, 5000), st.floats(0.5, 3))


@settings(max_examples=200, deadline=None)
@given(engines=st.lists(engine_st, min_size=1, max_size=5, unique_by=lambda e: e.engine_id),
       pool_slabs=st.integers(0, 120), ticks=st.integers(1, 4))
def test_floors_caps_and_pool_bound_always_hold(engines, pool_slabs, ticks):
    pool = pool_slabs * 32 * MIB + sum(e.floor_slabs * e.slab_bytes for e in engines)
    prev = None
    for _ in range(ticks):
        t = compute_targets(pool, engines, prev)
        assert total_bytes(t, engines) <= pool
        for e in engines:
            assert e.floor_slabs <= t.slabs[e.engine_id] <= e.max_slabs
            assert t.reason[e.engine_id]
        prev = t


def test_floors_exceeding_the_pool_are_a_named_error():
    with pytest.raises(FloorsExceedPool, match="floors need"):
        compute_targets(3 * SLAB, [eng("a", floor=2), eng("b", floor=2)])


@pytest.mark.parametrize("bad, field", [
    (dict(floor=5, cap=2), "floor_slabs"), (dict(bpt=0), "bytes_per_token"),
    (dict(w=0.0), "slo_weight")])
def test_bad_engine_fields_are_named(bad, field):
    with pytest.raises(KvSlabError, match=field):
        compute_targets(100 * SLAB, [eng("a", **bad)])


def test_duplicate_engine_ids_are_rejected():
    with pytest.raises(KvSlabError, match="duplicate"):
        compute_targets(100 * SLAB, [eng("a"), eng("a")])


def test_fp8_kv_is_worth_twice_the_bytes():
    bf, f8 = eng("bf", demand=10**6), eng("f8", bpt=FP8, demand=10**6)
    p = PolicyParams()
    assert slab_value(f8, 1, p) / f8.slab_bytes == pytest.approx(
        2 * slab_value(bf, 1, p) / bf.slab_bytes)


def test_fp8_engine_is_served_first_when_the_pool_is_short():
    # equal demand in tokens: 20 bf16 slabs or 10 fp8 slabs; 16 slabs in the pool
    tokens = 20 * SLAB // BF16
    bf, f8 = eng("bf", demand=tokens), eng("f8", bpt=FP8, demand=tokens)
    t = compute_targets(16 * SLAB, [bf, f8], params=BY_VALUE)
    assert t.slabs == {"f8": 10, "bf": 6}
    assert "pool short" in t.reason["bf"]


def test_slo_weight_buys_priority():
    tokens = 20 * SLAB // BF16
    t = compute_targets(16 * SLAB, [eng("a", demand=tokens), eng("b", demand=tokens, w=2.0)],
                        params=BY_VALUE)
    assert t.slabs == {"a": 1, "b": 15}


def test_demand_now_is_certain_and_the_tail_decays():
    e = eng("a", demand=1000, mean=3000.0, std=500.0, slab=BF16 * 512)  # 512 tokens per slab
    needs = [expected_needed_tokens(e, k) for k in range(1, 12)]
    assert needs[0] == pytest.approx(512)  # tokens 0..511 < 1000 wanted now
    assert all(a >= b for a, b in itertools.pairwise(needs))
    assert needs[-1] < 1.0  # far beyond mean + 4 std
    assert sum(needs) == pytest.approx(3000, rel=0.02)  # E[max(1000, N(3000, 500))]


def test_targets_are_stable_under_unchanged_demand():
    engines = [eng("a", demand=30000, held=3), eng("b", bpt=FP8, demand=50000, held=20),
               eng("c", demand=0, held=15)]
    prev, history = None, []
    for _ in range(12):
        prev = compute_targets(30 * SLAB, engines, prev)
        history.append(prev.slabs)
    assert history[-1] == history[-2] == history[-5]
    for eid in ("a", "b", "c"):  # each engine moves one way only: no flapping
        seq = [h[eid] for h in history]
        assert seq == sorted(seq) or seq == sorted(seq, reverse=True)


def test_idle_engine_is_reclaimed_gradually_down_to_its_floor():
    busy, idle = eng("busy", demand=10**7, held=1), eng("idle", floor=2, held=20)
    prev, seq = None, []
    for _ in range(8):
        prev = compute_targets(21 * SLAB, [busy, idle], prev)
        seq.append(prev.slabs["idle"])
        assert prev.slabs["busy"] + prev.slabs["idle"] <= 21
    assert seq[:4] == [11, 6, 4, 3]  # half the gap per tick, at least one slab
    assert seq[-1] == 2
    assert "reclaiming" in compute_targets(21 * SLAB, [busy, idle]).reason["idle"]


def test_hysteresis_keeps_a_slab_against_a_marginally_better_challenger():
    t = SLAB // BF16
    holder = eng("holder", floor=0, held=5, demand=5 * t)
    # the challenger's 5th slab is worth 5% more per byte than the holder's 5th: no move
    challenger = eng("chall", floor=0, held=4, demand=5 * t, w=1.05)
    assert compute_targets(9 * SLAB, [holder, challenger]).slabs == {"holder": 5, "chall": 4}
    stronger = dataclasses.replace(challenger, slo_weight=1.2)
    assert compute_targets(9 * SLAB, [holder, stronger]).slabs == {"holder": 4, "chall": 5}


def _brute_force(pool, engines, params):
    """Lexicographic optimum: (value of demand now, then total value with the tail)."""
    best = (-1.0, -1.0)
    ranges = [range(e.floor_slabs, e.max_slabs + 1) for e in engines]
    for alloc in itertools.product(*ranges):
        if sum(n * e.slab_bytes for n, e in zip(alloc, engines, strict=True)) > pool:
            continue
        best = max(best, _values(alloc, engines, params))
    return best


def _values(alloc, engines, params):
    pairs = [(e, k) for n, e in zip(alloc, engines, strict=True)
             for k in range(e.floor_slabs + 1, n + 1)]
    return (sum(certain_value(e, k, params) for e, k in pairs),
            sum(slab_value(e, k, params) for e, k in pairs))


small_engine = st.builds(
    lambda i, bpt, slab, floor, extra, demand, mean, std, w: eng(
        f"e{i}", bpt=bpt, slab=slab, floor=floor, cap=floor + extra, demand=demand, mean=mean,
        std=std, w=w),
    st.integers(0, 999), st.sampled_from([FP8, BF16]), st.sampled_from([32 * MIB, 64 * MIB]),
    st.integers(0, 2), st.integers(0, 5), st.integers(0, 3000), st.floats(0, 3000),
    st.floats(0, 800), st.sampled_from([1.0, 1.5]))


@settings(max_examples=150, deadline=None)
@given(engines=st.lists(small_engine, min_size=1, max_size=3, unique_by=lambda e: e.engine_id),
       extra=st.integers(0, 12), equal=st.booleans())
def test_greedy_matches_exhaustive_search(engines, extra, equal):
    if equal:  # equal slab sizes: greedy by value per byte is exactly optimal
        engines = [dataclasses.replace(e, slab_bytes=SLAB) for e in engines]
    params = PolicyParams(min_fill=0.0, fair_share=False)
    pool = sum(e.floor_slabs * e.slab_bytes for e in engines) + extra * 32 * MIB
    t = compute_targets(pool, engines, params=params)
    got = _values([t.slabs[e.engine_id] for e in engines], engines, params)
    best = _brute_force(pool, engines, params)
    tol = 1e-6 * max(1.0, best[1])
    if equal:  # equal slab sizes: greedy tier by tier is exactly (lexicographically) optimal
        assert got[0] >= best[0] - tol
        assert got[1] >= best[1] - tol
    else:  # mixed slab sizes: the present demand within one slab of the optimum
        slack = max(certain_value(e, e.floor_slabs + 1, params) for e in engines)
        assert got[0] >= best[0] - slack - tol
    assert math.isfinite(got[1])


def test_tail_integral_with_a_vanishing_spread_is_the_degenerate_case():
    from fineserve.runtime.kvslab.policy import _tail_integral

    for std in (1e-320, 1e-300, 1e-12):  # z overflows to inf for the first two
        assert _tail_integral(0.0, 100.0, 50.0, std) == pytest.approx(50.0)
        assert _tail_integral(60.0, 100.0, 50.0, std) == pytest.approx(0.0)


# -- tiers (H100 acceptance run, 2026-11-26: docs/kv-slab.md) ------------------------------
def _settle(pool, engines, params=PolicyParams(), ticks=12):  # noqa: B008
    prev = None
    for _ in range(ticks):
        prev = compute_targets(pool, engines, prev, params)
    return prev


def test_a_stale_forecast_never_outranks_another_engines_demand_now():
    # saturation phase 3: the fp8 engine was flooded before (EWMA mean 20k tokens, wide
    # spread) and is idle now; the bf16 engine wants more than the whole pool
    idle = eng("f8", bpt=FP8, floor=2, held=30, demand=0, mean=20000.0, std=8000.0)
    hot = eng("bf", floor=4, held=10, demand=10**6)
    t = _settle(40 * SLAB, [idle, hot])
    assert t.slabs == {"f8": 2, "bf": 38}


def test_the_tail_still_gets_memory_nobody_wants_now():
    idle = eng("f8", bpt=FP8, floor=2, held=2, demand=0, mean=20000.0, std=8000.0)
    calm = eng("bf", floor=4, held=4, demand=4 * SLAB // BF16)
    t = compute_targets(40 * SLAB, [idle, calm])
    assert t.slabs["bf"] == 4
    assert t.slabs["f8"] > 10  # ahead of its bursts, from memory nobody needs now


def test_running_tokens_are_never_targeted_away_by_a_backlog():
    # saturation phase 2: the fp8 engine's backlog (worth 2 tokens per bf16 byte) must not
    # push a bf16 engine below the slabs its running sequences fill (a drain cannot free them)
    held = 9 * SLAB // BF16
    cold = dataclasses.replace(eng("bf", floor=4, held=10, demand=held), used_tokens=held - 100)
    backlog = eng("f8", bpt=FP8, floor=2, held=20, demand=10**7)
    prev = None
    for _ in range(12):
        prev = compute_targets(40 * SLAB, [cold, backlog], prev)
        assert prev.slabs["bf"] >= 9
    assert prev.slabs == {"bf": 9, "f8": 31}


@settings(max_examples=200, deadline=None)
@given(engines=st.lists(engine_st, min_size=1, max_size=5, unique_by=lambda e: e.engine_id),
       fill=st.lists(st.floats(0, 1), min_size=5, max_size=5), spare=st.integers(0, 60),
       ticks=st.integers(1, 4))
def test_tokens_of_engines_without_a_queue_are_always_targeted(engines, fill, spare, ticks):
    engines = [dataclasses.replace(e, used_tokens=int(f * e.held_slabs * e.tokens_per_slab),
                                   demand_tokens=int(f * e.held_slabs * e.tokens_per_slab))
               for e, f in zip(engines, fill, strict=False)]  # no queue: all it wants runs
    pool = sum(max(e.held_slabs, e.floor_slabs) * e.slab_bytes for e in engines) \
        + spare * 32 * MIB
    prev = None
    for _ in range(ticks):
        prev = compute_targets(pool, engines, prev)
        assert total_bytes(prev, engines) <= pool
        for e in engines:
            need = math.ceil(e.used_tokens / e.tokens_per_slab - 1e-9)
            assert e.floor_slabs <= prev.slabs[e.engine_id] <= e.max_slabs
            assert prev.slabs[e.engine_id] >= min(need, e.max_slabs)


def test_an_engine_with_a_queue_yields_what_it_holds_to_a_better_challenger():
    # a backlogged bf16 engine refills its slabs from its own queue: protecting them would
    # starve the fp8 challenger for as long as the backlog lasts
    full = 30 * SLAB // BF16
    incumbent = dataclasses.replace(eng("bf", floor=4, held=30, demand=10**6), used_tokens=full)
    challenger = eng("f8", bpt=FP8, floor=2, held=2, demand=10**7)
    assert _settle(32 * SLAB, [incumbent, challenger], BY_VALUE).slabs == {"bf": 4, "f8": 28}
    # with fair shares it keeps its half of the pool; the challenger gets the other half
    assert _settle(32 * SLAB, [incumbent, challenger]).slabs == {"bf": 16, "f8": 16}


def test_fair_share_comes_before_a_better_engines_backlog():
    # the bursty trace's third phase: assist (bf16, hot) against the fp8 engine's backlog
    assist = eng("assist", floor=4, held=4, demand=20 * SLAB // BF16)
    fp8 = eng("fp8", bpt=FP8, floor=2, held=60, demand=10**7)
    chat = eng("chat", floor=4, held=4, demand=2 * SLAB // BF16)  # leaves most of its share
    t = _settle(96 * SLAB, [assist, fp8, chat])
    assert t.slabs == {"assist": 20, "fp8": 72, "chat": 4}
    assert _settle(96 * SLAB, [assist, fp8, chat], BY_VALUE).slabs["assist"] == 4


@settings(max_examples=150, deadline=None)
@given(engines=st.lists(engine_st, min_size=1, max_size=4, unique_by=lambda e: e.engine_id),
       pool_slabs=st.integers(0, 200))
def test_demand_within_the_fair_share_is_always_met_once_settled(engines, pool_slabs):
    pool = pool_slabs * 32 * MIB + sum(e.floor_slabs * e.slab_bytes for e in engines)
    share = [pool // len(engines) // e.slab_bytes for e in engines]
    if any(e.floor_slabs > s for e, s in zip(engines, share, strict=True)):
        return  # a floor above the equal share: shares are not all feasible
    t = _settle(pool, engines, ticks=40)
    assert total_bytes(t, engines) <= pool
    for e, s in zip(engines, share, strict=True):
        want = math.ceil(e.demand_tokens / e.tokens_per_slab - 1e-9)
        assert t.slabs[e.engine_id] >= min(want, s, e.max_slabs)
