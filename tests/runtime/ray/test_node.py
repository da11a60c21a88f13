"""One node's part of a plan without Ray: options, engine binding, and the agent itself
(``NodeAgent`` is a plain class; Ray only makes it an actor) running stand-in engines."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from fineserve.runtime.options import RestartPolicy
from fineserve.runtime.procs import group_members
from fineserve.runtime.ray.agent import NodeAgent
from fineserve.runtime.ray.messages import AgentPhase
from fineserve.runtime.ray.node import HostLaunch, node_options, ray_added_env
from fineserve.runtime.state import EnginePhase, Mode

from ..helpers import demand, engine, options, plan
from .cluster import free_ports

STANDIN = Path(__file__).with_name("standin_vllm.py")


def _plan():
    a, b = demand("a"), demand("b")
    return plan([a, b], [engine("a-0", a, node="n0"), engine("b-0", b, node="n1", gpus=(1,))],
                nodes=("n0", "n1"))


def test_node_options_own_run_dir_ports_and_model_dirs(tmp_path):
    opts = options(tmp_path, model_dirs=(("a", Path("/m/a")), ("b", Path("/m/b"))),
                   api_keys=("k",), host="0.0.0.0", port=9000)
    n1 = node_options(opts, _plan(), "n1", 8200)
    assert n1.run_dir == tmp_path / "run" / "nodes" / "n1"
    assert (n1.node, n1.engine_port_base, n1.port, n1.api_keys) == ("n1", 8200, 0, ())
    assert n1.model_dirs == (("b", Path("/m/b")),)  # a is not served on n1


def test_ray_worker_variables_do_not_reach_engines():
    env = {"RAY_JOB_ID": "1", "RAY_RAYLET_PID": "7", "PYTHONBREAKPOINT": "ray.util.rpdb.x",
           "OMP_NUM_THREADS": "1", "HOME": "/h"}
    assert ray_added_env(env, {"HOME": "/h"}) == (
        "OMP_NUM_THREADS", "PYTHONBREAKPOINT", "RAY_JOB_ID", "RAY_RAYLET_PID")
    # the operator's own OMP_NUM_THREADS (the raylet has it too) is kept
    assert "OMP_NUM_THREADS" not in ray_added_env(env, {"OMP_NUM_THREADS": "1"})
    x = HostLaunch("a-0", "a", 8100, (0,), 50, 8, ("py",), (("X", "1"),), host="10.1.2.3",
                   drop_env=("RAY_JOB_ID",))
    full = x.full_env({"RAY_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "3", "HOME": "/h"})
    assert full == {"HOME": "/h", "X": "1"} and x.url == "http://10.1.2.3:8100"


def _wait(agent: NodeAgent, cond, timeout_s: float = 60.0, seen: list | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rep = agent.report()
        if seen is not None:
            seen += [ev.text for ev in rep.events]
        if cond(rep):
            return rep
        time.sleep(0.2)
    raise AssertionError(f"timed out; last report: {agent.report()}")


@pytest.fixture
def engine_python(tmp_path):
    py = tmp_path / "engine-python"
    py.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return str(py)


def test_agent_serves_restarts_and_stops_its_node(tmp_path, engine_python):
    base = free_ports(1)[0]
    opts = node_options(options(tmp_path, Mode.CPU, engine_python=engine_python,
                                restart=RestartPolicy(initial_backoff_s=0.2)),
                        _plan(), "n1", base)
    agent = NodeAgent(_plan(), opts, ip="127.0.0.1")
    try:
        assert agent.start() == ("127.0.0.1", "")
        seen: list[str] = []
        rep = _wait(agent, lambda r: r.phase is AgentPhase.SERVING, seen=seen)
        (e,) = rep.engines
        assert (e.engine_id, e.url, e.phase) == ("b-0", f"http://127.0.0.1:{base}",
                                                 EnginePhase.READY)
        assert any("CPU mode" in text for text in seen)
        assert agent.report().events == ()  # events go out once
        first = agent.deployment.state().engine("b-0").proc
        os.kill(first.pid, signal.SIGKILL)  # the guard dies: the engine group is restarted
        _wait(agent, lambda r: r.engines[0].restarts == 1
              and r.engines[0].phase is EnginePhase.READY, seen=seen)
        assert any("engine b-0 exited" in text for text in seen)
        assert not group_members(first.pid)  # nothing of the killed engine lingers
    finally:
        final = agent.stop(30)
    assert final.phase is AgentPhase.STOPPED
    assert final.engines[0].phase is EnginePhase.STOPPED
    now = agent.deployment.state().engine("b-0")
    assert now.proc is None and not agent.thread.is_alive()


def test_agent_start_failure_is_a_deploy_error_and_starts_nothing(tmp_path):
    from fineserve.runtime.errors import DeployError

    opts = node_options(options(tmp_path, Mode.CPU), _plan(), "n0", free_ports(1)[0])
    opts = opts.__class__(**{**{f: getattr(opts, f) for f in opts.__slots__},
                             "dummy_weights": False})
    agent = NodeAgent(_plan(), opts, ip="127.0.0.1")
    with pytest.raises(DeployError):
        agent.start()
    assert agent.thread is None and agent.stop().phase is AgentPhase.STOPPED
