"""Where a measured run lost its SLO attainment: per model, refused (429) against served late
(TTFT or TPOT); per engine, what the gateway's in-flight limit did and what the engine showed
when it fell (``Measured.engine_series``, one sample a second).

A limit drop between two samples is put down to the engine's state at the later one: *KV*
when vLLM's preemption counter rose or requests waited in it with usage >= 0.95 (the adaptive
policy's KV-bound rule), *waiting* when requests waited in it otherwise (the clamp), else
*latency* (a TTFT / TPOT window). One-second samples can merge or miss cuts; the reasons are
inferred, the gateway does not export them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.e2e.results import Measured
from fineserve.scheduler.adaptive import KV_HIGH as KV_FULL

T, RUNNING, WAITING, KV, PREEMPTIONS, LIMIT = range(6)  # engine_series columns


@dataclass(frozen=True, slots=True)
class ModelLoss:
    """One model's misses; served misses are split by the first SLO they broke."""

    model: str
    requests: int
    rejected_429: int
    errors: int  # transport errors and client time-outs
    ttft_late: int  # served, TTFT over the SLO (TPOT either way)
    tpot_late: int  # served in time, TPOT over the SLO
    ttft_p99_s: float | None
    tpot_p50_s: float | None

    @property
    def misses(self) -> int:
        return self.rejected_429 + self.errors + self.ttft_late + self.tpot_late


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """One engine's gateway limit over a run and its drops by inferred reason."""

    engine: str
    first: int
    lowest: int
    last: int
    running_max: int
    waiting_max: int
    preemptions: int  # counter rise over the run
    cuts_kv: int
    cuts_waiting: int
    cuts_latency: int


def model_losses(m: Measured) -> list[ModelLoss]:
    out = []
    for model, g in sorted(m.summary.get("per_model", {}).items()):
        n = int(g["requests"])
        ttft_met = round(g.get("ttft_attainment", 0.0) * n)
        met = round(g.get("slo_attainment", 0.0) * n)
        served = int(g["completed"])
        out.append(ModelLoss(model, n, int(g["rejected_429"]), int(g["errors"]),
                             served - ttft_met, ttft_met - met,
                             (g.get("ttft_s") or {}).get("p99"),
                             (g.get("tpot_s") or {}).get("p50")))
    return out


def engine_limits(m: Measured) -> list[EngineLimits]:
    out = []
    for eid, rows in sorted(m.engine_series.items()):
        rows = [r for r in rows if r[LIMIT] >= 0]  # -1: the gateway gave no limit
        if not rows:
            continue
        kv = waiting = latency = 0
        for prev, cur in zip(rows, rows[1:], strict=False):
            if cur[LIMIT] >= prev[LIMIT]:
                continue
            if cur[PREEMPTIONS] > prev[PREEMPTIONS] or (cur[WAITING] > 0 and cur[KV] >= KV_FULL):
                kv += 1
            elif cur[WAITING] > 0 or prev[WAITING] > 0:
                waiting += 1
            else:
                latency += 1
        limits = [int(r[LIMIT]) for r in rows]
        out.append(EngineLimits(eid, limits[0], min(limits), limits[-1],
                                int(max(r[RUNNING] for r in rows)),
                                int(max(r[WAITING] for r in rows)),
                                int(rows[-1][PREEMPTIONS] - rows[0][PREEMPTIONS]),
                                kv, waiting, latency))
    return out


def loss_lines(m: Measured) -> list[str]:
    """Two markdown tables for one measured run."""
    ms = model_losses(m)
    n = sum(x.requests for x in ms)
    out = [f"({m.config}) at x{m.rate_scale:g}: {sum(x.misses for x in ms)} misses of {n} "
           "requests.", "",
           "| model | requests | 429 | errors | TTFT late | TPOT late | TTFT p99 ms | "
           "TPOT p50 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in ms:
        out.append(f"| {x.model} | {x.requests} | {x.rejected_429} | {x.errors} | "
                   f"{x.ttft_late} | {x.tpot_late} | {_ms(x.ttft_p99_s)} | {_ms(x.tpot_p50_s)} |")
    lim = engine_limits(m)
    if lim:
        out += ["", "| engine | limit first / lowest / last | running max | waiting max | "
                "preemptions | cuts KV / waiting / latency |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        out += [f"| {e.engine} | {e.first} / {e.lowest} / {e.last} | {e.running_max} | "
                f"{e.waiting_max} | {e.preemptions} | {e.cuts_kv} / {e.cuts_waiting} / "
                f"{e.cuts_latency} |" for e in lim]
    return [*out, ""]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f}"
