"""The small interface every local-scheduler policy implements (factory: ``registry.py``).

A policy owns two decisions and nothing else: the in-flight limit (``limit``) and whether a
new request can still meet its TTFT deadline (``assess``). Queueing, expiry, counters and the
GPU arbiter live in ``EngineScheduler``, so the three policies differ only where they should.
Feedback arrives through the ``on_*`` hooks with the dispatch ``epoch`` the policy handed out,
so a controller can ignore samples of requests dispatched under an older limit.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.types import EngineSnapshot, RequestInfo, SchedulerConfig, SloTargets


class Assessment(NamedTuple):
    on_time: bool  # predicted to get its first token by arrival + TTFT SLO
    lateness_s: float  # expected first token minus deadline (may be > 0 when on time)
    prefill_s: float = 0.0  # optimistic dispatch-to-first-token: a queued request expires
    # once less than this is left before its deadline (dispatching it then is a sure miss)


class Policy:
    """Base policy: a fixed limit and no deadline prediction (everything is on time)."""

    name: ClassVar[str] = "base"
    expires_queued: ClassVar[bool] = True  # expire queued requests at their TTFT deadline
    predicts: ClassVar[bool] = False  # assess() uses the estimator (calibrate its prefill fit)

    def __init__(self, slo: SloTargets, config: SchedulerConfig, est: ServiceEstimator) -> None:
        self.slo = slo
        self.config = config
        self.est = est
        self.limit = config.initial_limit
        self.epoch = 0  # bumped when a policy wants older feedback ignored (adaptive: cuts)

    def assess(self, req: RequestInfo, now_s: float, in_flight: int, ahead: int) -> Assessment:
        """Can ``req`` meet its TTFT deadline behind ``in_flight`` running and ``ahead`` queued?"""
        return Assessment(True, -math.inf)

    def on_dispatch(self, in_flight: int, now_s: float) -> None:
        """A request was dispatched; ``in_flight`` counts it."""

    def on_first_token(self, engine_ttft_s: float, epoch: int, now_s: float) -> None:
        """First token of a request dispatched in ``epoch``, ``engine_ttft_s`` after dispatch."""

    def on_finish(self, tpot_s: float | None, ok: bool, epoch: int, now_s: float) -> None:
        """A dispatched request ended (``tpot_s`` is None with fewer than two tokens)."""

    def on_engine_state(self, snap: EngineSnapshot, in_flight: int) -> None:
        """Live engine state, every scrape of vLLM /metrics (or simulator tick)."""
