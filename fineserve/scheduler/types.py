"""Values that cross the scheduler's boundary (gateway, simulator, arbiter).

Everything is frozen: the gateway and the simulator hand these in and read them out, and the
scheduler never keeps a reference it could be surprised by. Times are float seconds on the
caller's clock (monotonic time in the gateway, simulated time in the simulator); the scheduler
never reads a clock itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from fineserve.errors import SpecError

POLICIES = ("fcfs", "deadline", "adaptive")
LATE_ACTIONS = ("reject", "deprioritise")


class SchedulerConfigError(SpecError):
    """A scheduler setting is out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class SloTargets:
    """Latency objectives of the model an engine serves."""

    ttft_s: float  # time to first token, from arrival at the gateway
    tpot_s: float  # mean time per output token after the first

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SchedulerConfigError(f"slo.{name} must be a positive number, got {value}")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What admission needs to know about one request."""

    request_id: str
    model: str
    prompt_tokens: int
    max_output_tokens: int
    arrival_s: float
    priority: int = 0  # higher = more important; FIFO among equal priorities


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Live engine state, from vLLM /metrics (or the simulator)."""

    at_s: float
    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting (> 0: we send more than the engine batches)
    kv_usage: float  # vllm:kv_cache_usage_perc, in [0, 1]
    preemptions: int = 0  # vllm:num_preemptions_total, cumulative (a rise: KV ran out)


class Verdict(Enum):
    ADMIT = "admit"  # dispatch to the engine now
    QUEUE = "queue"  # wait; a later poll() dispatches or expires it
    REJECT = "reject"  # answer 429 now (with Retry-After)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    retry_after_s: float | None = None  # set on every REJECT


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """Per-engine counters and gauges for /metrics (counters only grow)."""

    in_flight: int  # dispatched, not finished
    queued: int  # waiting in this scheduler's queue
    limit: int  # current in-flight limit
    admitted: int  # dispatched, at submit (ADMIT) or later from the queue
    rejected: int  # REJECT at submit (queue full, or cannot meet the TTFT SLO)
    expired: int  # REJECT of a queued request: past its deadline (poll) or at shutdown
    cancelled: int = 0  # cancel() of a queued request
    finished: int = 0  # on_finish() of a dispatched request (ok or not)
    deprioritised: int = 0  # queued behind on-time requests (late="deprioritise")
    ttft_est_s: float = 0.0  # learned dispatch-to-first-token time of a mean-length prompt
    tpot_est_s: float = 0.0  # learned time per output token


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Scheduler settings shared by every engine of a gateway (or a simulation)."""

    policy: str = "adaptive"  # "fcfs" | "deadline" | "adaptive"
    initial_limit: int = 8  # the plan's max_batch is a good start
    min_limit: int = 1
    max_limit: int = 256
    max_queue: int = 256  # bounded: overload -> REJECT (HTTP 429), never unbounded memory
    late: str = "reject"  # "reject" | "deprioritise": a request predicted to miss its TTFT SLO
    est_prefill_s_per_token: float = 0.0  # hint for deadline admission (0 = learn)
    late_timeout_factor: float = 4.0  # deprioritised requests expire at arrival + factor * TTFT
    min_retry_after_s: float = 0.1  # floor of every Retry-After

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SchedulerConfigError(
                f"scheduler.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}"
            )
        if self.late not in LATE_ACTIONS:
            raise SchedulerConfigError(
                f"scheduler.late must be one of {', '.join(LATE_ACTIONS)}, got {self.late!r}"
            )
        if self.min_limit < 1:
            raise SchedulerConfigError(f"scheduler.min_limit must be >= 1, got {self.min_limit}")
        if self.max_limit < self.min_limit:
            raise SchedulerConfigError(
                f"scheduler.max_limit ({self.max_limit}) must be >= min_limit ({self.min_limit})"
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise SchedulerConfigError(
                f"scheduler.initial_limit ({self.initial_limit}) must lie in "
                f"[min_limit, max_limit] = [{self.min_limit}, {self.max_limit}]"
            )
        if self.max_queue < 0:
            raise SchedulerConfigError(f"scheduler.max_queue must be >= 0, got {self.max_queue}")
        for name in ("est_prefill_s_per_token", "min_retry_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SchedulerConfigError(f"scheduler.{name} must be >= 0, got {value}")
        if not (math.isfinite(self.late_timeout_factor) and self.late_timeout_factor >= 1):
            raise SchedulerConfigError(
                f"scheduler.late_timeout_factor must be >= 1, got {self.late_timeout_factor}"
            )

    def for_engine(self, max_batch: int, ceiling: bool = True) -> SchedulerConfig:
        """These settings for one engine of batch cap ``max_batch`` (vLLM's
        ``--max-num-seqs``): the limit starts at the cap, clamped to the limits, and with
        ``ceiling`` never exceeds it either. Why a ceiling: whatever is sent beyond the cap
        waits inside vLLM, where it can be neither expired nor reordered, and shows as
        ``waiting > 0`` - a clamp, and on a KV Slab engine (usage near 1 by design) a KV cut.
        On the H100 (docs/benchmarks.md) a limit of 256 over chat-8b-fp8's cap of 249 cut it
        to 192 mid-peak. ``ceiling=False`` replays runs made before the ceiling."""
        start = min(max(max_batch, self.min_limit), self.max_limit)
        return replace(self, initial_limit=start, max_limit=start if ceiling else self.max_limit)
