"""Process identity and group termination with real (tiny) processes."""

from __future__ import annotations

import os
import signal
import sys
import time

from fineserve.runtime import procs
from fineserve.runtime.procs import ProcId

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# a parent that starts a child in its group, then ignores SIGTERM
STUBBORN = [sys.executable, "-c",
            "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('up', flush=True); time.sleep(60)"]


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_identity_detects_a_recycled_pid(tmp_path):
    p = procs.spawn(SLEEPER, dict(os.environ), tmp_path / "a.log")
    me = procs.identify(p.pid)
    assert me.alive() and me.start_ticks > 0
    impostor = ProcId(p.pid, me.start_ticks + 1)  # same pid, different start time
    assert not impostor.alive()
    assert procs.signal_group(impostor, signal.SIGTERM) is False
    assert p.poll() is None  # untouched
    assert procs.terminate(me, 5.0, p) is False
    assert p.returncode == -signal.SIGTERM


def test_child_leads_its_own_group(tmp_path):
    p = procs.spawn(SLEEPER, dict(os.environ), tmp_path / "b.log")
    try:
        assert os.getpgid(p.pid) == p.pid != os.getpgid(0)
    finally:
        procs.terminate(procs.identify(p.pid), 5.0, p)


def test_sigkill_after_timeout_takes_the_whole_group(tmp_path):
    log = tmp_path / "c.log"
    p = procs.spawn(STUBBORN, dict(os.environ), log)
    me = procs.identify(p.pid)
    assert _wait_for(lambda: "up" in log.read_text())
    members = procs.group_members(p.pid)
    assert len(members) == 2
    assert procs.terminate(me, 0.5, p) is True  # ignored SIGTERM -> killed
    assert _wait_for(lambda: not procs.group_members(p.pid))


def test_leftovers_of_a_killed_leader_are_cleaned(tmp_path):
    log = tmp_path / "d.log"
    p = procs.spawn(STUBBORN, dict(os.environ), log)
    me = procs.identify(p.pid)
    assert _wait_for(lambda: "up" in log.read_text())
    os.kill(p.pid, signal.SIGKILL)  # like `kill -9` of vLLM's API server
    p.wait()
    assert procs.group_members(p.pid)  # its child lives on
    procs.terminate(me, 1.0, p)
    assert _wait_for(lambda: not procs.group_members(p.pid))


def test_output_goes_to_the_log(tmp_path):
    log = tmp_path / "e.log"
    p = procs.spawn([sys.executable, "-c", "print('hello log')"], dict(os.environ), log)
    p.wait(10)
    assert "hello log" in log.read_text()
