"""Deadline admission (FineServe's local scheduler, with learned service times).

A new request waits for ``k = in_flight + ahead + 1 - limit`` slots to free (``ahead``:
queued requests dispatched before it), each about ``service / limit`` seconds apart, then
takes ``prefill(prompt, running)`` to its first token, ``running = min(limit, in_flight +
ahead + 1)`` - all learned online (``estimator.py``). That is an expectation with a spread:
the prefill fit's observed error (bias corrected, spread kept) and ``k`` slot-free intervals
of the learned variability. The request cannot meet its SLO when even an optimistic quantile
(``Z`` spreads below the expectation, about the 16th percentile) lands after ``arrival +
TTFT SLO``: it is rejected at once (429 + Retry-After = the expected lateness) or, with
``late="deprioritise"``, queued behind every on-time request. The limit stays fixed.

Why a quantile and not the expectation: the wait for one slot is roughly exponential (mean
``service / limit``, often as long as the whole TTFT budget), so a request whose expected
first token is a little late still makes it often - FCFS serves it in time. Rejecting it is
the costly error (the client gets no answer); admitting one that then misses costs little,
because a queued request expires at its deadline and is never dispatched late.

Liveness: learned times describe the engine at the load they were measured under. On an idle
engine (nothing in flight or queued) a stale estimate can only be too pessimistic, and
nothing else would ever refresh it - rejecting on it could reject forever. So an idle engine
judges a request by the uncontended prefill hint (``est_prefill_s_per_token``) alone.
"""

from __future__ import annotations

from fineserve.scheduler.policy import Assessment, Policy
from fineserve.scheduler.types import RequestInfo

Z = 1.0  # reject when P(first token in time) is below about 16% (normal approximation)


class DeadlinePolicy(Policy):
    name = "deadline"
    expires_queued = True
    predicts = True

    def assess(self, req: RequestInfo, now_s: float, in_flight: int, ahead: int) -> Assessment:
        deadline = req.arrival_s + self.slo.ttft_s
        if in_flight == 0 and ahead == 0:
            prefill = self.config.est_prefill_s_per_token * max(req.prompt_tokens, 1)
            lateness = now_s + prefill - deadline
            return Assessment(lateness <= 0.0, lateness)
        est, limit = self.est, self.limit
        slots = in_flight + ahead + 1 - limit
        running = min(limit, in_flight + ahead + 1)  # alongside it, once dispatched
        bias, prefill_sd = est.prefill_bias_sd()
        prefill = max(0.0, est.prefill_s(req.prompt_tokens, running) + bias)
        expected = now_s + est.slot_wait_s(slots, limit) + prefill
        wait_sd = est.slot_wait_sd(slots, limit)
        spread = (wait_sd * wait_sd + prefill_sd * prefill_sd) ** 0.5
        lateness = expected - deadline
        return Assessment(
            lateness - Z * spread <= 0.0, lateness, max(0.0, prefill - Z * prefill_sd)
        )
