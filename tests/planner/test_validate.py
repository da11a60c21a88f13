"""Every ILP and greedy plan passes the solver-free validator; broken plans do not."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.errors import PlanInvalid
from fineserve.planner.api import PLAN_METHODS, make_plan
from fineserve.planner.options import engine_options
from fineserve.planner.schema import KVMode, Plan
from fineserve.planner.validate import check_plan, validate_plan
from tests.planner.fakes import FakeLatency, demand, instance

LAT = FakeLatency()
CATALOG = [("llama-3.1-8b", "bf16", "bf16"), ("llama-3.1-8b", "fp8", "fp8"),
           ("llama-3.1-8b", "int4", "bf16"), ("llama-3.2-3b", "bf16", "bf16"),
           ("qwen2.5-14b", "fp8", "fp8"), ("llama-3.1-70b", "int4", "bf16"),
           ("llama-3.1-70b", "bf16", "bf16"), ("qwen3-32b", "bf16", "bf16")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, len(CATALOG) - 1), min_size=1, max_size=7),
    data=st.data(),
    gpus=st.sampled_from([1, 2, 4]),
    nodes=st.integers(1, 2),
    kv_mode=st.sampled_from(list(KVMode)),
)
def test_every_plan_is_valid(picks, data, gpus, nodes, kv_mode):
    rates = data.draw(st.lists(st.floats(0.1, 30.0), min_size=len(picks), max_size=len(picks)))
    models = [demand(f"m{i}", *CATALOG[p], rate=r, tpot=0.15)
              for i, (p, r) in enumerate(zip(picks, rates, strict=True))]
    inst = instance(models, gpus=gpus, nodes=nodes, kv_mode=kv_mode,
                    sm_levels=(25, 50, 75, 100), time_limit_s=5, num_workers=2)
    try:
        options = engine_options(inst, LAT)
    except Exception as exc:  # a 70B bf16 on one 1-GPU node cannot be served: named error
        assert "weights need" in str(exc)
        return
    for method in PLAN_METHODS:
        try:
            plan = make_plan(inst, LAT, method=method, options=options)
        except Exception as exc:
            assert "nothing fits" in str(exc)
            continue
        assert check_plan(inst, plan, LAT) == [], method
        placed = {e.model for e in plan.engines} | {u.model for u in plan.unplaced}
        assert placed == {m.name for m in inst.models}, "every model placed or listed"


@pytest.fixture(scope="module")
def good() -> tuple:
    models = [demand("a", rate=6), demand("b", "llama-3.1-70b", "int4", rate=1, tpot=0.15),
              demand("c", "llama-3.2-3b", rate=3)]
    inst = instance(models, gpus=2, time_limit_s=5, num_workers=2)
    return inst, make_plan(inst, LAT)


def mutate(plan: Plan, index: int = 0, **changes) -> Plan:
    engines = list(plan.engines)
    engines[index] = dataclasses.replace(engines[index], **changes)
    return Plan(plan.instance, tuple(engines), plan.unplaced, plan.report)


def test_valid_plan_passes(good):
    inst, plan = good
    assert validate_plan(inst, plan, LAT) is plan


def test_tp_unaware_weights_are_caught(good):
    inst, plan = good
    e = plan.engines[0]
    bad = mutate(plan, weight_bytes=e.weight_bytes * 2)
    assert any("weight bytes" in p for p in check_plan(inst, bad, LAT))


def test_sm_overflow_is_caught(good):
    inst, plan = good
    bad = mutate(plan, sm_pct=100)
    problems = check_plan(inst, bad, LAT)
    if len(plan.engines_on(plan.engines[0].gpus[0])) > 1:
        assert any("SM shares sum" in p for p in problems)


def test_memory_overflow_is_caught(good):
    inst, plan = good
    bad = mutate(plan, kv_bytes=80 * 2**30)
    assert any("usable" in p for p in check_plan(inst, bad, LAT))


def test_overclaimed_capacity_and_overload_are_caught(good):
    inst, plan = good
    e = plan.engines[0]
    problems = check_plan(inst, mutate(plan, capacity_rps=e.capacity_rps * 3,
                                       rate_rps=e.capacity_rps * 2), LAT)
    assert any("recomputed capacity" in p for p in problems)
    assert any("above capacity" in p for p in problems)


def test_dropped_model_is_caught(good):
    inst, plan = good
    kept = tuple(e for e in plan.engines if e.model != "c")
    bad = Plan(plan.instance, kept, plan.unplaced, plan.report)
    assert any("c: routed 0.0000" in p for p in check_plan(inst, bad, LAT))
    with pytest.raises(PlanInvalid, match="is invalid"):
        validate_plan(inst, bad, LAT)


def test_misaligned_tp_group_is_caught(good):
    inst, plan = good
    bad = mutate(plan, gpus=(1, 2))
    assert any("aligned TP group" in p or "outside the cluster" in p
               for p in check_plan(inst, bad, LAT))


def test_headroom_is_routed_capacity_over_routed_rate():
    """An engine that carries little traffic adds little burst tolerance: the headroom is
    set by the busiest engine (capacity 10 at 9.5 req/s), not by total capacity (20 / 10)."""
    from fineserve.planner.schema import EnginePlacement, SolveReport

    inst = instance([demand("a", rate=10.0)], gpus=2)

    def engine(i, rate):
        return EnginePlacement(f"a-{i}", "a", "node0", (i,), 50, 64, 1, 1, 1, 10.0, rate)

    plan = Plan(inst, (engine(0, 9.5), engine(1, 0.5)), (), SolveReport("t", "HEURISTIC", 0))
    assert plan.headroom_of("a") == pytest.approx(10 / 9.5)
    even = Plan(inst, (engine(0, 5.0), engine(1, 5.0)), (), SolveReport("t", "HEURISTIC", 0))
    assert even.headroom_of("a") == pytest.approx(2.0) == even.min_headroom
    idle = Plan(inst, (engine(0, 0.0),), (), SolveReport("t", "HEURISTIC", 0))
    assert idle.headroom_of("a") == 0.0 and idle.min_headroom == 0.0
