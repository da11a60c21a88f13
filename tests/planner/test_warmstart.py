"""The worst-fit plan, fed to the ILP, is a feasible solution in its integer units, and the
ILP never ends below it (warmstart.py)."""

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.constraints import pin_all_placed
from fineserve.planner.ilp import build_model, solve_ilp
from fineserve.planner.options import engine_options
from fineserve.planner.ranking import rank
from fineserve.planner.scenarios import muxserve_scale
from fineserve.planner.schema import KVMode, Objective
from fineserve.planner.validate import check_plan
from fineserve.planner.variables import headroom_of_u
from fineserve.planner.warmstart import all_vars, hint_from_plan, places_all, plan_keys
from fineserve.planner.worstfit import worst_fit_plan
from fineserve.profiles.composite import default_latency_model
from tests.planner.fakes import FakeLatency, demand, instance

LAT = FakeLatency()
CATALOG = [("llama-3.1-8b", "bf16", "bf16"), ("llama-3.1-8b", "fp8", "fp8"),
           ("qwen2.5-7b", "int4", "bf16"), ("llama-3.2-3b", "bf16", "bf16"),
           ("qwen2.5-14b", "fp8", "fp8")]


def tight_instance(picks, rates, gpus, kv_mode, objective=Objective.MAX_HEADROOM):
    """Max-headroom makes worst-fit raise its capacity factor until the packing is tight:
    the case where rounding against the plan used to break the hint."""
    models = [demand(f"m{i}", *CATALOG[p], rate=r, tp=(1, 2)) for i, (p, r) in
              enumerate(zip(picks, rates, strict=True))]
    return instance(models, gpus=gpus, sm_levels=(20, 40, 60, 80, 100), kv_mode=kv_mode,
                    objective=objective, time_limit_s=6, num_workers=2)


@st.composite
def instances(draw):
    picks = draw(st.lists(st.integers(0, len(CATALOG) - 1), min_size=2, max_size=5))
    rates = draw(st.lists(st.floats(1.0, 60.0), min_size=len(picks), max_size=len(picks)))
    return tight_instance(picks, rates, draw(st.integers(2, 4)),
                          draw(st.sampled_from([KVMode.POOLED, KVMode.STATIC])))


def _fixed_solve(inst, options, plan):
    """Build the ILP, fix every variable to the plan's hint and solve: the hint's status."""
    bm = build_model(inst, options)
    hint = hint_from_plan(bm.d, bm.v, plan).values
    assert set(hint) == set(all_vars(bm.v)), "the hint must be complete"
    if places_all(bm.d, bm.v, hint):
        pin_all_placed(bm.b, bm.d, bm.v)
    for var, value in hint.items():
        bm.b.add(var == int(value), "fix")
    return bm.b.solve(10), bm, hint


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_worst_fit_hint_is_a_feasible_ilp_solution(inst):
    options = engine_options(inst, LAT)
    plan = worst_fit_plan(inst, options)
    res, bm, hint = _fixed_solve(inst, options, plan)
    assert res.status == "OPTIMAL", "the repaired hint breaks a row of the ILP"
    offered = sum(bm.d.lam.values())
    placed = sum(hint[bm.v.p[m]] for m in bm.d.models)
    served = sum(e.rate_rps for e in plan.engines) * 1000
    # rounding against the plan costs at most a sliver of its traffic
    assert placed >= min(served, offered) * 0.99 - len(bm.d.models)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_ilp_never_worse_than_its_worst_fit_hint(inst):
    options = engine_options(inst, LAT)
    warm = worst_fit_plan(inst, options)
    bm = build_model(inst, options)
    hint = hint_from_plan(bm.d, bm.v, warm).values
    plan = solve_ilp(inst, options, warm_start=warm)
    assert check_plan(inst, plan, LAT) == []
    assert rank(inst, plan) <= rank(inst, warm)
    if places_all(bm.d, bm.v, hint):
        # the solver kept the hint: its own headroom stage starts from it, no fallback
        stage = next(s for s in plan.report.stages if s.name == "headroom")
        assert stage.objective >= headroom_of_u(hint[bm.v.U]) - 1e-9
        assert plan.report.status != "HEURISTIC", plan.report.note


def test_hint_repairs_the_capacity_sweep_knee():
    """19 models on 32 H100s at 7.83 x 120 req/s (docs/capacity-sweep.md): worst-fit fills a
    GPU to the last megabyte; its own split, in KiB and milli-req/s rounded against it,
    overflows that GPU, so CP-SAT dropped the hint. The repaired split places everything."""
    inst = muxserve_scale(total_rps=120.0 * 7.83)
    inst = replace(inst, settings=replace(inst.settings, objective=Objective.MAX_HEADROOM))
    options = engine_options(inst, default_latency_model())
    plan = worst_fit_plan(inst, options)
    assert not plan.unplaced
    bm = build_model(inst, options)
    d, v = bm.d, bm.v
    naive = {}  # the plan's own rates, rounded down to milli-req/s
    for key, rate in plan_keys(d, v, plan):
        for g in v.group_of(d, key).gpus:
            naive[g] = naive.get(g, 0) + d.w[key[:2]] + d.kappa[key[:2]] * int(rate * 1000)
    assert any(used > d.mem_cap[g] for g, used in naive.items()), "premise: rounding breaks it"
    res, bm, hint = _fixed_solve(inst, options, plan)
    assert res.status == "OPTIMAL"
    assert places_all(bm.d, bm.v, hint)
