"""Time-sliced GPU sharing (no MPS) for the simulator's prediction of configuration (a).

Without MPS the GPU runs one process's kernels at a time and switches between the processes
that have work, so a step that starts while k other engines on its GPU are mid-step takes
about (1 + k) times as long as alone (each step at 100% SMs: ``sm_pct`` 100 in the plan).
The simulator models sharing through the object it calls around every step (``begin`` /
``end``, as ``fineserve.sim.interference.HbmShare`` for MPS bandwidth interference); this
module provides one with time-slicing arithmetic and runs the simulator with it.

Where the simulator has ``SimOptions.sharing`` (the proposed ``fineserve/sim/timeslice.py``
patch, the same model), ``simulate_time_sliced`` uses it; until then it swaps the class the
simulator builds for the duration of one call.
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

from fineserve.planner.schema import Plan
from fineserve.profiles.latency import LatencyModel
from fineserve.sim import cluster
from fineserve.sim.cluster import SimOptions, SimResult, simulate
from fineserve.sim.interference import InterferenceParams
from fineserve.workload.trace import Trace


class TimeSliceShare:
    """Steps in flight per GPU; a step is stretched by the number of engines sharing it."""

    def __init__(self, gpus) -> None:
        self.active = dict.fromkeys(gpus, 0)

    def begin(self, gpus: tuple[int, ...], seconds: float, step_bytes: float, decoding: bool
              ) -> tuple[float, float]:
        """Register a step that takes ``seconds`` alone; returns (stretched seconds, a token
        for ``end``). TP engines take their busiest GPU."""
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


def simulate_time_sliced(plan: Plan, trace: Trace, latency: LatencyModel,
                         options: SimOptions) -> SimResult:
    """``fineserve.sim.cluster.simulate`` with time slicing instead of MPS interference."""
    if "sharing" in SimOptions.__dataclass_fields__:
        opts = replace(options, interference=None, sharing="time-sliced")
        return simulate(plan, trace, latency, options=opts)
    opts = SimOptions(token_budget=options.token_budget, kv=options.kv, pool=options.pool,
                      interference=InterferenceParams(source="time slicing"),
                      scheduler=options.scheduler, tick_s=options.tick_s,
                      max_samples=options.max_samples)
    with mock.patch.object(cluster, "HbmShare", lambda peaks, _params: TimeSliceShare(peaks)):
        return simulate(plan, trace, latency, options=opts)
