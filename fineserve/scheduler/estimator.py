"""Service times learned from what one engine actually did (all O(1) per observation).

- Prefill: time from dispatch to first token as ``a + bx * prompt_tokens + bn * in_flight``
  (``in_flight`` counted at dispatch, including the request), fitted by exponentially
  weighted least squares. The load term is what lets admission predict the first token at
  the concurrency a request will actually meet, and the length term avoids biasing short
  prompts the way FineServe's single TTFT-per-token ratio does. Degenerate data (one length,
  one load) falls back to the simpler fits, then to the ratio, then to the configured hint.
- Service: EWMA of dispatch-to-finish time; with ``limit`` requests in flight a slot frees
  about every ``service / limit`` seconds, which is what a queued request waits per position.
- TPOT: EWMA of (finish - first token) / (output tokens - 1).
- Calibration (why admission is not pessimistic): a point estimate is not a prediction.
  ``prefill_err`` tracks how far observed first tokens land from what the fit predicted at
  dispatch (bias and spread, from every dispatched request, so no selection effect), and
  ``gap`` the spread of the intervals between finishes of a saturated engine, which is how
  uncertain a queued request's wait for a slot is. Admission judges a quantile of the
  resulting distribution (``deadline.py``), not its mean.
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


class Spread:
    """Exponentially weighted mean and variance of a stream (West's update, O(1))."""

    __slots__ = ("mean", "var", "count")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.count = 0

    def add(self, x: float) -> None:
        if self.count == 0:
            self.mean = x
        else:
            d = x - self.mean
            self.mean += ALPHA * d
            self.var = (1.0 - ALPHA) * (self.var + ALPHA * d * d)
        self.count += 1

    @property
    def sd(self) -> float:
        return self.var**0.5


CALIBRATED = 5  # samples before a learned bias / spread replaces its prior
LOAD_HELPS = 0.95  # a cut must promise at least 5% faster first tokens
GAP_CV_PRIOR = 0.5  # coefficient of variation of slot-free intervals before any is seen


class ServiceEstimator:
    __slots__ = ("_s", "_hint", "service", "tpot", "ttft", "prefill_err", "gap")

    def __init__(self, prefill_s_per_token_hint: float = 0.0) -> None:
        # EW sums: weight, tokens, n, tokens^2, tokens*n, n^2, t, tokens*t, n*t
        self._s = [0.0] * 9
        self._hint = prefill_s_per_token_hint
        self.service = Ewma()  # dispatch -> finish, seconds
        self.tpot = Ewma()  # seconds per output token
        self.ttft = Ewma()  # dispatch -> first token, seconds (for stats and control)
        self.prefill_err = Spread()  # observed - predicted dispatch-to-first-token, seconds
        self.gap = Spread()  # seconds between finishes while the engine was saturated

    def observe_prefill(self, prompt_tokens: int, in_flight: int, seconds: float) -> None:
        """One dispatch-to-first-token time of a prompt dispatched with ``in_flight`` running
        (counting itself)."""
        x, n, t = float(max(prompt_tokens, 1)), float(max(in_flight, 1)), max(seconds, 0.0)
        k = 1.0 - ALPHA
        w, sx, sn, sxx, sxn, snn, st, sxt, snt = self._s
        self._s = [
            k * w + 1.0, k * sx + x, k * sn + n, k * sxx + x * x, k * sxn + x * n,
            k * snn + n * n, k * st + t, k * sxt + x * t, k * snt + n * t,
        ]  # fmt: skip
        self.ttft.add(t)

    def prefill_s(self, prompt_tokens: int, in_flight: int) -> float:
        """Predicted dispatch-to-first-token time of a prompt that will run alongside
        ``in_flight`` requests (counting itself); 0 when nothing is known and no hint."""
        x, n = float(max(prompt_tokens, 1)), float(max(in_flight, 1))
        w, sx, sn, sxx, sxn, snn, st, sxt, snt = self._s
        if w == 0.0:
            return self._hint * x
        mx, mn, mt = sx / w, sn / w, st / w
        cxx, cxn, cnn = sxx / w - mx * mx, sxn / w - mx * mn, snn / w - mn * mn
        cxt, cnt = sxt / w - mx * mt, snt / w - mn * mt
        vary_x, vary_n = cxx > 1e-6 * (mx * mx + 1.0), cnn > 1e-6 * (mn * mn + 1.0)
        det = cxx * cnn - cxn * cxn
        if vary_x and vary_n and det > 1e-6 * cxx * cnn:  # t = a + bx*x + bn*n
            bx, bn = (cxt * cnn - cnt * cxn) / det, (cnt * cxx - cxt * cxn) / det
            if bx >= 0.0 and bn >= 0.0:
                return max(0.0, mt + bx * (x - mx) + bn * (n - mn))
        if vary_n and cnt >= 0.0:  # load explains it: t = a + bn*n
            return max(0.0, mt + cnt / cnn * (n - mn))
        if vary_x and cxt >= 0.0:  # prompt length explains it: t = a + bx*x
            return max(0.0, mt + cxt / cxx * (x - mx))
        return st / sx * x  # one operating point: FineServe's time-per-token ratio

    def load_helps(self, from_n: int, to_n: int) -> bool:
        """Would ``to_n`` (< ``from_n``) in flight give a typical prompt a clearly faster first
        token? True until the fit knows (a cut is the safe default)."""
        w = self._s[0]
        if w == 0.0:
            return True
        x = self._s[1] / w  # the mean prompt
        before = self.prefill_s(int(x), from_n)
        return before <= 0.0 or self.prefill_s(int(x), to_n) < LOAD_HELPS * before

    def slot_wait_s(self, slots_needed: int, limit: int) -> float:
        """Expected wait until ``slots_needed`` in-flight requests have finished."""
        if slots_needed <= 0 or self.service.count == 0:
            return 0.0
        return slots_needed * self.service.value / max(limit, 1)

    def prefill_bias_sd(self) -> tuple[float, float]:
        """Mean and spread of the fit's error (0, 0 until ``CALIBRATED`` samples)."""
        e = self.prefill_err
        return (e.mean, e.sd) if e.count >= CALIBRATED else (0.0, 0.0)

    def slot_wait_sd(self, slots_needed: int, limit: int) -> float:
        """Spread of ``slot_wait_s``: ``slots_needed`` intervals of the learned variability."""
        if slots_needed <= 0 or self.service.count == 0:
            return 0.0
        g = self.gap
        cv = g.sd / g.mean if g.count >= CALIBRATED and g.mean > 0.0 else GAP_CV_PRIOR
        return slots_needed**0.5 * cv * self.service.value / max(limit, 1)

    def observe_finish(self, service_s: float, tpot_s: float | None) -> None:
        self.service.add(max(service_s, 0.0))
        if tpot_s is not None:
            self.tpot.add(max(tpot_s, 0.0))
