"""Service times learned from what one engine actually did (all O(1) per observation).

- Prefill: time from dispatch to first token as ``a + b * prompt_tokens``, fitted by
  exponentially weighted least squares, so it tracks load changes and does not bias short
  prompts the way FineServe's single TTFT-per-token ratio does. Until two distinct prompt
  lengths have been seen it uses the ratio (or the configured per-token hint).
- Service: EWMA of dispatch-to-finish time; with ``limit`` requests in flight a slot frees
  about every ``service / limit`` seconds, which is what a queued request waits per position.
- TPOT: EWMA of (finish - first token) / (output tokens - 1).
"""

from __future__ import annotations

ALPHA = 0.1  # EWMA weight of a new observation: ~10 requests of memory


class Ewma:
    __slots__ = ("value", "count")

    def __init__(self) -> None:
        self.value = 0.0
        self.count = 0

    def add(self, x: float) -> None:
        self.value = x if self.count == 0 else self.value + ALPHA * (x - self.value)
        self.count += 1


class ServiceEstimator:
    __slots__ = ("_w", "_sn", "_st", "_snn", "_snt", "_hint", "service", "tpot", "ttft")

    def __init__(self, prefill_s_per_token_hint: float = 0.0) -> None:
        self._w = self._sn = self._st = self._snn = self._snt = 0.0
        self._hint = prefill_s_per_token_hint
        self.service = Ewma()  # dispatch -> finish, seconds
        self.tpot = Ewma()  # seconds per output token
        self.ttft = Ewma()  # dispatch -> first token, seconds (for stats and control)

    def observe_prefill(self, prompt_tokens: int, seconds: float) -> None:
        n, t, keep = float(max(prompt_tokens, 1)), max(seconds, 0.0), 1.0 - ALPHA
        self._w = keep * self._w + 1.0
        self._sn = keep * self._sn + n
        self._st = keep * self._st + t
        self._snn = keep * self._snn + n * n
        self._snt = keep * self._snt + n * t
        self.ttft.add(t)

    def prefill_s(self, prompt_tokens: int) -> float:
        """Predicted dispatch-to-first-token time of a prompt (0 when nothing is known)."""
        n = float(max(prompt_tokens, 1))
        if self._w == 0.0:
            return self._hint * n
        denom = self._w * self._snn - self._sn * self._sn
        if denom > 1e-9 * self._w * self._snn:  # prompt lengths vary enough to fit a line
            b = (self._w * self._snt - self._sn * self._st) / denom
            a = (self._st - b * self._sn) / self._w
            if a >= 0.0 and b >= 0.0:
                return a + b * n
        return self._st / self._sn * n  # one length seen, or a degenerate fit: the ratio

    def slot_wait_s(self, slots_needed: int, limit: int) -> float:
        """Expected wait until ``slots_needed`` in-flight requests have finished."""
        if slots_needed <= 0 or self.service.count == 0:
            return 0.0
        return slots_needed * self.service.value / max(limit, 1)

    def observe_finish(self, service_s: float, tpot_s: float | None) -> None:
        self.service.add(max(service_s, 0.0))
        if tpot_s is not None:
            self.tpot.add(max(tpot_s, 0.0))
