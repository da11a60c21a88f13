"""Time-sliced GPU sharing (no MPS): the sharing model of a deployment run with --no-mps.

Without MPS a GPU runs one process's kernels at a time and switches between the processes
that have work, so a step that starts while k other engines on its GPU are mid-step takes
about (1 + k) times as long as alone (each engine's latency is its full-GPU latency). Same
interface as ``interference.HbmShare``: engines call ``begin`` / ``end`` around each step;
the stretch is fixed at step start (quasi-static), TP engines take their busiest GPU.
"""

from __future__ import annotations

from collections.abc import Iterable


class TimeSliceShare:
    """Steps in flight per GPU; a step is stretched by the number of engines sharing it."""

    def __init__(self, gpus: Iterable[int]) -> None:
        self.active = dict.fromkeys(gpus, 0)

    def begin(self, gpus: tuple[int, ...], seconds: float, step_bytes: float, decoding: bool,
              alone_s: float | None = None) -> tuple[float, float]:
        """Register a step that takes ``seconds`` alone; returns (stretched seconds, the
        token to hand back to ``end``)."""
        others = max(self.active[g] for g in gpus)
        for g in gpus:
            self.active[g] += 1
        return seconds * (1 + others), 1.0

    def end(self, gpus: tuple[int, ...], demand: float) -> None:
        for g in gpus:
            self.active[g] -= 1

    def check_integrity(self) -> None:
        for g, n in self.active.items():
            assert n >= 0, (g, n)
