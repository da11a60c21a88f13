"""Adaptive concurrency: deadline admission plus an AIMD-style in-flight limit.

Control law (one engine; ``r_ttft`` = dispatch-to-first-token time / TTFT SLO, ``r_tpot`` =
TPOT / TPOT SLO, both only from requests dispatched under the current limit - the epoch):

- decrease ``L <- max(min, min(L - 1, floor(0.75 L)))`` when a window's mean ``r_ttft`` > 0.8
  or mean ``r_tpot`` > 1.0 (after 6 samples; the TTFT cut only when the prefill fit
  predicts faster first tokens at the lower limit), or one sample has ``r_ttft`` > 1 or
  ``r_tpot`` > 1.25 (a certain miss); or when the engine is *KV-bound*: vLLM's preemption
  counter rose since the last scrape, or requests wait inside it, below its batch cap
  (``max_limit``), while its KV usage is >= 0.95;
- clamp ``L <- max(min, min(L - 1, running + 1))`` when vLLM reports waiting > 0 on two
  scrapes in a row: the engine batches fewer than we send, so the rest only queues inside it
  where we can neither expire nor reorder it (with both engine signals, the deeper cut);
- increase ``L <- min(max, L + max(1, floor(0.25 L s)))`` after a window of ``min(L, 16)``
  samples with mean ``r_ttft`` < 0.4, mean ``r_tpot`` < 0.8, the engine not KV-bound nor
  waiting, and the limit actually reached during the window (growing an unused limit proves
  nothing); ``s`` in (0, 1] is the slack, how far both means sit under those thresholds
  (``min(1 - r_ttft / 0.4, 1 - r_tpot / 0.8)``), so an engine far inside its SLOs wins back
  a quarter of its limit per window and one near them creeps by one;
- otherwise hold. Engine-state decreases are spaced by at least one TTFT SLO.

Why AIMD and why engine-side TTFT: additive increase / multiplicative decrease converges
and, with engines on one GPU all backing off together, shares the GPU fairly (the TCP
argument); a gradient controller (latency vs a no-load baseline) needs that baseline, which
shifts with every prompt-length mix. The signal is dispatch-to-first-token, not the client's
TTFT: time queued in the gateway grows when the limit is cut, so feeding it back would cut
the limit further (positive feedback); queueing is the admission test's job. The 0.8 leaves
20% of the TTFT budget for that queueing.

Why the increase is proportional: after a cut of a limit near 100, one slot per window of 16
first tokens took 25 s to win back 23 slots on the H100 (docs/benchmarks.md), every one of
them a second of 429s. The slack keeps the step small where the latencies say the engine is
near its SLOs, so a steady signal still moves the limit one way only.

Why KV usage alone is no signal: a KV Slab engine maps memory lazily, one slab when fewer than
one is free, so its usage gauge (used / mapped) sits near 1 by design and means "map a slab",
not "preemption is next"; cutting on it (the old rule) refused a third of the load of engines
whose pool still had room. What does mean KV shortage, for a static cache or a pool, is what
vLLM does when it runs out: it preempts (``vllm:num_preemptions_total``) or leaves requests
waiting with a full cache.
"""

from __future__ import annotations

import math

from fineserve.scheduler.deadline import DeadlinePolicy
from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.types import EngineSnapshot, SchedulerConfig, SloTargets

TTFT_HIGH, TTFT_LOW, TTFT_HARD = 0.8, 0.4, 1.0
TPOT_HIGH, TPOT_LOW, TPOT_HARD = 1.0, 0.8, 1.25
KV_HIGH = 0.95  # with requests waiting in the engine: it lacks memory, not batch slots
DECREASE = 0.75
INCREASE = 0.25  # largest step of one window, as a fraction of the limit (at full slack)
MIN_SAMPLES = 6  # before a window mean can trigger a decrease
ROUND_MAX = 16  # samples per increase window, at most
WAITING_SCRAPES = 2  # consecutive scrapes with engine-side waiting before clamping


class AdaptivePolicy(DeadlinePolicy):
    name = "adaptive"

    def __init__(self, slo: SloTargets, config: SchedulerConfig, est: ServiceEstimator) -> None:
        super().__init__(slo, config, est)
        self._reset_window()
        self._kv_bound = False  # at the last scrape: preempted, or waiting with a full cache
        self._preemptions: int | None = None  # the engine's counter at the last scrape
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
        seen, self._preemptions = self._preemptions, snap.preemptions
        preempted = seen is not None and snap.preemptions > seen  # lower: engine restarted
        # waiting with a full cache is a KV shortage only below the batch cap (the limit's
        # ceiling): at the cap vLLM leaves requests waiting for a slot, not for memory
        below_cap = snap.running < self.config.max_limit
        short = snap.waiting > 0 and snap.kv_usage >= KV_HIGH and below_cap
        self._kv_bound = preempted or short
        self._waiting_streak = self._waiting_streak + 1 if snap.waiting > 0 else 0
        if snap.at_s - self._last_change_s < self.slo.ttft_s:
            return
        cuts = []  # every cut that applies, the deepest wins: a worse state never cuts less
        if self._kv_bound:
            cuts.append(math.floor(self.limit * DECREASE))
        if self._waiting_streak >= WAITING_SCRAPES:
            cuts.append(snap.running + 1)
        if cuts:
            self._set(min(self.limit - 1, *cuts), snap.at_s)

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
        slack = increase_slack(mean_ttft, mean_tpot)
        if slack > 0 and self._limited and not self._kv_bound and self._waiting_streak == 0:
            self._set(self.limit + increase_step(self.limit, slack), now_s)
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


def increase_slack(mean_r_ttft: float, mean_r_tpot: float) -> float:
    """How far a window's mean latency ratios sit under the increase thresholds: in (0, 1],
    or 0 where either is at or above its threshold (no increase). Falls as either rises."""
    s = min(1.0 - mean_r_ttft / TTFT_LOW, 1.0 - mean_r_tpot / TPOT_LOW)
    return min(1.0, s) if s > 0 else 0.0


def increase_step(limit: int, slack: float) -> int:
    """Slots one comfortable window adds: at least one, up to ``INCREASE x limit``."""
    return max(1, math.floor(limit * INCREASE * slack))
