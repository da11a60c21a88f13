"""Canonical relabelling: a valid plan stays valid and satisfies the ILP's symmetry rows (9),
so every greedy plan is a feasible warm start."""

import dataclasses
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.greedy import METHODS
from fineserve.planner.ilp import _hint_from_plan, build_model
from fineserve.planner.options import engine_options
from fineserve.planner.schema import KVMode, Plan
from fineserve.planner.symmetry import canonical_plan
from fineserve.planner.validate import check_plan
from tests.planner.fakes import FakeLatency, demand, instance
from tests.planner.test_ilp import CATALOG

LAT = FakeLatency()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), gpus=st.sampled_from([2, 4, 6]), nodes=st.integers(2, 3),
       method=st.sampled_from(sorted(METHODS)))
def test_canonical_greedy_plan_is_valid_and_feasible_for_the_ilp(seed, gpus, nodes, method):
    rng = random.Random(seed)
    models = [demand(f"m{j}", *CATALOG[rng.randrange(len(CATALOG))],
                     rate=rng.uniform(0.5, 30), tp=(1, 2)) for j in range(rng.randint(2, 5))]
    inst = instance(models, gpus=gpus, nodes=nodes, sm_levels=(30, 50, 100),
                    kv_mode=rng.choice([KVMode.STATIC, KVMode.POOLED]), num_workers=2)
    options = engine_options(inst, LAT)
    plan = canonical_plan(METHODS[method](inst, options))
    assert check_plan(inst, plan, LAT) == []
    bm = build_model(inst, options)
    values = _hint_from_plan(bm, plan)
    for var in [*bm.v.x.values(), *bm.v.y.values()]:
        bm.b.add(var == values[var], "fix")
    assert bm.b.solve(10).status in ("OPTIMAL", "FEASIBLE")


def test_power_of_two_nodes_are_used_as_one_prefix():
    models = [demand(f"m{j}", "llama-3.1-8b", rate=30.0, tp=(1,)) for j in range(6)]
    inst = instance(models, gpus=4, nodes=3, sm_levels=(100,), num_workers=2)
    options = engine_options(inst, LAT)
    plan = METHODS["static"](inst, options)
    assert len(plan.engines) == 6
    # spread them: three GPUs used in each of the first two nodes, a hole in between
    spots = [("node0", 0), ("node0", 1), ("node0", 2), ("node1", 4), ("node1", 5),
             ("node1", 6)]
    spread = [dataclasses.replace(e, node=n, gpus=(g,))
              for e, (n, g) in zip(plan.engines[:6], spots, strict=True)]
    plan = Plan(plan.instance, tuple(spread), plan.unplaced, plan.report)
    assert check_plan(inst, plan, LAT) == []
    canon = canonical_plan(plan)
    assert sorted(canon.gpus_used) == list(range(6))
    assert check_plan(inst, canon, LAT) == []
