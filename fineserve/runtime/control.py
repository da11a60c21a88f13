"""``fineserve status`` and ``fineserve stop``: act on a run directory from another process.

Stop asks the foreground deploy to shut down (SIGTERM: it drains the gateway, stops engines
and its MPS daemons in order) and waits; when the deploy is already dead it cleans up what
it left instead. Either way only recorded processes whose start time still matches are
signalled, and only MPS daemons the record says we started are quit.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from fineserve.runtime import procs
from fineserve.runtime.errors import DeployError
from fineserve.runtime.mps import MpsController, MpsGroup, find_binaries
from fineserve.runtime.state import DeployState, EnginePhase, EngineRecord, Phase, RunDir
from fineserve.runtime.worker import http_ok


@dataclass(frozen=True, slots=True)
class EngineStatus:
    record: EngineRecord
    alive: bool
    healthy: bool


@dataclass(frozen=True, slots=True)
class RunStatus:
    run_dir: Path
    state: DeployState
    deploy_alive: bool
    gateway_alive: bool
    gateway_healthy: bool
    engines: tuple[EngineStatus, ...]


def _state(run: RunDir) -> DeployState:
    state = run.read_state()
    if state is None:
        raise DeployError(f"{run.root}: no deployment state here",
                          hint="pass the --run-dir that fineserve deploy used")
    return state


def read_status(run_dir: str | Path) -> RunStatus:
    """Recorded state plus what is true now (alive processes, /health answers)."""
    run = RunDir(run_dir)
    st = _state(run)
    deploy_alive = st.deploy.proc_id().alive()
    engines = []
    for e in st.engines:
        alive = e.proc is not None and e.proc.proc_id().alive()
        healthy = alive and http_ok(f"http://127.0.0.1:{e.port}/health", 1.0)
        engines.append(EngineStatus(e, alive, healthy))
    gw_alive = st.gateway is not None and st.gateway.proc_id().alive()
    gw_healthy = gw_alive and http_ok(f"{st.gateway_url.rstrip('/')}/health", 1.0)
    return RunStatus(run.root, st, deploy_alive, gw_alive, gw_healthy, tuple(engines))


def stop_run(run_dir: str | Path, wait_s: float = 120.0) -> str:
    """Stop the deployment of ``run_dir``; returns what was done (one line)."""
    run = RunDir(run_dir)
    st = _state(run)
    deploy = st.deploy.proc_id()
    if deploy.alive():
        os.kill(deploy.pid, signal.SIGTERM)  # the deploy shuts its children down in order
        deadline = time.monotonic() + wait_s
        while deploy.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not deploy.alive():
            left = cleanup(run, _state(run))
            return f"stopped the deployment (pid {deploy.pid})" + (
                f"; also cleaned up {left}" if left else "")
        os.kill(deploy.pid, signal.SIGKILL)
        left = cleanup(run, _state(run))
        return (f"the deployment (pid {deploy.pid}) did not stop within {wait_s:.0f} s; "
                f"killed it and cleaned up {left or 'nothing'}")
    left = cleanup(run, st)
    return f"no deployment was running; cleaned up {left}" if left else \
        "no deployment was running; nothing left to clean up"


def cleanup_stale(run: RunDir) -> None:
    """Before a deploy: refuse a run dir a live deployment owns; clean up after a dead one."""
    st = run.read_state()
    if st is None:
        return
    if st.deploy.proc_id().alive() and st.deploy.pid != os.getpid():
        raise DeployError(f"{run.root}: a deployment is already running (pid {st.deploy.pid})",
                          hint=f"fineserve stop --run-dir {run.root}, or use another --run-dir")
    cleanup(run, st)


def cleanup(run: RunDir, st: DeployState, timeout_s: float = 20.0) -> str:
    """Stop recorded processes that still run and MPS daemons we started; '' if none."""
    done = []
    if st.gateway is not None and st.gateway.proc_id().alive():
        procs.terminate(st.gateway.proc_id(), timeout_s)
        done.append("gateway")
    for e in st.engines:
        if e.proc is not None and e.proc.proc_id().alive():
            procs.terminate(e.proc.proc_id(), timeout_s)
            done.append(f"engine {e.engine_id}")
    ours = [m for m in st.mps if m.started_by_us]
    if ours:
        try:
            ctl = MpsController(find_binaries())
        except DeployError:
            ctl = None
        for m in ours:
            group = MpsGroup(m.group, tuple(m.gpus), tuple(m.uuids), Path(m.pipe_dir),
                             Path(m.log_dir))
            if ctl is not None and ctl.is_running(group):
                ctl.stop(group)
                done.append(f"MPS daemon {m.group}")
    stopped = st.model_copy(update={
        "phase": Phase.STOPPED if st.phase is not Phase.FAILED else Phase.FAILED,
        "gateway": None,
        "engines": [e.model_copy(update={
            "proc": None,
            "phase": e.phase if e.phase is EnginePhase.FAILED else EnginePhase.STOPPED})
            for e in st.engines],
        "mps": [m.model_copy(update={"started_by_us": False}) for m in st.mps]})
    run.write_state(stopped)
    return ", ".join(done)

