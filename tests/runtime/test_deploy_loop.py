"""The deploy loop with stand-in engine processes: start, crash -> restart scope, stop."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fineserve.runtime.deploy import Deployment
from fineserve.runtime.engine_args import EngineLaunch
from fineserve.runtime.errors import EngineStartError
from fineserve.runtime.gateway_config import build_gateway_config
from fineserve.runtime.options import RestartPolicy
from fineserve.runtime.prepare import Prepared
from fineserve.runtime.procs import group_members
from fineserve.runtime.state import EnginePhase, Mode, Phase, RunDir

from .helpers import demand, engine, free_port_range, options, plan

FAKE = str(Path(__file__).with_name("fake_engine.py"))


class Quiet:
    def __init__(self):
        self.lines: list[str] = []

    def note(self, text):
        self.lines.append(text)

    warn = note

    def progress(self, rows):
        pass


def _setup(tmp_path, mode: Mode, argv_for=None):
    a, b = demand("a"), demand("b")
    p = plan([a, b], [engine("a-0", a), engine("b-0", b)])
    base = free_port_range(3, first=31000, step=53)
    opts = options(tmp_path, mode, port=base, engine_port_base=base + 1,
                   restart=RestartPolicy(initial_backoff_s=0.2, max_restarts=3),
                   health_interval_s=0.2, startup_timeout_s=30, stop_timeout_s=5)
    launches = []
    for i, e in enumerate(p.engines):
        argv = (argv_for or (lambda port: (sys.executable, FAKE, str(port))))(base + 1 + i)
        launches.append(EngineLaunch(e.engine_id, e.model, base + 1 + i, e.gpus, e.sm_pct,
                                     e.max_batch, tuple(argv), ()))
    group_of = {"a-0": "gpu0", "b-0": "gpu0"}
    prep = Prepared(tuple(launches), (), group_of, None,
                    build_gateway_config(p, launches, opts), ())
    return p, opts, prep


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def running():
    """Deployments started by a test; stopped (and joined) even when the test fails."""
    started: list[tuple[Deployment, threading.Thread]] = []
    yield started
    for dep, t in started:
        dep.request_stop()
        t.join(60)


def _run_in_thread(dep: Deployment, running: list):
    errors: list[BaseException] = []

    def target():
        try:
            dep.run()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    running.append((dep, t))
    return t, errors


@pytest.mark.parametrize("mode,both", [(Mode.MPS, True), (Mode.CPU, False)])
def test_crash_restarts_its_fault_domain_then_stop_cleans_up(tmp_path, mode, both, running):
    p, opts, prep = _setup(tmp_path, mode)
    dep = Deployment(p, opts, Quiet(), prepared=prep)
    run = RunDir(opts.run_dir)
    t, errors = _run_in_thread(dep, running)
    assert _wait(lambda: (s := run.read_state()) is not None and s.phase is Phase.RUNNING), \
        errors
    st = run.read_state()
    assert st.gateway is not None and all(e.phase is EnginePhase.READY for e in st.engines)
    first = {e.engine_id: e.proc.pid for e in st.engines}
    os.kill(first["a-0"], signal.SIGKILL)

    def restarted():
        s = run.read_state()
        return all(e.phase is EnginePhase.READY for e in s.engines) and \
            s.engine("a-0").restarts == 1
    assert _wait(restarted)
    st = run.read_state()
    assert st.engine("a-0").last_exit == -signal.SIGKILL
    assert st.engine("b-0").restarts == (1 if both else 0)  # MPS: same group restarts too
    assert (st.engine("b-0").proc.pid != first["b-0"]) is both
    dep.request_stop()
    t.join(60)
    assert not t.is_alive() and not errors
    final = run.read_state()
    assert final.phase is Phase.STOPPED and final.gateway is None
    for pid in [*first.values(), *(e.proc.pid for e in st.engines), st.gateway.pid]:
        assert not group_members(pid)


def test_engine_that_exits_while_starting_is_one_error_and_nothing_runs(tmp_path):
    def argv(port):
        return (sys.executable, "-c", "import sys; print('bad weights'); sys.exit(3)")
    p, opts, prep = _setup(tmp_path, Mode.CPU, argv)
    dep = Deployment(p, opts, Quiet(), prepared=prep)
    with pytest.raises(EngineStartError, match="exited with code 3 while starting") as exc:
        dep.run()
    assert "bad weights" in str(exc.value.hint)
    st = RunDir(opts.run_dir).read_state()
    assert st.phase is Phase.FAILED and "exited with code 3" in st.error
    assert all(e.proc is None for e in st.engines)


def test_give_up_after_budget(tmp_path, running):
    p, opts, prep = _setup(tmp_path, Mode.CPU)
    opts = replace(opts, restart=RestartPolicy(initial_backoff_s=0.1, max_restarts=1))
    obs = Quiet()
    dep = Deployment(p, opts, obs, prepared=prep)
    run = RunDir(opts.run_dir)
    t, errors = _run_in_thread(dep, running)
    assert _wait(lambda: (s := run.read_state()) is not None and s.phase is Phase.RUNNING)
    for _ in range(2):
        assert _wait(lambda: (e := run.read_state().engine("a-0")).proc is not None
                     and e.phase is EnginePhase.READY)
        os.kill(run.read_state().engine("a-0").proc.pid, signal.SIGKILL)
        time.sleep(0.5)
    assert _wait(lambda: run.read_state().engine("a-0").phase is EnginePhase.FAILED)
    assert any("giving up" in line for line in obs.lines)
    assert run.read_state().engine("b-0").phase is EnginePhase.READY  # the rest serves on
    dep.request_stop()
    t.join(60)
    assert not errors


def test_kv_pool_ledgers_exist_while_engines_run_and_go_at_shutdown(tmp_path, running):
    """Engines on a KV pool find their GPU's ledger when they start; nothing is left after."""
    from fineserve.runtime.kvslab.deploy_pool import PLUGIN_DIST, GpuPool, plugin_path_dir
    from fineserve.runtime.kvslab.ledger import Ledger

    ledger = str(tmp_path / "pool-gpu0.json")
    check = ("import os, runpy, sys; from fineserve.runtime.kvslab.ledger import Ledger; "
             f"assert Ledger({ledger!r}).snapshot().pool_bytes == 1 << 30; "
             f"sys.argv = [{FAKE!r}, sys.argv[1]]; runpy.run_path({FAKE!r}, run_name='__main__')")
    p, opts, prep = _setup(tmp_path, Mode.MPS, lambda port: (sys.executable, "-c", check,
                                                             str(port)))
    prep = replace(prep, kv_pools=(GpuPool(0, ledger, 1 << 30, ("a-0", "b-0")),))
    Ledger.create(ledger, 2 << 30)  # stale, from a deployment that died: replaced
    dep = Deployment(p, opts, Quiet(), prepared=prep)
    run = RunDir(opts.run_dir)
    t, errors = _run_in_thread(dep, running)
    assert _wait(lambda: (s := run.read_state()) is not None and s.phase is Phase.RUNNING), \
        errors
    assert (plugin_path_dir(opts.run_dir) / PLUGIN_DIST / "entry_points.txt").is_file()
    dep.request_stop()
    t.join(60)
    assert not t.is_alive() and not errors
    assert not os.path.exists(ledger) and not os.path.exists(ledger + ".lock")
