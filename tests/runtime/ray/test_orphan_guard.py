"""The orphan guard: an engine (and what it starts) dies with the process that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from fineserve.runtime.procs import group_members, identify
from fineserve.runtime.ray.orphan_guard import guard_argv

PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from fineserve.runtime.ray.orphan_guard import guard_argv
    p = subprocess.Popen(guard_argv(("sleep", "300"), sys.executable, os.getpid()),
                         start_new_session=True)
    time.sleep(1.0)  # let it exec
    print(p.pid, flush=True)
    time.sleep(300)
""")


def test_engine_gets_sigterm_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    guard = identify(int(parent.stdout.readline()))
    members = group_members(guard.pid)
    assert guard.alive() and len(members) == 3  # the guard leads: it, its sentinel, the engine
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while group_members(guard.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_members(guard.pid)


def test_exit_status_is_the_engines():
    ok = subprocess.run(guard_argv(("sh", "-c", "exit 3"), sys.executable, os.getpid()))
    assert ok.returncode == 3
    killed = subprocess.run(guard_argv(("sh", "-c", "kill -9 $$"), sys.executable,
                                       os.getpid()))
    assert killed.returncode == -9


def test_refuses_to_start_when_the_parent_is_already_gone():
    res = subprocess.run(guard_argv(("echo", "started"), sys.executable, 1), text=True,
                         capture_output=True, timeout=30)
    assert res.returncode != 0 and "started" not in res.stdout
    assert "is gone" in res.stderr
