"""Adaptive concurrency: deadline admission plus an AIMD in-flight limit.

Control law (one engine; ``r_ttft`` = dispatch-to-first-token time / TTFT SLO, ``r_tpot`` =
TPOT / TPOT SLO, both only from requests dispatched under the current limit - the epoch):

- decrease ``L <- max(min, min(L - 1, floor(0.75 L)))`` when a window's mean ``r_ttft`` > 0.8
  or mean ``r_tpot`` > 1.0 (after 6 samples; the TTFT cut only when the prefill fit
  predicts faster first tokens at the lower limit), or one sample has ``r_ttft`` > 1 or
  ``r_tpot`` > 1.25 (a certain miss); or when vLLM reports KV usage >= 0.95 (preemption is
  next, which wastes the prefill already done);
- clamp ``L <- max(min, min(L - 1, running + 1))`` when vLLM reports waiting > 0 on two
  scrapes in a row: the engine batches fewer than we send, so the rest only queues inside it
  where we can neither expire nor reorder it;
- increase ``L <- min(max, L + 1)`` after a window of ``min(L, 16)`` samples with mean
  ``r_ttft`` < 0.4, mean ``r_tpot`` < 0.8, KV usage < 0.85, no engine-side waiting, and the
  limit actually reached during the window (growing an unused limit proves nothing);
- otherwise hold. Engine-state decreases are spaced by at least one TTFT SLO.

Why AIMD and why engine-side TTFT: additive increase / multiplicative decrease converges
and, with engines on one GPU all backing off together, shares the GPU fairly (the TCP
argument); a gradient controller (latency vs a no-load baseline) needs that baseline, which
shifts with every prompt-length mix. The signal is dispatch-to-first-token, not the client's
TTFT: time queued in the gateway grows when the limit is cut, so feeding it back would cut
the limit further (positive feedback); queueing is the admission test's job. The 0.8 leaves
20% of the TTFT budget for that queueing.
"""

from __future__ import annotations

import math

from fineserve.scheduler.deadline import DeadlinePolicy
from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.types import EngineSnapshot, SchedulerConfig, SloTargets

TTFT_HIGH, TTFT_LOW, TTFT_HARD = 0.8, 0.4, 1.0
TPOT_HIGH, TPOT_LOW, TPOT_HARD = 1.0, 0.8, 1.25
KV_HIGH, KV_LOW = 0.95, 0.85
DECREASE = 0.75
MIN_SAMPLES = 6  # before a window mean can trigger a decrease
ROUND_MAX = 16  # samples per increase window, at most
WAITING_SCRAPES = 2  # consecutive scrapes with engine-side waiting before clamping


class AdaptivePolicy(DeadlinePolicy):
    name = "adaptive"

    def __init__(self, slo: SloTargets, config: SchedulerConfig, est: ServiceEstimator) -> None:
        super().__init__(slo, config, est)
        self._reset_window()
        self._kv = 0.0
        self._waiting_streak = 0
        self._last_change_s = -math.inf

    def on_dispatch(self, in_flight: int, now_s: float) -> None:
        if in_flight >= self.limit:
            self._limited = True

    def on_first_token(self, engine_ttft_s: float, epoch: int, now_s: float) -> None:
        if epoch != self.epoch:
            return
        r = engine_ttft_s / self.slo.ttft_s
        if r > TTFT_HARD:
            self._decrease(now_s)
            return
        self._n_ttft += 1
        self._sum_ttft += r
        self._evaluate(now_s)

    def on_finish(self, tpot_s: float | None, ok: bool, epoch: int, now_s: float) -> None:
        if epoch != self.epoch or tpot_s is None:
            return
        r = tpot_s / self.slo.tpot_s
        if r > TPOT_HARD:
            self._decrease(now_s)
            return
        self._n_tpot += 1
        self._sum_tpot += r
        self._evaluate(now_s)

    def on_engine_state(self, snap: EngineSnapshot, in_flight: int) -> None:
        self._kv = snap.kv_usage
        self._waiting_streak = self._waiting_streak + 1 if snap.waiting > 0 else 0
        if snap.at_s - self._last_change_s < self.slo.ttft_s:
            return
        if snap.kv_usage >= KV_HIGH:
            self._decrease(snap.at_s)
        elif self._waiting_streak >= WAITING_SCRAPES:
            self._set(min(self.limit - 1, snap.running + 1), snap.at_s)

    # -- internals ------------------------------------------------------------------------

    def _evaluate(self, now_s: float) -> None:
        mean_ttft = self._sum_ttft / self._n_ttft if self._n_ttft else 0.0
        mean_tpot = self._sum_tpot / self._n_tpot if self._n_tpot else 0.0
        if (self._n_ttft >= MIN_SAMPLES and mean_ttft > TTFT_HIGH and self._cut_helps()) or (
            self._n_tpot >= MIN_SAMPLES and mean_tpot > TPOT_HIGH
        ):
            self._decrease(now_s)
            return
        if self._n_ttft < min(self.limit, ROUND_MAX):
            return
        comfortable = (
            mean_ttft < TTFT_LOW
            and mean_tpot < TPOT_LOW
            and self._kv < KV_LOW
            and self._waiting_streak == 0
        )
        if comfortable and self._limited:
            self._set(self.limit + 1, now_s)
        else:
            self._reset_window()  # new window, same epoch

    def _cut_helps(self) -> bool:
        """Slow first tokens are the load's fault only if less load makes them faster: on an
        engine whose prefill does not depend on concurrency, a cut just queues requests."""
        return self.est.load_helps(self.limit, self._cut_to())

    def _cut_to(self) -> int:
        return max(self.config.min_limit, min(self.limit - 1, math.floor(self.limit * DECREASE)))

    def _decrease(self, now_s: float) -> None:
        self._set(min(self.limit - 1, math.floor(self.limit * DECREASE)), now_s)

    def _set(self, limit: int, now_s: float) -> None:
        limit = max(self.config.min_limit, min(self.config.max_limit, limit))
        if limit != self.limit:
            if limit < self.limit:
                # Requests dispatched before a cut ran at the old, higher concurrency: their
                # samples say nothing about the new limit. After a raise, old samples are
                # still valid evidence (bad news at lower load is worse at higher load).
                self.epoch += 1
            self.limit = limit
            self._last_change_s = now_s
        self._reset_window()

    def _reset_window(self) -> None:
        self._n_ttft = self._n_tpot = 0
        self._sum_ttft = self._sum_tpot = 0.0
        self._limited = False
