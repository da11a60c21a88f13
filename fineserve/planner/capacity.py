"""Capacity model: the highest request rate one engine sustains within its SLOs.

Derivation (docs/capacity.md). An engine with B sequences decoding spends, per second,
lambda*p seconds prefilling (p = prefill time of one mean prompt) and the rest in decode steps
of d(B) seconds that each emit B tokens. Output balance, lambda*D tokens per second, gives

    lambda(B) = B / (D*d(B) + B*p)
    TPOT(B)   = d(B) / (1 - rho),          rho = lambda*p  (prefills stall decoding)
    TTFT(B)   = p + d(B) + rho*p / (2*(1 - rho))   (M/D/1 wait for the prefill server)

B is the *mean* number of running sequences. Poisson arrivals make the running count
fluctuate around it (an infinite-server queue holds Poisson(B) requests), so an engine capped
at exactly B sequences is critically loaded and its queue grows without bound. The cap c
(vLLM max-num-seqs) is therefore sized above B by square-root staffing: with c - B = beta
sqrt(B), Halfin-Whitt gives P(wait) = 1 / (1 + beta Phi(beta) / phi(beta)), and a waiting
request waits Exp((c - B) / T) (T = mean residence), so c is the smallest cap with

    P(wait) * exp(-(c - B) * slack / T) <= TAIL,     slack = TTFT goal - TTFT(B)

The capacity is the largest lambda(B) over B whose TTFT and TPOT meet ``slo_safety`` x the SLO
and whose cap c fits min(max_batch, KV limit). Decode steps see the length-biased context of
the running requests (``running_context``). KV: static engines reserve for c sequences; pooled
floors use Little's law on the mean B: resident tokens x bytes/token x (1 + kv_margin).
Calibrated against the simulator (docs/capacity.md, "Calibration").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fineserve.planner.schema import LengthStats, Slo
from fineserve.profiles.catalog import VLLM_BLOCK_SIZE
from fineserve.profiles.latency import EngineShape, LatencyModel

# Spread of output lengths assumed when only means are known (the workload presets' CV, see
# fineserve/workload/lengths.py). Long requests stay longer, so the mean context of the
# *running* requests is length-biased: P + E[D^2] / (2 E[D]) = P + D (1 + CV^2) / 2.
OUTPUT_CV = 0.8

# Spread of prompt lengths assumed (the presets' CV). The TTFT goal must hold for the prompt at
# the 1 - TAIL quantile, not only the mean one: a log-normal with this CV has its 99th
# percentile at ~4.9x the mean.
PROMPT_CV = 1.0

# Fraction of requests allowed to wait for a batch slot beyond the TTFT goal (the 99% target).
TAIL = 0.01

# Steady-state batches tried: dense at small B where latency changes fastest.
BATCH_GRID: tuple[int, ...] = tuple(
    sorted({*range(1, 17), *range(20, 65, 4), *range(72, 257, 8), *range(288, 1025, 32)})
)


@dataclass(frozen=True, slots=True)
class Capacity:
    rate_rps: float  # 0 when nothing meets the SLOs
    batch: int  # in-flight cap (vLLM max-num-seqs) that keeps slot waits within the TTFT goal
    ttft_s: float
    tpot_s: float
    kv_bytes: int  # per rank, for ``batch`` (the cap) sequences (margin included)
    residence_s: float  # mean time a request holds KV: TTFT + output x TPOT
    limited_by: str  # what stops a larger batch: tpot, ttft, kv, max_batch, slo, weights
    estimated: bool  # True if any latency behind it came from the estimator
    mean_batch: int = 0  # steady-state mean running sequences at that rate
    kv_mean_bytes: int = 0  # per rank, KV for ``mean_batch`` sequences (margin included)

    @property
    def kv_bytes_per_rps(self) -> float:
        """KV bytes per unit of served rate (Little's law on the mean batch); pooled floors."""
        return self.kv_mean_bytes / self.rate_rps if self.rate_rps > 0 else math.inf


ZERO = Capacity(0.0, 0, math.inf, math.inf, 0, math.inf, "slo", False)


def _wait_tail(beta: float, a: float, slack_over_t: float) -> float:
    """P(slot wait > slack) with c = a + beta sqrt(a) slots (Halfin-Whitt, exponential wait)."""
    if beta <= 0:
        return 1.0
    phi = math.exp(-beta * beta / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(beta / math.sqrt(2)))
    return math.exp(-beta * math.sqrt(a) * slack_over_t) / (1 + beta * big_phi / phi)


def batch_cap(mean_batch: float, slack_s: float, residence_s: float) -> int:
    """Smallest in-flight cap c >= mean_batch whose slot waits exceed ``slack_s`` for at most
    TAIL of the requests (square-root staffing; see the module docstring)."""
    if slack_s <= 0 or not math.isfinite(residence_s):
        return 1 << 30
    ratio = slack_s / max(residence_s, 1e-12)
    lo, hi = 0.0, 8.0
    for _ in range(20):  # _wait_tail is decreasing in beta
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _wait_tail(mid, mean_batch, ratio) <= TAIL else (mid, hi)
    return math.ceil(mean_batch + hi * math.sqrt(mean_batch) - 1e-9)


def tail_prompt(lengths: LengthStats) -> int:
    """Prompt tokens at the 1 - TAIL quantile of a log-normal with mean P and CV PROMPT_CV."""
    sigma = math.sqrt(math.log(1 + PROMPT_CV**2))
    z = _normal_quantile(1 - TAIL)
    return max(1, round(lengths.prompt_mean * math.exp(z * sigma - sigma * sigma / 2)))


def _normal_quantile(q: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q else (lo, mid)
    return (lo + hi) / 2


def running_context(lengths: LengthStats) -> float:
    """Time-average tokens held by a running request (length-biased; see OUTPUT_CV)."""
    return lengths.prompt_mean + lengths.output_mean * (1 + OUTPUT_CV**2) / 2


def _tokens_per_seq(lengths: LengthStats, kv_margin: float) -> float:
    # the unbiased mean plus ``kv_margin``, which is there for length variance (docs/capacity.md)
    return (lengths.resident_tokens + 8) * (1 + kv_margin)  # + half a 16-token block each


def kv_bytes_for_batch(
    engine: EngineShape, batch: int, lengths: LengthStats, kv_margin: float
) -> int:
    """Per-rank KV bytes for ``batch`` running sequences of mean resident length."""
    return int(engine.model.kv_bytes_for(batch * _tokens_per_seq(lengths, kv_margin), engine.tp))


def kv_batch_limit(
    engine: EngineShape, kv_limit_bytes: float, lengths: LengthStats, kv_margin: float
) -> int:
    """Largest batch B with kv_bytes_for_batch(B) <= kv_limit_bytes (exact inverse)."""
    if not math.isfinite(kv_limit_bytes):
        return 1 << 30
    blocks = int(kv_limit_bytes // engine.model.block_bytes(engine.tp))
    b = int(blocks * VLLM_BLOCK_SIZE / _tokens_per_seq(lengths, kv_margin))
    while b > 0 and kv_bytes_for_batch(engine, b, lengths, kv_margin) > kv_limit_bytes:
        b -= 1  # guard against float rounding at the boundary
    return max(0, b)


def engine_capacity(
    latency: LatencyModel,
    engine: EngineShape,
    sm_pct: float,
    slo: Slo,
    lengths: LengthStats,
    *,
    max_batch: int,
    kv_limit_bytes: float = math.inf,
    slo_safety: float = 1.0,
    kv_margin: float = 0.0,
) -> Capacity:
    """Highest SLO-meeting rate for ``engine`` at ``sm_pct`` with at most ``max_batch``
    sequences and ``kv_limit_bytes`` of KV per rank. Monotone in sm_pct, max_batch and
    kv_limit_bytes (a larger value only enlarges the set of batches searched)."""
    ttft_goal, tpot_goal = slo.ttft_s * slo_safety, slo.tpot_s * slo_safety
    prompt, out = max(1, round(lengths.prompt_mean)), max(1.0, lengths.output_mean)
    pre = latency.prefill(engine, prompt, sm_pct)
    if not pre.source.trusted:
        return ZERO
    p = pre.seconds
    long = latency.prefill(engine, tail_prompt(lengths), sm_pct)
    p_tail = long.seconds if long.source.trusted else p
    kv_batch = kv_batch_limit(engine, kv_limit_bytes, lengths, kv_margin)
    limit = min(max_batch, kv_batch)
    best, stop = ZERO, ("kv" if kv_batch < max_batch else "max_batch")
    for b in BATCH_GRID:
        if b > limit:
            break
        step = latency.decode_step(engine, b, running_context(lengths), sm_pct)
        if not step.source.trusted:
            stop = "profile"
            break
        d = step.seconds
        lam = b / (out * d + b * p)
        rho = lam * p
        if rho >= 1.0:
            stop = "ttft"
            break
        tpot = d / (1 - rho)
        ttft = p + d + rho * p / (2 * (1 - rho))
        if tpot > tpot_goal:
            stop = "tpot"
            break  # d(B) and rho only grow with B
        if ttft > ttft_goal or p_tail + d > ttft_goal:
            stop = "ttft"
            break  # so does TTFT (also for a tail-length prompt arriving at an idle queue)
        residence = ttft + out * tpot
        c = batch_cap(b, ttft_goal - ttft, residence)
        if c > limit:
            break  # the cap needed grows with b (stop: what limits it, kv or max_batch)
        if lam > best.rate_rps:
            est = "estimated" in (pre.source.value, step.source.value)
            best = Capacity(
                lam, c, ttft, tpot, kv_bytes_for_batch(engine, c, lengths, kv_margin),
                residence, stop, est, b, kv_bytes_for_batch(engine, b, lengths, kv_margin),
            )
    return replace(best, limited_by=stop) if best.rate_rps > 0 else ZERO


def fastest_latency(
    latency: LatencyModel, engine: EngineShape, lengths: LengthStats
) -> tuple[float, float]:
    """(TTFT, TPOT) of a lone request at 100% SMs: the floor any SLO must clear."""
    p = latency.prefill(engine, max(1, round(lengths.prompt_mean)), 100).seconds
    d = latency.decode_step(engine, 1, lengths.resident_tokens, 100).seconds
    return p + d, d
