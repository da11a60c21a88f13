"""Engine worker processes: nothing they start outlives them, and the kill margins hold."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from fineserve.profiles.measure.procs import KILL_GRACE_S, kill_group, run_worker
from fineserve.profiles.measure.runner import SHUTDOWN_S
from fineserve.profiles.measure.waves import WaveMember, run_wave
from tests.profiles.measure.standin import stand_in_python

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "profile_h100.py"

# a worker whose engine core (same process group) ignores SIGTERM, as vLLM's may
WORKER = r'''
import os, subprocess, sys, time
core = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1], "a") as f:
    f.write(f"{core.pid}\n")
if sys.argv[2] == "exit":
    time.sleep(0.5)  # the core has set its handler
    sys.exit(0)
time.sleep(600)
'''


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_lines(path: Path, n: int) -> list[int]:
    for _ in range(300):  # bounded wait for the cores to be up (not a timing assertion)
        if path.exists() and len(path.read_text().split()) >= n:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # their SIGTERM handlers set
    return [int(x) for x in path.read_text().split()]


def start(tmp_path: Path, mode: str, pids: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(pids), mode],
                            start_new_session=True)


def test_kill_group_kills_what_ignores_sigterm_after_the_worker_exits(tmp_path):
    pids = tmp_path / "pids"
    proc = start(tmp_path, "stay", pids)
    (core,) = wait_for_lines(pids, 1)
    kill_group(proc)
    assert proc.poll() is not None
    for _ in range(100):  # SIGKILL is delivered asynchronously
        if not alive(core):
            break
        time.sleep(0.05)
    assert not alive(core)


def test_a_worker_that_exits_takes_its_group_with_it(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    monkeypatch.setenv("CORE_PIDS", str(pids))
    python = stand_in_python(tmp_path, "import os, sys\nsys.argv[1:] = [os.environ['CORE_PIDS'], "
                             "'exit']\n" + WORKER)
    job = tmp_path / "job.json"
    assert run_worker(str(python), "profile", job, dict(os.environ), tmp_path / "log", 4e9) == 0
    (core,) = [int(x) for x in pids.read_text().split()]
    for _ in range(100):
        if not alive(core):
            break
        time.sleep(0.05)
    assert not alive(core)


TERM_MARK = r'''
import os, signal, sys, time
from pathlib import Path
def on_term(signum, frame):
    Path(sys.argv[1]).write_text("")
    time.sleep(1.0)  # an engine shutting down
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
Path(sys.argv[2]).write_text("")
time.sleep(600)
'''


def test_a_wave_signals_every_worker_before_waiting_for_any(tmp_path):
    control = tmp_path / "control"
    tags = ("a", "b", "c")
    seen: list[set[str]] = []

    def member(tag: str) -> WaveMember:
        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-c", TERM_MARK,
                                     str(tmp_path / f"term-{tag}"),
                                     str(control / f"{tag}.ready")], start_new_session=True)
        return WaveMember(tag, True, spawn)

    def kill(proc: subprocess.Popen[bytes]) -> None:
        if not seen:  # the first wait: has every worker had its SIGTERM?
            for _ in range(100):
                if all((tmp_path / f"term-{t}").exists() for t in tags):
                    break
                time.sleep(0.05)
            seen.append({t for t in tags if (tmp_path / f"term-{t}").exists()})
        kill_group(proc)

    # out of time right after they are up: the wave ends in its finally
    result = run_wave([member(t) for t in tags], control, time.time() + 30, kill,
                      turn_fits=lambda: False)
    assert result.out_of_time and result.measured == ()
    assert seen == [set(tags)]


def test_a_shards_engines_are_killed_before_the_parent_kills_the_shard():
    spec = importlib.util.spec_from_file_location("profile_h100", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for budget, elapsed in ((460.0, 10.0), (560.0, 40.0), (300.0, 0.0)):
        left = module.child_budget(budget, elapsed)
        # the shard's t_end: SIGTERM to its engines, SIGKILL KILL_GRACE_S later (+10 s wait)
        engines_gone = elapsed + left + KILL_GRACE_S + 10
        assert engines_gone <= budget - 5  # the parent's kill_at
        assert left > SHUTDOWN_S
