"""GPU-wide arbitration between the engines (models) co-located on one GPU.

Engines on one GPU share its SMs and HBM bandwidth, so their in-flight requests share one
budget (default: the sum of their initial limits, i.e. the plan's max_batch per engine). Each
engine still keeps its own limit; the budget only bites when the GPU as a whole is saturated.

Rule when saturated (more dispatchable demand than free budget): stride scheduling. Engine e
has weight ``share_base ** priority_e`` and a pass value; each free slot goes to the
dispatchable engine with the smallest pass (ties: higher priority, then attach order), whose
pass then grows by ``1 / weight``. So the higher-priority model is served first and, under
sustained contention, gets ``share_base`` times the slots of a model one priority below - but
a lower-priority model with demand still gets a fixed fraction and is never starved. An
engine returning from idle has its pass raised to the current virtual time, so it cannot bank
credit while idle and then monopolise the GPU.

Use: create one ``GpuArbiter`` per GPU, pass it to each ``EngineScheduler`` on that GPU
(``arbiter=..., priority=route.priority``), then either call ``arbiter.poll(now)`` (results
for every engine) or each engine's ``poll(now)`` (its own share; the GPU-wide pass leaves the
other engines' grants for their next poll) - never both for one event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fineserve.scheduler.types import Decision, SchedulerConfigError

if TYPE_CHECKING:
    from fineserve.scheduler.engine_scheduler import EngineScheduler


@dataclass(frozen=True, slots=True)
class ArbiterPoll:
    dispatch: list[tuple[str, str]]  # (engine_id, request_id) to dispatch now
    expired: list[tuple[str, str, Decision]]  # (engine_id, request_id, REJECT decision)


@dataclass(frozen=True, slots=True)
class ArbiterStats:
    gpu: str
    budget: int
    in_flight: int  # over all engines on the GPU
    queued: int


@dataclass(slots=True, eq=False)
class _Member:
    sched: EngineScheduler
    weight: float
    pass_: float = 0.0


class GpuArbiter:
    """Shares one GPU's in-flight budget between its engines; see the module docstring."""

    def __init__(self, gpu: str, budget: int | None = None, share_base: float = 4.0) -> None:
        """Args:
        gpu: the GPU's name (e.g. ``"0"`` or ``"node0/0"``), for stats.
        budget: GPU-wide in-flight cap; None = sum of the attached engines' initial limits.
        share_base: weight ratio between adjacent priorities under contention (> 1).

        Raises:
            SchedulerConfigError: budget < 1 or share_base <= 1.
        """
        if budget is not None and budget < 1:
            raise SchedulerConfigError(f"arbiter.budget must be >= 1, got {budget}")
        if not share_base > 1.0:
            raise SchedulerConfigError(f"arbiter.share_base must be > 1, got {share_base}")
        self.gpu = gpu
        self._fixed_budget = budget
        self._auto_budget = 0
        self._share_base = share_base
        self._members: list[_Member] = []
        self._used = 0
        self._vtime = 0.0

    @property
    def budget(self) -> int:
        return self._fixed_budget if self._fixed_budget is not None else self._auto_budget

    @property
    def engines(self) -> list[EngineScheduler]:
        return [m.sched for m in self._members]

    def attach(self, sched: EngineScheduler) -> None:
        """Called by ``EngineScheduler(..., arbiter=self)``; not by the gateway."""
        if any(m.sched.engine_id == sched.engine_id for m in self._members):
            raise SchedulerConfigError(
                f"engine {sched.engine_id!r} attached twice to GPU {self.gpu}"
            )
        self._members.append(_Member(sched, self._share_base**sched.priority, self._vtime))
        self._auto_budget += sched.config.initial_limit

    def poll(self, now_s: float) -> ArbiterPoll:
        """Expire and dispatch on every engine of the GPU; returns what each must do now."""
        self.run(now_s)
        dispatch: list[tuple[str, str]] = []
        expired: list[tuple[str, str, Decision]] = []
        for m in self._members:
            ids, gone = m.sched.poll_buffers()
            dispatch.extend((m.sched.engine_id, rid) for rid in ids)
            expired.extend((m.sched.engine_id, rid, d) for rid, d in gone)
        return ArbiterPoll(dispatch, expired)

    @property
    def stats(self) -> ArbiterStats:
        queued = sum(m.sched.queued for m in self._members)
        return ArbiterStats(self.gpu, self.budget, self._used, queued)

    # -- used by EngineScheduler ----------------------------------------------------------

    def run(self, now_s: float) -> None:
        """One GPU-wide pass: expire on every engine, then hand out free budget by stride."""
        for m in self._members:
            m.sched.expire(now_s)
        while self._used < self.budget:
            best: _Member | None = None
            for m in self._members:
                if not m.sched.dispatchable():
                    continue
                if m.pass_ < self._vtime:
                    m.pass_ = self._vtime  # back from idle: no banked credit
                if best is None or (m.pass_, -m.sched.priority) < (
                    best.pass_,
                    -best.sched.priority,
                ):
                    best = m
            if best is None:
                return
            self._vtime = best.pass_
            best.pass_ += 1.0 / best.weight
            best.sched.dispatch_head(now_s)

    def may_take(self, sched: EngineScheduler) -> bool:
        """Fast path at submit: free budget and no other engine waiting for it."""
        if self._used >= self.budget:
            return False
        return not any(m.sched is not sched and m.sched.dispatchable() for m in self._members)

    def taken(self) -> None:
        self._used += 1

    def released(self) -> None:
        self._used -= 1

    def check_integrity(self) -> None:
        """Raise AssertionError if the budget count disagrees with the engines."""
        total = sum(m.sched.in_flight for m in self._members)
        if total != self._used:
            raise AssertionError(f"arbiter counts {self._used} in flight, engines {total}")
        if self._used > self.budget:
            raise AssertionError(f"GPU {self.gpu}: {self._used} in flight > budget {self.budget}")
