"""What a node loss costs each model, and the gateway config over several nodes."""

from __future__ import annotations

from pathlib import Path

from fineserve.runtime.ray.fleet import NodePhase, NodeSlot, impact, ready_engines
from fineserve.runtime.ray.gateway import ray_gateway_config
from fineserve.runtime.ray.messages import AgentPhase, AgentReport, EngineReport
from fineserve.runtime.state import EnginePhase

from ..helpers import demand, engine, options, plan


def _plan():
    a, b = demand("a"), demand("b")
    return plan([a, b], [engine("a-0", a, node="n0", rate=3.0),
                         engine("a-1", a, node="n1", gpus=(1,), rate=1.0),
                         engine("b-0", b, node="n1", gpus=(1,))], nodes=("n0", "n1"))


def _slot(tmp: Path, p, node: str, phase: NodePhase, ready: bool) -> NodeSlot:
    s = NodeSlot(node, options(tmp), tuple(e for e in p.engines if e.node == node))
    s.phase = phase
    s.report = AgentReport(node, "10.0.0.9", 1, AgentPhase.SERVING, tuple(
        EngineReport(e.engine_id, e.model, "10.0.0.9", 8100, EnginePhase.READY if ready
                     else EnginePhase.RESTARTING, 0, None) for e in s.engines), ())
    return s


def test_loss_lines_name_every_affected_model(tmp_path):
    p = _plan()
    slots = {"n0": _slot(tmp_path, p, "n0", NodePhase.SERVING, True),
             "n1": _slot(tmp_path, p, "n1", NodePhase.LOST, True)}
    ready = ready_engines(slots)
    assert ready == {"a-0": True, "a-1": False, "b-0": False}  # lost node: nothing ready
    lines = [m.line("n1", "raylet gone") for m in impact(p, "n1", ready)]
    assert lines == [
        "node n1 lost (raylet gone): model a keeps serving on 1 of 2 replicas",
        "node n1 lost (raylet gone): model b has no replica left; requests for it get 503 "
        "until the node returns"]


def test_a_replica_restarting_elsewhere_does_not_count_as_serving(tmp_path):
    p = _plan()
    slots = {"n0": _slot(tmp_path, p, "n0", NodePhase.SERVING, False),
             "n1": _slot(tmp_path, p, "n1", NodePhase.LOST, True)}
    (a,) = [m for m in impact(p, "n1", ready_engines(slots)) if m.model == "a"]
    assert (a.left, a.lost, a.total) == (0, 1, 2)


def test_gateway_routes_span_nodes_at_their_addresses(tmp_path):
    p = _plan()
    cfg = ray_gateway_config(p, {"a-0": ("10.0.0.1", 8100), "a-1": ("10.0.0.2", 8102),
                                 "b-0": ("10.0.0.2", 8103)}, options(tmp_path, port=9000))
    a = cfg.route("a")
    assert [(u.engine_id, u.url) for u in a.upstreams] == [
        ("a-0", "http://10.0.0.1:8100"), ("a-1", "http://10.0.0.2:8102")]
    assert [round(u.weight, 3) for u in a.upstreams] == [0.75, 0.25]  # the plan's split
    assert {u.gpu for r in cfg.routes for u in r.upstreams} == {"0", "1"}  # global GPU ids
    assert cfg.port == 9000
