"""Run an engine so that it, and everything it starts, stops when its agent dies.

Engines run in their own sessions (``procs.spawn``), so when a node agent's Ray worker is
killed (``ray.kill``, raylet gone, OOM) nothing would stop them: they would keep the node's
ports and GPU memory, unsupervised. The guard is what the runtime starts (so it leads the
engine's process group and carries the recorded identity); it asks the kernel for SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``), runs the engine as its child in the same group,
and on SIGTERM stops the whole group: the API server and what it started (vLLM's engine core
and workers, which outlive a killed API server). Ray itself SIGKILLs a dead worker's direct
children, which would take the guard out before it can act; so the guard also forks a
sentinel (a grandchild of the agent, which Ray leaves alone) that stops the group when the
guard dies. The runtime's own stop (SIGTERM to the group, SIGKILL after its timeout) works
unchanged. Exit status: the engine's, signals included.

    python -m fineserve.runtime.ray.orphan_guard PARENT_PID -- ENGINE_ARGV...
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from fineserve.runtime.procs import group_members

PR_SET_PDEATHSIG = 1
GRACE_S = 20.0  # SIGTERM -> SIGKILL for the group after the parent died (= stop_timeout_s)


def guard_argv(argv: tuple[str, ...], python: str, parent_pid: int) -> tuple[str, ...]:
    """``argv`` wrapped so that it runs under the guard (``python`` must import fineserve)."""
    return (python, "-m", "fineserve.runtime.ray.orphan_guard", str(parent_pid), "--", *argv)


def _kill_rest(sig: int) -> None:
    """``sig`` to every other member of our group (the engine and what it started)."""
    me = os.getpid()
    for pid in group_members(os.getpgid(0)):
        if pid != me:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _stop_group() -> None:
    _kill_rest(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    me = os.getpid()
    while [p for p in group_members(os.getpgid(0)) if p != me] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    _kill_rest(signal.SIGKILL)


def _sentinel(libc: ctypes.CDLL, guard: int) -> None:
    """Forked from the guard: when the guard dies, stop the group; on a normal stop (the
    group's SIGTERM while the guard lives) just leave."""
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    got: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not got and os.getppid() == guard:
        time.sleep(0.5)
    if os.getppid() != guard:
        _stop_group()
    os._exit(0)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m fineserve.runtime.ray.orphan_guard PARENT_PID -- ARGV...")
    parent, argv = int(args[0]), args[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        sys.exit(f"orphan_guard: prctl failed (errno {ctypes.get_errno()})")
    if os.getppid() != parent:  # the agent died before prctl: do not start at all
        sys.exit("orphan_guard: the agent that started this engine is gone")
    if os.getpgid(0) != os.getpid():  # never signal a group we do not lead
        os.setpgid(0, 0)
    stopping: list[float] = []

    def on_term(_sig: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            _kill_rest(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child = subprocess.Popen(argv)  # our group: the runtime made us its leader
    guard = os.getpid()
    if os.fork() == 0:
        _sentinel(libc, guard)
    while child.poll() is None:
        if stopping and time.monotonic() - stopping[0] > GRACE_S:
            _kill_rest(signal.SIGKILL)
        time.sleep(0.2)
    _kill_rest(signal.SIGKILL)  # what the engine left behind (its engine core...)
    code = child.returncode
    if code < 0:  # report the engine's signal as ours, as if there were no guard
        if -code in (signal.SIGTERM, signal.SIGINT):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
