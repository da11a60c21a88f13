"""Exec an engine so that it gets SIGTERM when the agent that started it dies.

Engines run in their own sessions (``procs.spawn``), so when a node agent's Ray worker is
killed (``ray.kill``, raylet gone, OOM) nothing would stop them: they would keep the node's
ports and GPU memory, unsupervised. ``PR_SET_PDEATHSIG`` survives ``execve``, so this stub
sets it and then becomes the engine (same pid, same start time: the runtime's process identity
still holds). SIGTERM lets vLLM stop its engine core itself; anything left over is killed by
the next agent on that host, which cleans up the node's run directory before starting.

    python -m fineserve.runtime.ray.orphan_guard PARENT_PID -- ENGINE_ARGV...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guard_argv(argv: tuple[str, ...], python: str, parent_pid: int) -> tuple[str, ...]:
    """``argv`` wrapped so that it runs under the guard (``python`` must import fineserve)."""
    return (python, "-m", "fineserve.runtime.ray.orphan_guard", str(parent_pid), "--", *argv)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m fineserve.runtime.ray.orphan_guard PARENT_PID -- ARGV...")
    parent, argv = int(args[0]), args[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        sys.exit(f"orphan_guard: prctl failed (errno {ctypes.get_errno()})")
    if os.getppid() != parent:  # the agent died before prctl: do not start at all
        sys.exit("orphan_guard: the agent that started this engine is gone")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
