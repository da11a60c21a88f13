"""Review findings 6 and 7: the warm start's hint says why it is missing, and solves that have
no time left are not started (they used to run at least 0.2 s / 2 s past the deadline)."""

from dataclasses import replace

import fineserve.planner.warmstart as warmstart
from fineserve.planner.bounds import (
    NO_TIME,
    cost_lower_bound,
    headroom_upper_bound,
    relaxation,
    solve,
)
from fineserve.planner.ilp import build_model, solve_ilp
from fineserve.planner.options import engine_options
from fineserve.planner.packing import solve_aggregate
from fineserve.planner.schema import KVMode, Objective
from fineserve.planner.validate import check_plan
from fineserve.planner.variables import scale
from fineserve.planner.warmstart import all_vars, hint_from_plan
from fineserve.planner.worstfit import worst_fit_plan
from tests.planner.fakes import FakeLatency, demand, instance

LAT = FakeLatency()


def _small(kv_mode=KVMode.POOLED):
    models = [demand("a", "llama-3.1-8b", rate=6.0, tp=(1,)),
              demand("b", "llama-3.2-3b", rate=4.0, tp=(1,))]
    inst = instance(models, gpus=2, sm_levels=(50, 100), kv_mode=kv_mode,
                    objective=Objective.LEXICOGRAPHIC, time_limit_s=5, num_workers=2)
    options = engine_options(inst, LAT)
    return inst, options, worst_fit_plan(inst, options)


def test_hint_is_complete_when_the_repair_has_time():
    inst, options, plan = _small()
    bm = build_model(inst, options)
    hint = hint_from_plan(bm.d, bm.v, plan, seconds=5.0)
    assert hint.values is not None and hint.reason == ""
    assert set(hint.values) == set(all_vars(bm.v))


def test_no_hint_without_time_and_the_reason_says_so():
    inst, options, plan = _small()
    bm = build_model(inst, options)
    hint = hint_from_plan(bm.d, bm.v, plan, seconds=0.0)
    assert hint.values is None
    assert "no time" in hint.reason


def test_no_hint_when_fixed_memory_is_over_a_cap():
    """Rounding fixed memory up and the cap down can leave no split at all: the hint used to
    come back with zero flows and no word of it."""
    inst, options, plan = _small(KVMode.STATIC)
    bm = build_model(inst, options)
    tiny = replace(bm.d, mem_cap=dict.fromkeys(bm.d.mem_cap, 1))
    hint = hint_from_plan(tiny, bm.v, plan)
    assert hint.values is None
    assert "fixed memory" in hint.reason and "cap 1 KiB" in hint.reason


def test_the_ilp_reports_a_dropped_hint_and_still_plans(monkeypatch):
    inst, options, plan = _small()
    monkeypatch.setattr(warmstart, "REPAIR_SECONDS", 0.0)
    out = solve_ilp(inst, options, warm_start=plan)
    assert check_plan(inst, out, LAT) == []
    assert not out.unplaced
    assert "no hint from the" in out.report.note and "no time" in out.report.note


def test_solves_without_time_are_not_started():
    inst, options, _ = _small()
    d = scale(inst, options)
    r = relaxation(d)
    r.model.minimize(r.cost)
    _, status = solve(r.model, 0.0, 1)
    assert status == NO_TIME
    assert cost_lower_bound(d, seconds=0.0, workers=1) == 0
    assert headroom_upper_bound(d, sum(d.cost.values()), seconds=0.0, workers=1) == d.h_cap
    assert solve_aggregate(d, "cost", seconds=-1.0, workers=1) is None


def test_bounds_with_time_are_proven():
    """The counterpart: with time the same calls return real bounds (the test above can fail)."""
    inst, options, _ = _small()
    d = scale(inst, options)
    assert cost_lower_bound(d, seconds=5.0, workers=1) > 0
    assert headroom_upper_bound(d, sum(d.cost.values()), seconds=5.0, workers=1) < d.h_cap
    assert solve_aggregate(d, "cost", seconds=5.0, workers=1) is not None
