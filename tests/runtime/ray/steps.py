"""The Ray deployment scenario, step by step (imported by the stand-in and the e2e modules,
which each provide a module-scoped ``dep`` fixture: a started ``RayDeployed``)."""

from __future__ import annotations

import time

from fineserve.runtime.procs import group_members
from fineserve.runtime.state import EnginePhase
from fineserve.runtime.worker import port_in_use

from .deployed import NODE_OF, RayDeployed

RESTART_TIMEOUT_S = 600.0


def _engine(dep: RayDeployed, model: str):
    st = dep.node_state(NODE_OF[model])
    assert st is not None, f"no state for {NODE_OF[model]}"
    return st.engine(f"{model}-0")


def _gone(pid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    return group_members(pid)


def test_both_nodes_serve_through_one_gateway(dep: RayDeployed):
    for model in NODE_OF:
        status, body = dep.complete(model)
        assert status == 200, body
        assert body["model"] == model and body["usage"]["completion_tokens"] == 4
        e = _engine(dep, model)  # started by that node's agent, in its own run directory
        assert e.phase is EnginePhase.READY and e.proc is not None
    assert _engine(dep, "tiny-a").port == dep.engine_base
    assert _engine(dep, "tiny-b").port == dep.engine_base + 1
    driver = dep.run.read_state()
    assert driver is not None and driver.phase.value == "running"
    assert sorted(e.engine_id for e in driver.engines) == ["tiny-a-0", "tiny-b-0"]


def test_node_loss_is_reported_and_the_other_model_keeps_serving(dep: RayDeployed):
    lost = _engine(dep, "tiny-b")
    dep.cluster.kill_node("node1")
    dep.wait_for("model tiny-b has no replica left", 120)
    assert "node node1 lost" in dep.log_tail()
    status, body = dep.complete("tiny-a")
    assert status == 200, body
    # the engine dies with its agent (orphan guard); nothing of it stays unsupervised
    assert not _gone(lost.proc.pid, 120), dep.log_tail()
    deadline = time.monotonic() + 30  # a draining vLLM may answer one last request
    while (status := dep.complete("tiny-b")[0]) != 503 and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 503


def test_node_return_restarts_its_engines(dep: RayDeployed):
    before = _engine(dep, "tiny-b")
    dep.cluster.start_node("node1")
    dep.wait_for("node node1 is serving again", RESTART_TIMEOUT_S)
    body = dep.complete_eventually("tiny-b")
    assert body["model"] == "tiny-b"
    after = _engine(dep, "tiny-b")
    assert after.phase is EnginePhase.READY and after.proc is not None
    assert before.proc is not None and after.proc.pid != before.proc.pid
    assert dep.complete("tiny-a")[0] == 200


def test_stop_leaves_nothing_running(dep: RayDeployed):
    driver = dep.run.read_state()
    pids = [driver.gateway.pid] + [_engine(dep, m).proc.pid for m in NODE_OF]
    res = dep.stop_cli()
    assert res.returncode == 0, res.stderr
    assert dep.proc.wait(180) == 0
    assert "nothing left running" in dep.stderr.read_text()
    for pid in pids:
        assert not _gone(pid, 30), f"process group {pid} still has members"
    for node in ("node0", "node1"):
        st = dep.node_state(node)
        assert st.phase.value == "stopped"
        assert all(e.proc is None and e.phase is EnginePhase.STOPPED for e in st.engines)
    assert dep.run.read_state().phase.value == "stopped"
    for port in (dep.port, dep.engine_base, dep.engine_base + 1):
        assert not port_in_use("127.0.0.1", port)
    procs = dict(dep.cluster.procs)
    dep.cluster.stop()
    for node, proc in procs.items():
        assert not group_members(proc.pid), f"Ray node {node} left processes"
