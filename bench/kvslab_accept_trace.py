"""The acceptance bench's engines and its bursty, skewed and shifting trace.

The trace is three equal phases; in phase k engine k is hot (offered KV ``hot_factor`` x an
equal share of the KV memory, by Little's law with ``tpot_guess``), the others cold
(``cold_frac`` of their hot rate); arrivals are Gamma with ``cv`` inside each phase.

Presets (``--trace``):
  kv-bound  long contexts and long generations (the default; docs/kv-slab.md says why): a
            hot engine needs more concurrent sequences than a third of the memory holds,
            while their decode steps stay cheap enough for its SM share
  edge      the 2026-11-26 H100 run's trace (512 / 192 tokens, hot x4): it sat at the edge,
            where below it KV does not bind and above it the hot fp8 engine is compute-bound
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bench.deploy_h100 import ENGINES
from fineserve.planner.schema import Slo
from fineserve.profiles.catalog import ModelSpec, model_spec
from fineserve.workload.arrivals import Piecewise
from fineserve.workload.lengths import LogNormalLengths
from fineserve.workload.trace import ModelLoad, Trace, generate

GIB, MIB = 2**30, 2**20
SLAB = 64 * MIB  # a Llama-8B-shaped slab: one 2 MiB granule in each of 32 layers
PREFILL_GUESS_S = 0.5  # Little's law: seconds a request spends before its first token


@dataclass(frozen=True, slots=True)
class Engine:
    """One of the three engines: its model and what it costs in KV."""

    name: str
    ref: str  # catalog model
    spec: ModelSpec
    sm_pct: int
    slo: Slo

    @property
    def bytes_per_token(self) -> int:
        return self.spec.kv_bytes_per_token(1)

    def floor_bytes(self, max_model_len: int) -> int:
        """KV for one sequence of max_model_len (vLLM refuses to start with less)."""
        return math.ceil(max_model_len * self.bytes_per_token / SLAB) * SLAB


def engines() -> tuple[Engine, ...]:
    return tuple(Engine(name, ref, model_spec(ref, w, kv), sm, Slo(ttft, tpot))
                 for name, ref, w, kv, sm, _kv_gib, _rate, ttft, tpot in ENGINES)


@dataclass(frozen=True, slots=True)
class TraceShape:
    """What the bursty trace looks like; lengths are log-normal (std = mean / 2), cut at
    ``max_model_len`` (prompt) and 2 x the mean (output)."""

    prompt_mean: int
    output_mean: int
    hot_factor: float  # offered KV of the hot engine / an equal share of the memory
    cold_frac: float  # a cold engine's rate / its hot rate
    cv: float  # Gamma arrivals inside a phase
    tpot_guess: float  # seconds per output token, for Little's law
    max_model_len: int
    kv_gib: float
    duration_s: float  # the whole trace (the GPU replays a prefix if start-up ran long)

    def __post_init__(self) -> None:
        for f in ("prompt_mean", "output_mean", "hot_factor", "cv", "tpot_guess",
                  "max_model_len", "kv_gib", "duration_s"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"trace.{f} must be > 0, got {v}")
        if not 0 <= self.cold_frac <= 1:
            raise ValueError(f"trace.cold_frac must be in [0, 1], got {self.cold_frac}")
        if self.prompt_mean + 2 * self.output_mean > self.max_model_len:
            raise ValueError(f"trace: prompt_mean + 2 x output_mean ({self.prompt_mean} + "
                             f"2 x {self.output_mean}) exceeds max_model_len "
                             f"{self.max_model_len}: raise --max-model-len")

    @property
    def kv_bytes(self) -> int:
        return int(self.kv_gib * GIB) // (2 * MIB) * (2 * MIB)

    @property
    def max_output(self) -> int:
        return min(2 * self.output_mean, self.max_model_len - self.max_prompt)

    @property
    def max_prompt(self) -> int:
        return min(2 * self.prompt_mean, self.max_model_len - self.output_mean)

    @property
    def life_s(self) -> float:
        """A request's expected time in the engine (Little's law)."""
        return PREFILL_GUESS_S + self.output_mean * self.tpot_guess

    @property
    def resident_tokens(self) -> float:
        """Tokens a sequence holds on average over its life (prompt + half its output)."""
        return self.prompt_mean + self.output_mean / 2

    def lengths(self) -> LogNormalLengths:
        return LogNormalLengths(self.prompt_mean, self.prompt_mean / 2, self.output_mean,
                                self.output_mean / 2, max_prompt=self.max_prompt,
                                max_output=self.max_output)


PRESETS = {
    # searched with bench/kvslab_accept_search.py (docs/kv-slab.md, "The kv-bound trace");
    # hot 2.6 (was 2.5): the H100 s5 run's static attainment was 0.607 at 2.5 (premise <= 0.60)
    "kv-bound": TraceShape(prompt_mean=1024, output_mean=256, hot_factor=2.6, cold_frac=0.1,
                           cv=1.5, tpot_guess=0.03, max_model_len=3072, kv_gib=6.0,
                           duration_s=42.0),
    "edge": TraceShape(prompt_mean=512, output_mean=192, hot_factor=4.0, cold_frac=0.15,
                       cv=3.0, tpot_guess=0.04, max_model_len=2048, kv_gib=6.0,
                       duration_s=24.0),
}


def shape_from(preset: str, **overrides: float | int | None) -> TraceShape:
    """A preset with the fields given (not None) replaced."""
    if preset not in PRESETS:
        raise ValueError(f"--trace {preset!r}: known presets are {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def hot_rates(es: tuple[Engine, ...], shape: TraceShape) -> dict[str, float]:
    """Request rate at which an engine's offered KV is ``hot_factor`` x an equal share
    (Little's law: rate x life sequences of ``resident_tokens``)."""
    share = shape.kv_bytes / len(es)
    return {e.name: shape.hot_factor * share / e.bytes_per_token / shape.resident_tokens
            / shape.life_s for e in es}


def make_trace(es: tuple[Engine, ...], shape: TraceShape, seed: int) -> Trace:
    """Three equal phases; in phase k engine k is hot, the others cold."""
    hot = hot_rates(es, shape)
    starts = tuple(shape.duration_s * k / len(es) for k in range(len(es)))
    loads = [ModelLoad(e.name, Piecewise(starts, tuple(
        hot[e.name] * (1.0 if k == i else shape.cold_frac) for k in range(len(es))), shape.cv),
        shape.lengths()) for i, e in enumerate(es)]
    return generate(loads, shape.duration_s, seed)


def offered_kv(trace: Trace, es: tuple[Engine, ...], tpot_guess: float, step_s: float = 1.0
               ) -> dict[str, list[float]]:
    """Per engine, KV bytes its requests would hold in each ``step_s`` window (fluid model)."""
    n = max(1, math.ceil((trace.duration_s + 1) / step_s))
    out = {e.name: [0.0] * n for e in es}
    bpt = {e.name: e.bytes_per_token for e in es}
    for t, m, p, o in zip(trace.arrival_s, trace.model, trace.prompt_tokens,
                          trace.output_tokens, strict=True):
        life = PREFILL_GUESS_S + o * tpot_guess
        for k in range(int(t / step_s), min(n, int((t + life) / step_s) + 1)):
            out[m][k] += (p + o / 2) * bpt[m]
    return out
