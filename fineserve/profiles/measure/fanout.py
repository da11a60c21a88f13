"""The profiler's one child process per GPU (bench/profile_h100.py), side by side.

Each child cleans up after itself (its engines, its MPS daemon) when it gets SIGTERM: at the
deadline, or when the parent is interrupted, every running child gets SIGTERM at once and,
``STOP_GRACE_S`` later, SIGKILL. The runner is fineserve/runtime/children.py (shared with the
end-to-end lanes); this module holds only the profiler's stop policy.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import TextIO

from fineserve.profiles.measure.procs import KILL_GRACE_S
from fineserve.runtime import children as _children
from fineserve.runtime.children import Child

__all__ = ["GPU_STOP", "Child", "run_children"]

# a child's own cleanup SIGTERMs its worker groups (sessions of their own: our SIGKILL of the
# child would miss them) and SIGKILLs them KILL_GRACE_S later; our SIGKILL must come after
# that, or a worker stuck in a CUDA call outlives a child killed mid-cleanup
STOP_GRACE_S = KILL_GRACE_S + 10.0
GPU_STOP = _children.Stop(signal.SIGTERM, STOP_GRACE_S)


def run_children(children: Sequence[Child], kill_at: float,
                 sink: TextIO | None = None) -> tuple[int, ...]:  # fmt: skip
    """Start every child, forward their output to ``sink`` (stdout) as ``[name] line``, wait
    for all, stopping those still running at ``kill_at`` (epoch); returns their exit codes
    (negative: killed by that signal)."""
    return _children.run_children(children, kill_at, sink, GPU_STOP)
