"""Deadline admission (FineServe's local scheduler, with learned service times).

A new request waits for ``in_flight + ahead + 1 - limit`` slots to free (``ahead``: queued
requests dispatched before it), each about ``service / limit`` seconds apart, then takes
``prefill(prompt, running)`` to its first token, ``running = min(limit, in_flight + ahead +
1)`` - all learned online (``estimator.py``). If that
lands after ``arrival + TTFT SLO`` the request cannot meet its SLO: it is rejected at once
(429 + Retry-After, cheaper for everyone than a late answer) or, with
``late="deprioritise"``, queued behind every on-time request. The limit stays fixed.

Liveness: learned times describe the engine at the load they were measured under. On an idle
engine (nothing in flight or queued) a stale estimate can only be too pessimistic, and
nothing else would ever refresh it - rejecting on it could reject forever. So an idle engine
judges a request by the uncontended prefill hint (``est_prefill_s_per_token``) alone.
"""

from __future__ import annotations

from fineserve.scheduler.policy import Assessment, Policy
from fineserve.scheduler.types import RequestInfo


class DeadlinePolicy(Policy):
    name = "deadline"
    expires_queued = True

    def assess(self, req: RequestInfo, now_s: float, in_flight: int, ahead: int) -> Assessment:
        if in_flight == 0 and ahead == 0:
            prefill = self.config.est_prefill_s_per_token * max(req.prompt_tokens, 1)
            first_token = now_s + prefill
        else:
            wait = self.est.slot_wait_s(in_flight + ahead + 1 - self.limit, self.limit)
            running = min(self.limit, in_flight + ahead + 1)  # alongside it, once dispatched
            first_token = now_s + wait + self.est.prefill_s(req.prompt_tokens, running)
        lateness = first_token - (req.arrival_s + self.slo.ttft_s)
        return Assessment(lateness <= 0.0, lateness)
