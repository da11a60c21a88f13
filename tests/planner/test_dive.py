"""Price-and-dive (dive.py), placing its mix (mixplace.py) and the headroom bound at the replica
steps (configuration.step_bound): mixes fit and cover, placed mixes validate, and the step
bound never cuts off the exact optimum (brute force in static KV, the cut-free ILP pooled)."""

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.configuration import configuration_bound, replica_steps, step_bound
from fineserve.planner.dive import dive
from fineserve.planner.ilp import _placed_plan
from fineserve.planner.master import Column, replicas
from fineserve.planner.mixplace import place_mix
from fineserve.planner.options import engine_options
from fineserve.planner.rounding import headroom_dive, rounded_plan
from fineserve.planner.schema import KVMode, SolveReport
from fineserve.planner.validate import check_plan
from fineserve.planner.variables import MILLI, scale
from tests.planner.fakes import FakeLatency, demand, instance
from tests.planner.test_configuration import _brute_forced, _exact_pooled
from tests.planner.test_ilp import CATALOG, SMALL

LAT = FakeLatency()
POOLED = {**SMALL, "kv_mode": KVMode.POOLED}


def _pooled(seed: int, n: int = 4, gpus: int = 4, tp=(1, 2)):
    rng = random.Random(seed)
    models = [demand(f"m{j}", *CATALOG[rng.randrange(len(CATALOG))], rate=rng.uniform(1, 25),
                     tp=tp) for j in range(n)]
    inst = instance(models, gpus=gpus, **POOLED)
    options = engine_options(inst, LAT)
    return inst, options, scale(inst, options)


def _assert_mix_is_feasible(d, mix, cost_cap):
    """Every configuration fits one GPU; together they cover every model's rows."""
    assert sum(c.cls[1] * n for c, n in mix) <= cost_cap
    cap = min(d.mem_cap.values())
    cov = {m: 0.0 for m in d.models}
    rep = {m: 0.0 for m in d.models}
    for c, n in mix:
        assert n >= 1
        models = [m for m, _, _ in c.ranks]
        assert len(models) == len(set(models))
        assert len(c.ranks) <= d.inst.settings.max_engines_per_gpu
        assert sum(d.sm[m, i] for m, i, _ in c.ranks) <= d.sm_cap
        assert sum(d.w[m, i] + d.kappa[m, i] * phi for m, i, phi in c.ranks) <= cap
        for m, i, _ in c.ranks:
            t = d.options[m][i].tp
            cov[m] += n * d.mu[m, i] / t
            rep[m] += n / t
    for m in d.models:
        assert MILLI * cov[m] >= d.h_min * d.lam[m] - 1e-6
        assert rep[m] >= replicas(d, m) - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_dive_mix_fits_and_places_into_a_valid_plan(seed):
    inst, _, d = _pooled(seed)
    cap = sum(d.cost.values())
    found = dive(d, (), cost_cap=cap, seconds=10)
    assert found.mix, "a dive with every GPU allowed always reaches a mix"
    _assert_mix_is_feasible(d, found.mix, cap)
    placed = place_mix(d, found.mix)
    if placed is not None:
        plan = _placed_plan(d, placed, SolveReport("dive", "FEASIBLE", 0.0))
        assert check_plan(inst, plan, LAT) == []
        assert not plan.unplaced
        assert len(plan.gpus_used) * 1000 == sum(c.cls[1] * n for c, n in found.mix)


def dive_failing_first(monkeypatch, d, pool, cap):  # type: ignore[no-untyped-def]
    """``dive`` with its first attempt made to fail: (what it found, the columns each
    attempt started from)."""
    import fineserve.planner.dive as dive_module

    starts = []
    real = dive_module._dive_from

    def first_fails(d_, start, *args):
        starts.append(start)
        found = real(d_, start, *args)
        return dataclasses.replace(found, mix=()) if len(starts) == 1 else found

    monkeypatch.setattr(dive_module, "_dive_from", first_fails)
    try:
        return dive(d, pool, cost_cap=cap, seconds=30), starts
    finally:
        monkeypatch.undo()


def test_a_failed_dive_restarts_from_a_subset_of_the_pool(monkeypatch):
    """The first dive is made to fail: the restart starts from a strict subset of the pool,
    reaches a feasible mix, and the returned pool holds every column seen."""
    inst, _, d = _pooled(2)
    cap = sum(d.cost.values())
    pool = configuration_bound(d, seconds=5).pool
    assert len(pool) >= 4
    found, starts = dive_failing_first(monkeypatch, d, pool, cap)
    assert len(starts) >= 2 and starts[0] == pool
    assert set(starts[1]) < set(pool)
    assert found.mix
    _assert_mix_is_feasible(d, found.mix, cap)
    assert set(pool) <= set(found.pool)
    assert {c for c, _ in found.mix} <= set(found.pool)


def test_dive_restarts_are_reproducible():
    _, _, d = _pooled(3)
    cap = sum(d.cost.values())
    pool = configuration_bound(d, seconds=5).pool
    assert dive(d, pool, cost_cap=cap, seconds=10).mix == dive(d, pool, cost_cap=cap,
                                                              seconds=10).mix


def test_dive_below_the_bound_finds_nothing():
    _, _, d = _pooled(1)
    lower = configuration_bound(d, seconds=5).value
    assert lower >= 1000
    assert dive(d, (), cost_cap=lower - 1000, seconds=5).mix == ()


def test_place_mix_rejects_half_a_tp_engine():
    _, _, d = _pooled(2, tp=(2,))
    m = d.models[0]
    i = next(j for j, o in enumerate(d.options[m]) if o.tp == 2)
    cls = next(iter({(g.spec.name, d.cost[g.gpu_id]) for g in d.gpus}))
    lone = Column(cls, ((m, i, 0),))
    assert place_mix(d, ((lone, 1),)) is None


@pytest.mark.parametrize("seed", range(3))
def test_rounded_plan_under_a_cost_cap_is_valid_and_within_it(seed):
    inst, _, d = _pooled(seed, n=5)
    pool = configuration_bound(d, seconds=5).pool
    cap = sum(d.cost.values())
    placed = rounded_plan(d, pool, cost_cap=cap, seconds=10, workers=2)
    assert placed is not None
    plan = _placed_plan(d, placed, SolveReport("ilp-rounding", "FEASIBLE", 0.0))
    assert check_plan(inst, plan, LAT) == []
    assert len(plan.gpus_used) * 1000 <= cap


def test_headroom_dive_is_valid_and_at_least_h_min():
    inst, _, d = _pooled(3)
    placed = headroom_dive(d, (), cost_cap=sum(d.cost.values()), seconds=10)
    assert placed is not None
    plan = _placed_plan(d, placed, SolveReport("dive", "FEASIBLE", 0.0))
    assert check_plan(inst, plan, LAT) == []
    assert plan.min_headroom >= d.h_min / 1000 - 1e-9


def test_replica_steps_are_where_a_model_needs_one_more_engine():
    _, _, d = _pooled(0)
    steps = replica_steps(d, d.h_min, d.h_cap)
    assert steps == sorted(set(steps)) and all(d.h_min < h <= d.h_cap for h in steps)
    for h in steps:
        more = [m for m in d.models
                if replicas(dataclasses.replace(d, h_min=h), m)
                > replicas(dataclasses.replace(d, h_min=h - 1), m)]
        assert more, h
    for h in range(d.h_min + 1, min(d.h_cap, d.h_min + 3000)):
        if h not in steps:
            assert all(replicas(dataclasses.replace(d, h_min=h), m)
                       == replicas(dataclasses.replace(d, h_min=h - 1), m) for m in d.models)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, len(CATALOG) - 1), min_size=2, max_size=4),
       data=st.data(), gpus=st.integers(2, 3))
def test_step_bound_never_cuts_off_the_brute_force_optimum(picks, data, gpus):
    case = _brute_forced(picks, data, gpus)
    if case is None:
        return
    d, k, h = case
    value, _ = step_bound(d, 1000 * k, d.h_cap, seconds=5)
    assert value >= h


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_step_bound_holds_against_the_exact_ilp(seed):
    inst, options, d = _pooled(seed, n=3)
    cost, h = _exact_pooled(inst, options)
    value, _ = step_bound(d, cost, d.h_cap, seconds=5)
    assert value >= h
