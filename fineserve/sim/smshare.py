"""SM contention under MPS oversubscription: engines whose SM shares sum past 100%.

MPS caps each client at its ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` but does not reserve the
SMs, so a plan may give shares that sum to more than 100% (planner ``sm_oversubscription``):
an engine that idles lends its SMs. When several engines compute at once and their shares
sum past 100%, they cannot all have them. The model: a step that starts while steps of
shares ``s_1 .. s_k`` are in flight on its GPU runs at an effective share

    s_eff = s x min(1, 100 / (s + s_1 + ... + s_k))

- each busy engine gets the SMs in proportion to its cap - and its latency is the latency
model's at ``s_eff``, which keeps what the profile says about how much of a step is compute
(a memory-bound decode step loses little, a large batch's per-sequence term in proportion).
Quasi-static, like ``interference.HbmShare``: fixed at step start. A plan whose shares fit
in 100% per GPU is never touched (``needed``).
"""

from __future__ import annotations

from collections.abc import Iterable

SHARE_STEP = 1.0  # effective shares rounded to whole percent: latency memoisation stays small


class SmShare:
    """SM shares of the steps in flight per GPU."""

    def __init__(self, gpus: Iterable[int]) -> None:
        self.busy = dict.fromkeys(gpus, 0.0)

    def begin(self, gpus: tuple[int, ...], sm_pct: float) -> float:
        """Register a step of an engine capped at ``sm_pct``; returns its effective share."""
        total = sm_pct + max(self.busy[g] for g in gpus)
        for g in gpus:
            self.busy[g] += sm_pct
        if total <= 100.0:
            return sm_pct
        return max(SHARE_STEP, round(sm_pct * 100.0 / total / SHARE_STEP) * SHARE_STEP)

    def end(self, gpus: tuple[int, ...], sm_pct: float) -> None:
        for g in gpus:
            self.busy[g] -= sm_pct
            if self.busy[g] < 1e-6:
                self.busy[g] = 0.0  # drop float drift when the GPU goes quiet

    def check_integrity(self) -> None:
        for g, s in self.busy.items():
            assert s >= 0.0, (g, s)


def needed(shares_per_gpu: dict[int, list[float]]) -> bool:
    """Whether any GPU's engines have shares summing past 100% (oversubscribed)."""
    return any(sum(s) > 100.0 + 1e-9 for s in shares_per_gpu.values())
