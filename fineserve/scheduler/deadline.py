"""Deadline admission (FineServe's local scheduler, with learned service times).

A new request waits for ``in_flight + ahead + 1 - limit`` slots to free (``ahead``: queued
requests dispatched before it), each about ``service / limit`` seconds apart, then takes
``prefill(prompt)`` to its first token - both learned online (``estimator.py``). If that
lands after ``arrival + TTFT SLO`` the request cannot meet its SLO: it is rejected at once
(429 + Retry-After, cheaper for everyone than a late answer) or, with
``late="deprioritise"``, queued behind every on-time request. The limit stays fixed.
"""

from __future__ import annotations

from fineserve.scheduler.policy import Assessment, Policy
from fineserve.scheduler.types import RequestInfo


class DeadlinePolicy(Policy):
    name = "deadline"
    expires_queued = True

    def assess(self, req: RequestInfo, now_s: float, in_flight: int, ahead: int) -> Assessment:
        wait = self.est.slot_wait_s(in_flight + ahead + 1 - self.limit, self.limit)
        first_token = now_s + wait + self.est.prefill_s(req.prompt_tokens)
        lateness = first_token - (req.arrival_s + self.slo.ttft_s)
        return Assessment(lateness <= 0.0, lateness)
