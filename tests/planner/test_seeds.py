"""Review finding 10: the planner settings' seed reaches every CP-SAT solve and the dive's
restarts (bounds.solve and the hint's repair set none; a run could not be repeated with
another seed, nor the same one be relied on)."""

import dataclasses
import sys

import pytest
from ortools.sat.python import cp_model

import fineserve.planner.dive as dive_module
import fineserve.planner.ilp as ilp
from fineserve.planner.api import best_greedy
from fineserve.planner.configuration import configuration_bound
from fineserve.planner.ilp import solve_ilp
from fineserve.planner.mixplace import place_mix
from fineserve.planner.options import engine_options
from fineserve.planner.schema import KVMode, Objective
from fineserve.planner.worstfit import worst_fit_plan
from tests.planner.fakes import demand, instance
from tests.planner.test_dive import _pooled, dive_failing_first
from tests.planner.test_packing_improve import LAT, pooled_instance

SEED = 11


@pytest.fixture
def seeds(monkeypatch) -> list[tuple[str, int]]:
    """(calling module, random_seed) of every CP-SAT solve while the test runs."""
    seen: list[tuple[str, int]] = []

    class Recording(cp_model.CpSolver):
        def solve(self, model, *args, **kwargs):
            seen.append((sys._getframe(1).f_globals["__name__"], self.parameters.random_seed))
            return super().solve(model, *args, **kwargs)

    monkeypatch.setattr(cp_model, "CpSolver", Recording)
    return seen


def _seeded(inst):
    return dataclasses.replace(inst, settings=dataclasses.replace(inst.settings, seed=SEED))


def test_relax_and_pack_solves_with_the_settings_seed(monkeypatch, seeds):
    inst = _seeded(pooled_instance([0, 1, 3, 4], [4.0, 6.0, 3.0, 2.0], 4))
    options = engine_options(inst, LAT)
    monkeypatch.setattr(ilp, "MAX_PLACEMENT_VARS", 0)
    plan = solve_ilp(inst, options, warm_start=best_greedy(inst, options))
    assert "relax-and-pack" in plan.report.note
    callers = {module for module, _ in seeds}
    # aggregates and packings (bounds.solve), the packings' best split (the repair)
    assert {"fineserve.planner.bounds", "fineserve.planner.warmstart"} <= callers
    assert {seed for _, seed in seeds} == {SEED}


def test_the_full_ilp_solves_with_the_settings_seed(seeds):
    models = [demand("a", "llama-3.1-8b", rate=6.0, tp=(1,)),
              demand("b", "llama-3.2-3b", rate=4.0, tp=(1,))]
    inst = instance(models, gpus=2, sm_levels=(50, 100), kv_mode=KVMode.POOLED,
                    objective=Objective.LEXICOGRAPHIC, time_limit_s=5, num_workers=2,
                    seed=SEED)
    options = engine_options(inst, LAT)
    solve_ilp(inst, options, warm_start=worst_fit_plan(inst, options))
    callers = {module for module, _ in seeds}
    assert {"fineserve.planner.builder", "fineserve.planner.warmstart"} <= callers
    for module, seed in seeds:  # LNS steps count up from it
        assert seed == SEED or (module == "fineserve.planner.lns" and seed > SEED), module


def test_placing_a_mix_routes_with_the_settings_seed(seeds):
    inst, _, d = _pooled(0)
    d = dataclasses.replace(d, inst=_seeded(inst))
    found = dive_module.dive(d, (), cost_cap=sum(d.cost.values()), seconds=10)
    assert found.mix
    place_mix(d, found.mix)
    assert ("fineserve.planner.mixplace", SEED) in seeds


def _restart_start(monkeypatch, seed: int) -> tuple:
    """The columns the dive restarts from after a first dive made to fail."""
    inst, _, d = _pooled(2)
    d = dataclasses.replace(d, inst=dataclasses.replace(
        inst, settings=dataclasses.replace(inst.settings, seed=seed)))
    pool = configuration_bound(d, seconds=5).pool
    _, starts = dive_failing_first(monkeypatch, d, pool, sum(d.cost.values()))
    assert len(starts) >= 2 and len(pool) >= 4
    return pool, starts[1]


def test_the_dive_restarts_from_a_subset_drawn_from_the_settings_seed(monkeypatch):
    """Seed 0 keeps the subsets the benchmarks measured (attempt k drew from Random(k))."""
    import random

    pool, zero = _restart_start(monkeypatch, 0)
    rng = random.Random(0)
    assert zero == tuple(c for c in pool if rng.random() < dive_module.RESTART_KEEP)
    _, other = _restart_start(monkeypatch, SEED)
    assert other != zero
    assert _restart_start(monkeypatch, SEED)[1] == other
