"""The deploy loop on a two-GPU plan with a TP=2 engine: one MPS daemon for the GPU group,
started before the engines and quit at shutdown, and every engine started with its group's
pipe and its own device numbers.

The engines are stand-in processes (fake_engine.py) and nvidia-cuda-mps-control is a small
script that keeps a log; the command lines and environments are the real ones from prepare.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from fineserve.runtime.deploy import Deployment
from fineserve.runtime.mps import MpsBinaries
from fineserve.runtime.prepare import prepare
from fineserve.runtime.state import Mode, Phase, RunDir

from .helpers import free_port_range, options
from .test_deploy_loop import FAKE, Quiet, _run_in_thread, _wait, running  # noqa: F401
from .test_multigpu import _tp2_plan

CONTROL = """#!/bin/sh
# stand-in nvidia-cuda-mps-control: '-d' creates the control socket file, 'quit' removes it
if [ "$1" = "-d" ]; then
  echo "start $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
cmd=$(cat)
[ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] || exit 1
case "$cmd" in quit*)
  echo "quit $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
  rm -f "$CUDA_MPS_PIPE_DIRECTORY/control";;
esac
exit 0
"""
KEYS = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
        "NCCL_NVLS_ENABLE")
ENGINE = f"""import json, os, runpy, sys
with open(sys.argv[2], "w") as f:
    json.dump({{k: os.environ.get(k) for k in {KEYS!r}}}, f)
sys.argv = [{FAKE!r}, sys.argv[1]]
runpy.run_path({FAKE!r}, run_name="__main__")
"""


def _binaries(tmp_path: Path) -> MpsBinaries:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(CONTROL)
    control.chmod(0o755)
    return MpsBinaries(control, bin_dir / "nvidia-cuda-mps-server")


def test_tp2_plan_runs_one_group_daemon_and_quits_it(tmp_path, monkeypatch, running):  # noqa: F811
    log = tmp_path / "mps.log"
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    base = free_port_range(5, first=33000, step=59)
    opts = options(tmp_path, Mode.MPS, port=base, engine_port_base=base + 1, kv_pool=False,
                   health_interval_s=0.2, startup_timeout_s=30, stop_timeout_s=5)
    p = _tp2_plan()
    real = prepare(p, opts, dry_run=True)  # the real launches, as a 2-GPU host gets them
    (tmp_path / "engine.py").write_text(ENGINE)
    launches = tuple(replace(x, argv=(sys.executable, str(tmp_path / "engine.py"), str(x.port),
                                      str(tmp_path / f"env-{x.engine_id}.json")))
                     for x in real.launches)
    prep = replace(real, launches=launches, mps_binaries=_binaries(tmp_path))
    dep = Deployment(p, opts, Quiet(), prepared=prep)
    run = RunDir(opts.run_dir)
    t, errors = _run_in_thread(dep, running)
    assert _wait(lambda: (s := run.read_state()) is not None and s.phase is Phase.RUNNING), \
        errors
    pipe = prep.mps_groups[0].pipe_dir
    assert log.read_text().splitlines() == [f"start GPU-planned-0,GPU-planned-1 {pipe}"]
    st = run.read_state()
    assert [(m.group, m.gpus, m.started_by_us) for m in st.mps] == [("gpu0-1", [0, 1], True)]
    assert {e.engine_id: e.mps_group for e in st.engines} == {
        "big-0": "gpu0-1", "chat-0": "gpu0-1", "chat-1": "gpu0-1"}
    env = {e: json.loads((tmp_path / f"env-{e}.json").read_text())
           for e in ("big-0", "chat-0", "chat-1")}
    assert {e["CUDA_MPS_PIPE_DIRECTORY"] for e in env.values()} == {str(pipe)}
    assert [env[e]["CUDA_VISIBLE_DEVICES"] for e in ("big-0", "chat-0", "chat-1")] == [
        "0,1", "0", "1"]
    assert env["big-0"]["NCCL_NVLS_ENABLE"] == "0"
    assert env["big-0"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    dep.request_stop()
    t.join(60)
    assert not t.is_alive() and not errors
    assert log.read_text().splitlines()[-1] == f"quit {pipe}"
    assert not (pipe / "control").exists()
    assert run.read_state().phase is Phase.STOPPED
