"""Configuration LP: the pricing DP against enumeration, the bounds against exact optima
(brute force in static KV mode, the cut-free ILP in pooled mode), and the rounded plan."""

import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.configuration import configuration_bound
from fineserve.planner.constraints import gpu_cost, pin_all_placed
from fineserve.planner.ilp import _placed_plan, build_model
from fineserve.planner.options import engine_options
from fineserve.planner.pricing import RankItem, best_configuration
from fineserve.planner.rounding import rounded_plan
from fineserve.planner.schema import KVMode, SolveReport
from fineserve.planner.validate import check_plan
from fineserve.planner.variables import scale
from tests.planner.bruteforce import brute_force
from tests.planner.fakes import FakeLatency, demand, instance
from tests.planner.test_ilp import CATALOG, SMALL, small_instance

LAT = FakeLatency()

item = st.builds(
    lambda m, sm, w, kappa, hi, fixed, per: (m, sm, w, kappa, hi, fixed, per),
    st.integers(0, 3), st.sampled_from([10, 20, 30, 50, 70, 100]), st.integers(1, 60),
    st.integers(0, 9), st.integers(0, 6), st.floats(0, 10), st.floats(0, 3),
)


def _enumerate(items, sm_cap, mem_cap, max_engines):
    """Exact best configuration value by enumeration (integer traffic)."""
    by_model = {}
    for it in items:
        by_model.setdefault(it.model, [None]).append(it)
    best = 0.0
    for pick in itertools.product(*by_model.values()):
        chosen = [it for it in pick if it is not None]
        if len(chosen) > max_engines or sum(it.sm for it in chosen) > sm_cap:
            continue
        for phis in itertools.product(*[range(it.hi + 1) for it in chosen]):
            if sum(it.w + it.kappa * p for it, p in zip(chosen, phis, strict=True)) <= mem_cap:
                best = max(best, sum(it.fixed + it.per * p
                                     for it, p in zip(chosen, phis, strict=True)))
    return best


@settings(max_examples=60, deadline=None)
@given(raw=st.lists(item, min_size=1, max_size=6), mem=st.integers(20, 120),
       engines=st.integers(1, 3), count=st.booleans(), units=st.sampled_from([4, 16, 512]))
def test_pricing_dp_bounds_enumeration_and_returns_a_fitting_configuration(
        raw, mem, engines, count, units):
    items = [RankItem(f"m{m}", j, sm, w, kappa, hi, fixed, per)
             for j, (m, sm, w, kappa, hi, fixed, per) in enumerate(raw)]
    bound, chosen = best_configuration(items, 100, mem, engines, units, count)
    exact = _enumerate(items, 100, mem, engines)
    assert bound >= exact - 1e-9 * max(1.0, exact)
    models = [it.model for it, _ in chosen]
    assert len(models) == len(set(models)) and len(chosen) <= engines
    assert sum(it.sm for it, _ in chosen) <= 100
    assert sum(it.w + it.kappa * phi for it, phi in chosen) <= mem
    assert all(0 <= phi <= it.hi for it, phi in chosen)
    assert sum(it.fixed + it.per * phi for it, phi in chosen) <= exact + 1e-9


def _brute_forced(picks, data, gpus):
    """A small static-KV instance of the ``picks`` (rates drawn from ``data``), scaled, with
    its exact optimum (GPUs k, headroom h) by brute force; None where it has no plan."""
    rates = data.draw(st.lists(st.floats(0.2, 12.0), min_size=len(picks), max_size=len(picks)))
    inst = small_instance(picks, rates, gpus)
    options = engine_options(inst, LAT)
    expected = brute_force(inst, options)
    if expected is None:
        return None
    k, h = expected
    return scale(inst, options), k, h


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, len(CATALOG) - 1), min_size=2, max_size=5),
       data=st.data(), gpus=st.integers(2, 4))
def test_bounds_never_cut_off_the_brute_force_optimum(picks, data, gpus):
    case = _brute_forced(picks, data, gpus)
    if case is None:
        return
    d, k, h = case
    assert configuration_bound(d, seconds=5).value <= 1000 * k
    assert configuration_bound(d, headroom=True, cost_cap=1000 * k, seconds=5).value >= h


def _exact_pooled(inst, options):
    """Lexicographic optimum (cost x1000, routed H x1000) of the ILP without any bound cut."""
    bm = build_model(inst, options)
    b, d, v = bm.b, bm.d, bm.v
    pin_all_placed(b, d, v)
    b.minimize(gpu_cost(b, d, v))
    res = b.solve(20)
    assert res.status == "OPTIMAL"
    b.add(gpu_cost(b, d, v) <= round(res.objective), "pin")
    b.minimize(v.U)  # routed headroom U_SCALE / U, at most the capacity-based one
    head = b.solve(20)
    assert head.status == "OPTIMAL"
    return round(res.objective), 10**9 // round(head.objective)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_bounds_hold_against_the_exact_ilp(seed):
    rng = random.Random(seed)
    models = [demand(f"m{j}", *CATALOG[rng.randrange(len(CATALOG))], rate=rng.uniform(1, 25),
                     tp=(1, 2)) for j in range(3)]
    inst = instance(models, gpus=4, **{**SMALL, "kv_mode": KVMode.POOLED})
    options = engine_options(inst, LAT)
    cost, h = _exact_pooled(inst, options)
    d = scale(inst, options)
    lower = configuration_bound(d, seconds=5)
    assert lower.value <= cost
    assert configuration_bound(d, headroom=True, cost_cap=cost, seconds=5).value >= h


def test_bound_is_valid_when_generation_stops_early():
    models = [demand(f"m{j}", *CATALOG[j], rate=4.0 + j, tp=(1,)) for j in range(5)]
    inst = instance(models, gpus=4, **SMALL)
    options = engine_options(inst, LAT)
    d = scale(inst, options)
    k, h = brute_force(inst, options)
    early = configuration_bound(d, seconds=0.0)
    full = configuration_bound(d, seconds=5)
    assert early.value <= full.value <= 1000 * k
    assert full.converged and full.lp <= 1000 * k + 1e-6
    assert math.isfinite(full.lp)


def test_rounded_plan_is_valid():
    models = [demand(f"m{j}", *CATALOG[j % len(CATALOG)], rate=3.0 + 2 * j, tp=(1, 2))
              for j in range(5)]
    inst = instance(models, gpus=4, **{**SMALL, "kv_mode": KVMode.POOLED})
    options = engine_options(inst, LAT)
    d = scale(inst, options)
    pool = configuration_bound(d, seconds=5).pool
    placed = rounded_plan(d, pool, cost_cap=None, seconds=5, workers=2)
    assert placed is not None
    plan = _placed_plan(d, placed, SolveReport("ilp-rounding", "FEASIBLE", 0.0))
    assert check_plan(inst, plan, LAT) == []
    assert not plan.unplaced


@pytest.mark.parametrize("seed", range(4))
def test_settled_generation_gives_the_converged_bound_in_whole_gpus(seed):
    """settle=True stops once the rounded bound meets the LP value: the whole-GPU bound is
    the one full convergence gives, and it takes no more iterations."""
    rng = random.Random(seed)
    models = [demand(f"m{j}", *CATALOG[rng.randrange(len(CATALOG))], rate=rng.uniform(1, 25),
                     tp=(1, 2)) for j in range(5)]
    inst = instance(models, gpus=6, **{**SMALL, "kv_mode": KVMode.POOLED})
    d = scale(inst, engine_options(inst, LAT))
    full = configuration_bound(d, seconds=10)
    settled = configuration_bound(d, seconds=10, settle=True)
    assert full.converged

    def whole(v):
        return -(-v // 1000)

    assert whole(settled.value) == whole(full.value)
    assert settled.iterations <= full.iterations
    assert settled.value <= full.value
