"""FineServe's local scheduler: per-engine admission, queueing and in-flight limits.

Pure logic - no I/O, no asyncio, no clock (time is passed in) - so the gateway and the
simulator run the same code. Start at ``engine_scheduler.py``; ``docs/scheduler.md`` has the
policies, the control law and the call sequence.
"""

from fineserve.scheduler.arbiter import ArbiterPoll, ArbiterStats, GpuArbiter
from fineserve.scheduler.engine_scheduler import EngineScheduler
from fineserve.scheduler.registry import POLICY_CLASSES
from fineserve.scheduler.types import (
    Decision,
    EngineSnapshot,
    RequestInfo,
    SchedulerConfig,
    SchedulerConfigError,
    SchedulerStats,
    SloTargets,
    Verdict,
)

__all__ = [
    "POLICY_CLASSES",
    "ArbiterPoll",
    "ArbiterStats",
    "Decision",
    "EngineScheduler",
    "EngineSnapshot",
    "GpuArbiter",
    "RequestInfo",
    "SchedulerConfig",
    "SchedulerConfigError",
    "SchedulerStats",
    "SloTargets",
    "Verdict",
]
