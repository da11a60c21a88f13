"""Large-neighbourhood search (lns.py): every answer is a solution of the full ILP, never
worse than its start, and it finds the obvious improvement."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner import lns
from fineserve.planner.constraints import all_traffic, pin_all_placed, placed_traffic
from fineserve.planner.greedy import static_plan
from fineserve.planner.ilp import build_model
from fineserve.planner.options import engine_options
from fineserve.planner.schema import KVMode, Objective
from fineserve.planner.variables import utilisation
from fineserve.planner.warmstart import hint_from_plan, places_all
from fineserve.planner.worstfit import worst_fit_plan
from tests.planner.fakes import FakeLatency, demand, instance
from tests.planner.test_warmstart import CATALOG, tight_instance

LAT = FakeLatency()


def _is_solution(bm, values) -> bool:
    for var, value in values.items():
        bm.b.add(var == int(round(value)), "fix")
    return bm.b.solve(10).status == "OPTIMAL"


def _start(inst, plan_of=worst_fit_plan):
    options = engine_options(inst, LAT)
    bm = build_model(inst, options)
    hint = hint_from_plan(bm.d, bm.v, plan_of(inst, options)).values
    return bm, hint


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, len(CATALOG) - 1), min_size=2, max_size=4),
       data=st.data(), gpus=st.integers(2, 4))
def test_lns_answers_are_ilp_solutions_no_worse_than_the_start(picks, data, gpus):
    rates = data.draw(st.lists(st.floats(1.0, 80.0), min_size=len(picks), max_size=len(picks)))
    bm, hint = _start(tight_instance(picks, rates, gpus, KVMode.POOLED))
    d, v, b = bm.d, bm.v, bm.b
    if places_all(d, v, hint):
        pin_all_placed(b, d, v)
        b.minimize(v.U)
        out = lns.improve(b.model, d, v, hint, hint[v.U], sense="min", seconds=1.0,
                          focus=lns.busiest(d, v), workers=2, overload=True)
        assert out.objective <= hint[v.U]
        assert out.values[v.U] == out.objective
        assert out.objective >= utilisation(d, {k: out.values[f] for k, f in v.f.items()})
    else:
        expr = placed_traffic(b, d, v)
        b.maximize(expr)
        start = sum((10**9 // d.lam[m]) * hint[v.p[m]] for m in d.models)
        out = lns.improve(b.model, d, v, hint, start, sense="max", seconds=1.0,
                          focus=lns.short_of_traffic(d, v), workers=2)
        assert out.objective >= start
    assert _is_solution(bm, out.values)


def test_lns_spreads_a_stacked_start_over_idle_gpus():
    """Static puts each model on its own GPU and leaves two idle: more engines on the idle
    GPUs raise the headroom, a move inside a neighbourhood of a few GPUs."""
    models = [demand("a", rate=6.0, tp=(1,)), demand("b", "llama-3.2-3b", rate=6.0, tp=(1,))]
    inst = instance(models, gpus=4, sm_levels=(20, 40, 60, 80, 100), kv_mode=KVMode.POOLED,
                    objective=Objective.MAX_HEADROOM, num_workers=2)
    bm, hint = _start(inst, static_plan)
    d, v, b = bm.d, bm.v, bm.b
    assert places_all(d, v, hint)
    pin_all_placed(b, d, v)
    b.minimize(v.U)
    out = lns.improve(b.model, d, v, hint, hint[v.U], sense="min", seconds=3.0,
                      focus=lns.busiest(d, v), workers=2, overload=True)
    assert out.improvements >= 1 and out.objective < hint[v.U]
    used = {g for key, x in v.x.items() if out.values[x] for g in v.group_of(d, key).gpus}
    assert len(used) > 2
    assert _is_solution(bm, out.values)


def test_lns_proves_a_stage_when_its_neighbourhood_is_the_whole_cluster():
    """Two GPUs, more traffic than fits: a neighbourhood of every GPU is the full model, so
    the search stops with the proven optimum instead of spending its time."""
    models = [demand("big", rate=400.0, tp=(1,)), demand("small", "llama-3.2-1b", rate=1.0)]
    inst = instance(models, gpus=2, sm_levels=(30, 50, 100), kv_mode=KVMode.POOLED,
                    num_workers=2)
    bm, hint = _start(inst)
    d, v, b = bm.d, bm.v, bm.b
    assert not places_all(d, v, hint)
    b.maximize(placed_traffic(b, d, v))
    out = lns.improve(b.model, d, v, hint, None, sense="max", seconds=30.0,
                      focus=lns.short_of_traffic(d, v), workers=2,
                      stop_at=all_traffic(d))
    assert out.proven and out.objective is not None
    assert out.objective < all_traffic(d)
    assert b.solve(10).objective == out.objective  # the full model agrees


def test_overload_search_proves_u_when_the_whole_cluster_closes_without_gain():
    """Review finding 4: the overload target stayed 0.5% below U (158 steps from 789,921 to
    362,363), then the same whole-cluster sub-problem was solved again until time ran out.
    Now the step adapts and a whole-cluster optimum without gain is a bound on U, so the
    search ends with U proven - which the full model confirms."""
    models = [demand("a", rate=40.0, tp=(1,)), demand("b", "llama-3.2-3b", rate=40.0, tp=(1,))]
    inst = instance(models, gpus=4, sm_levels=(20, 40, 60, 80, 100), kv_mode=KVMode.POOLED,
                    objective=Objective.MAX_HEADROOM, num_workers=1)
    bm, hint = _start(inst, static_plan)
    d, v, b = bm.d, bm.v, bm.b
    pin_all_placed(b, d, v)
    b.minimize(v.U)
    out = lns.improve(b.model, d, v, hint, hint[v.U], sense="min", seconds=60.0,
                      focus=lns.busiest(d, v), workers=1, overload=True)
    assert out.proven and out.bound == out.objective < hint[v.U]
    assert _is_solution(bm, out.values)
    bm2, _ = _start(inst, static_plan)
    pin_all_placed(bm2.b, bm2.d, bm2.v)
    bm2.b.add(bm2.v.U <= out.objective - 1, "below")
    assert bm2.b.solve(30).status == "INFEASIBLE"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(2.0, 60.0), gpus=st.integers(2, 4))
def test_an_overload_bound_never_cuts_off_a_solution(rate, gpus):
    """Whatever bound the search reports, the full model has no solution below it."""
    models = [demand("a", rate=rate, tp=(1,)), demand("b", "llama-3.2-3b", rate=rate, tp=(1,))]
    inst = instance(models, gpus=gpus, sm_levels=(20, 60, 100), kv_mode=KVMode.POOLED,
                    objective=Objective.MAX_HEADROOM, num_workers=1)
    bm, hint = _start(inst, static_plan)
    d, v, b = bm.d, bm.v, bm.b
    if not places_all(d, v, hint):
        return
    pin_all_placed(b, d, v)
    b.minimize(v.U)
    out = lns.improve(b.model, d, v, hint, hint[v.U], sense="min", seconds=2.0,
                      focus=lns.busiest(d, v), workers=1, overload=True)
    assert out.bound is None or out.bound <= out.objective
    if out.bound is not None and out.bound > d.u_min:
        b.add(v.U <= out.bound - 1, "below")
        assert b.solve(30).status == "INFEASIBLE"
