"""Regressions found in review: heterogeneous clusters, costs, headroom with unplaced models,
spec edge cases, non-finite plan values."""

import dataclasses
import json

import pytest

from fineserve.errors import SpecError
from fineserve.planner.api import make_plan
from fineserve.planner.options import engine_options
from fineserve.planner.schema import (
    Cluster,
    Instance,
    NodeSpec,
    Objective,
    Plan,
    PlannerSettings,
)
from fineserve.planner.spec import parse_spec
from fineserve.planner.validate import check_plan
from fineserve.profiles.catalog import resolve_arch
from fineserve.profiles.gpus import gpu_spec
from tests.planner.fakes import FakeLatency, demand

LAT = FakeLatency()


def cluster(*nodes):
    return Cluster(tuple(NodeSpec(n, gpu_spec(g), k, c) for n, g, k, c in nodes))


def test_cheaper_node_of_the_same_type_is_used():
    inst = Instance((demand("a", rate=5),),
                    cluster(("ondemand", "h100", 2, 10.0), ("reserved", "h100", 8, 1.0)),
                    PlannerSettings(time_limit_s=5, num_workers=2))
    plan = make_plan(inst, LAT)
    assert plan.cost == 1.0 and plan.engines[0].node == "reserved"
    assert plan.report.stages[-2].objective == pytest.approx(1.0)  # cost stage, user units


def test_tp_options_only_on_nodes_that_hold_the_group():
    inst = Instance((demand("a", "llama-3.1-8b", rate=2, tp=(2,)),),
                    cluster(("solo", "h200", 1, 1.0), ("pool", "l40s", 4, 1.0)),
                    PlannerSettings(time_limit_s=5, num_workers=2))
    options = engine_options(inst, LAT)
    assert {o.gpu_type for o in options["a"]} == {"L40S-48GB"}
    for method in ("static", "muxserve", "kv-pressure", "ilp"):
        plan = make_plan(inst, LAT, method=method, options=options)
        assert plan.engines and check_plan(inst, plan, LAT) == []


def test_headroom_stage_ignores_a_wholly_unplaced_model():
    models = (demand("huge", "llama-3.1-70b", "bf16", rate=1, tp=(8,)),
              demand("small", "llama-3.2-1b", rate=1, tp=(1,)))
    inst = Instance(models, cluster(("n", "h100", 2, 1.0)),
                    PlannerSettings(objective=Objective.MAX_HEADROOM, time_limit_s=5,
                                    num_workers=2))
    with pytest.raises(SpecError, match=r"models\[0\] \(huge\)\.tp"):
        engine_options(inst, LAT)
    big = (demand("busy", rate=400, tp=(1,)), demand("small", "llama-3.2-1b", rate=1, tp=(1,)))
    inst = dataclasses.replace(inst, models=big)
    plan = make_plan(inst, LAT)
    stage = next(s for s in plan.report.stages if s.name == "headroom")
    assert stage.objective > 0  # before the fix: pinned to 0 by the unplaced traffic


SPEC = {"models": [{"name": "a", "model": "llama-3.1-8b", "rate": 1,
                    "slo": {"ttft_ms": 500, "tpot_ms": 50}}]}


@pytest.mark.parametrize("patch,message", [
    ({"planner": {"min_headroom": 0.5}}, "planner.min_headroom: Input should be greater"),
    ({"planner": {"sm_levels": []}}, "planner.sm_levels: List should have at least 1"),
    ({"cluster": {"nodes": []}}, "cluster.nodes: List should have at least 1"),
    ({"cluster": {"nodes": [{"gpus": 0}]}}, "cluster.nodes[0].gpus: Input should be greater"),
    ({"cluster": {"nodes": [{"cost": 1}]}}, "cluster.nodes[0].cost: unknown key"),
])
def test_spec_edge_cases(patch, message):
    with pytest.raises(SpecError) as info:
        parse_spec({**SPEC, **patch}, source="s.yaml")
    assert message in str(info.value)


def test_spec_rejects_infinite_and_huge_rates():
    for rate in (float("inf"), 2e6):
        bad = json.loads(json.dumps(SPEC))
        bad["models"][0]["rate"] = rate
        with pytest.raises(SpecError, match=r"models\[0\]\.rate"):
            parse_spec(bad, source="s.yaml")


def test_config_kv_heads_must_divide_heads(tmp_path):
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 32,
           "num_key_value_heads": 3, "intermediate_size": 8, "vocab_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="num_key_value_heads must be a positive divisor"):
        resolve_arch(str(tmp_path))


def test_validator_rejects_non_finite_values():
    inst = Instance((demand("a", rate=5),), cluster(("n", "h100", 1, 1.0)),
                    PlannerSettings(time_limit_s=5, num_workers=2))
    plan = make_plan(inst, LAT)
    e = dataclasses.replace(plan.engines[0], rate_rps=float("nan"))
    bad = Plan(plan.instance, (e,), plan.unplaced, plan.report)
    assert any("finite" in p for p in check_plan(inst, bad, LAT))
