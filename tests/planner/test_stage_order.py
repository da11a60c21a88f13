"""A stage's order of work (ilp._stage): a cheap bound, a short local search, and only then
the costly bounds and hints - the headroom stage of the 19-model instance reached its
bound by local search in 1 s after 10 s of configuration LP and rounding (2026-11-26)."""

import dataclasses

from fineserve.planner import ilp, lns
from fineserve.planner.constraints import pin_all_placed
from fineserve.planner.ilp import Preparation, build_model
from fineserve.planner.options import engine_options
from fineserve.planner.schema import KVMode
from fineserve.planner.variables import headroom_of_u
from tests.planner.fakes import FakeLatency, demand, instance

LAT = FakeLatency()


def _run_headroom_stage(monkeypatch, search_meets_bound: bool) -> tuple[list, object]:
    """The headroom stage of a two-model instance, with the solver's answers kept short of
    optimal and the local search faked: returns the calls in order and the stage's report."""
    inst = instance([demand("a", rate=3.0, tp=(1,)), demand("b", "llama-3.2-3b", rate=3.0,
                                                              tp=(1,))],
                    gpus=2, sm_levels=(30, 50, 100), batch_levels=(256,),
                    kv_mode=KVMode.STATIC, time_limit_s=20, num_workers=1)
    bm = build_model(inst, engine_options(inst, LAT))
    pin_all_placed(bm.b, bm.d, bm.v)
    calls: list = []
    real_solve = ilp._solve_keep

    def solve_unproven(bm_, seconds, sense, prior):
        calls.append("solve")
        res = real_solve(bm_, seconds, sense, prior)
        assert res.has_solution
        return dataclasses.replace(res, status="FEASIBLE", bound=0.0)  # nothing proven

    def search(bm_, res, sense, seconds, focus, bound):
        calls.append("search")
        if search_meets_bound:
            return dataclasses.replace(res, objective=bound)
        return res

    def first(seconds, found):
        calls.append("first")
        return found - 1, None  # a bound one unit short of the solution

    def then(seconds, found):
        calls.append("then")
        return found - 1, None

    monkeypatch.setattr(ilp, "_solve_keep", solve_unproven)
    monkeypatch.setattr(ilp, "_lns", search)
    stages: list = []
    res = ilp._stage(bm, "headroom", "min", bm.v.U, ilp.time.perf_counter() + 10, 1.0,
                     headroom_of_u, stages, Preparation(first, then), focus=lns.busiest)
    assert res.has_solution
    return calls, stages[-1]


def test_a_search_that_meets_the_cheap_bound_skips_the_costly_step(monkeypatch):
    calls, stage = _run_headroom_stage(monkeypatch, search_meets_bound=True)
    assert calls == ["solve", "first", "search"]
    assert stage.status == "OPTIMAL"  # the objective met the first step's bound


def test_the_costly_step_runs_after_the_search_when_the_bound_is_not_met(monkeypatch):
    calls, stage = _run_headroom_stage(monkeypatch, search_meets_bound=False)
    assert calls[:4] == ["solve", "first", "search", "then"]
    assert calls[-1] == "solve"  # the solver continues from the best solution
    assert stage.status == "FEASIBLE"
