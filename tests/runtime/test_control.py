"""Run-directory state, `status`/`stop` of dead and live deployments, the CLI's errors."""

from __future__ import annotations

import os
import sys

import pytest
from typer.testing import CliRunner

from fineserve.cli.deploy_cmd import app
from fineserve.runtime import procs
from fineserve.runtime.control import cleanup_stale, read_status, stop_run
from fineserve.runtime.errors import DeployError
from fineserve.runtime.state import (
    DeployState,
    EngineRecord,
    Mode,
    MpsRecord,
    Phase,
    ProcRecord,
    RunDir,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _state(run: RunDir, deploy: ProcRecord, engine_proc: ProcRecord | None) -> DeployState:
    st = DeployState(mode=Mode.CPU, phase=Phase.RUNNING, deploy=deploy,
                     gateway_url="http://127.0.0.1:1", engines=[
                         EngineRecord(engine_id="a-0", model="a", port=1, gpus=[0], sm_pct=50,
                                      log="x.log", proc=engine_proc)],
                     mps=[MpsRecord(group="gpu0", gpus=[0], uuids=["GPU-x"], pipe_dir="/nope",
                                    log_dir="/nope", started_by_us=False)])
    run.create()
    run.write_state(st)
    return st


def test_state_round_trips(tmp_path):
    run = RunDir(tmp_path)
    st = _state(run, ProcRecord(pid=1, start_ticks=2), None)
    assert run.read_state() == st


def test_corrupt_state_is_one_line(tmp_path):
    run = RunDir(tmp_path)
    run.create()
    run.state.write_text("{not json")
    with pytest.raises(DeployError, match="unreadable deploy state"):
        run.read_state()


def test_stop_after_a_dead_deploy_cleans_its_engine(tmp_path):
    run = RunDir(tmp_path)
    child = procs.spawn(SLEEP, dict(os.environ), tmp_path / "e.log")
    eng = procs.identify(child.pid)
    dead = ProcRecord(pid=child.pid, start_ticks=eng.start_ticks + 7)  # not a live process
    _state(run, dead, ProcRecord.of(eng))
    msg = stop_run(tmp_path)
    assert msg == "no deployment was running; cleaned up engine a-0"
    child.wait(10)
    st = run.read_state()
    assert st.phase is Phase.STOPPED and st.engines[0].proc is None
    assert stop_run(tmp_path) == "no deployment was running; nothing left to clean up"


def test_recycled_engine_pid_is_not_touched(tmp_path):
    run = RunDir(tmp_path)
    child = procs.spawn(SLEEP, dict(os.environ), tmp_path / "e.log")
    me = procs.identify(child.pid)
    try:
        other = ProcRecord(pid=child.pid, start_ticks=me.start_ticks - 1)  # "someone else"
        _state(run, ProcRecord(pid=child.pid, start_ticks=0), other)
        assert "nothing left" in stop_run(tmp_path)
        assert child.poll() is None
    finally:
        procs.terminate(me, 5, child)


def test_live_deploy_owns_its_run_dir(tmp_path):
    run = RunDir(tmp_path)
    child = procs.spawn(SLEEP, dict(os.environ), tmp_path / "d.log")
    try:
        _state(run, ProcRecord.of(procs.identify(child.pid)), None)
        with pytest.raises(DeployError, match="a deployment is already running"):
            cleanup_stale(run)
        s = read_status(tmp_path)
        assert s.deploy_alive and not s.engines[0].alive and not s.gateway_alive
        assert stop_run(tmp_path, wait_s=10).startswith("stopped the deployment")
        assert child.wait(5) == -15
    finally:
        procs.terminate(procs.identify(child.pid), 1, child)


def test_status_without_state(tmp_path):
    with pytest.raises(DeployError, match="no deployment state here"):
        read_status(tmp_path)


runner = CliRunner()


def test_cli_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["deploy", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "error:" in res.output
    res = runner.invoke(app, ["deploy", "x.yaml", "--cpu", "--no-mps"])
    assert res.exit_code == 2 and "choose one" in res.output
    res = runner.invoke(app, ["deploy", "x.yaml", "--model-dir", "broken"])
    assert res.exit_code == 2 and "expected NAME=PATH" in res.output
    res = runner.invoke(app, ["status", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no deployment state here" in res.output


def test_cli_missing_model_dir(tmp_path):
    from fineserve.planner.planfile import save_plan
    from fineserve.testing.tiny_model import tiny_cpu_plan, write_tiny_model

    p = tmp_path / "plan.yaml"
    save_plan(tiny_cpu_plan({"t": write_tiny_model(tmp_path / "t")}), p)
    res = runner.invoke(app, ["deploy", str(p), "--cpu", "--run-dir", str(tmp_path / "run"),
                              "--port", "0"])
    assert res.exit_code == 2
    assert "model t: no weights folder" in res.output
    assert not (tmp_path / "run" / "logs").exists() or not any(
        (tmp_path / "run" / "logs").iterdir())
