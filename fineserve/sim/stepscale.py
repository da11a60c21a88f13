"""A latency model whose decode steps (and optionally prefills) are stretched, calibrated.

The profiles measure one engine alone on an otherwise idle GPU, at batches up to 32. A
deployed engine runs behind the gateway, under MPS beside three others, at batches of
20-120: the H100 end-to-end run (docs/benchmarks.md) measured time per output token 1.6-4.4x
the latency model's step at the plan's SM share and the measured batch, the more the larger
the batch and the smaller the share. Until the profiles cover that, the simulator can be told
how much slower a deployed step is, *calibrated on some rates and tested on the others*
(``bench/e2e/calibrate.py``), never fitted to the figures it is then judged on:

    step = decode_scale x model(batch, context, sm) + decode_s_per_seq x batch x 100 / sm

The factor covers what grows with the step (co-location, host work); the per-sequence term
what the profiles cannot see beyond batch 32, where the model's step is flat in batch (weights
read once) but the deployed one grows by about the same time per sequence at any share of the
SMs - compute, so divided by the share. Factors < 1 and negative terms are refused: nothing
deployed beats the profile.

With ``per_seq_by_size`` the per-sequence term is that of a model with Llama-3.1-8B's linear
layers, scaled by each engine's linear parameters per TP rank: a sequence's share of a step
is its GEMM work, which is proportional to them (a 3B's is 0.40 of an 8B's). Without it a 3B
at 20% SMs was charged an 8B's 0.175 ms per sequence and simulated twice as slow as measured
beyond batch 60 (r3, (b) and (c) at x3.5: 24 ms TPOT against 11).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from fineserve.errors import SpecError
from fineserve.profiles.catalog import resolve_arch
from fineserve.profiles.latency import EngineShape, Latency, LatencyModel

REFERENCE_MODEL = "llama-3.1-8b"  # the model the per-sequence term is expressed for


@functools.cache
def _reference_linear_params() -> int:
    return resolve_arch(REFERENCE_MODEL).linear_params


def size_weight(engine: EngineShape) -> float:
    """An engine's per-sequence decode work relative to Llama-3.1-8B on one GPU: its linear
    parameters per TP rank over the 8B's."""
    return engine.model.arch.linear_params / engine.tp / _reference_linear_params()


def per_seq_s(per_seq: float, by_size: bool, engine: EngineShape, batch: int,
              sm_pct: float) -> float:
    """The per-sequence term of one step: ``per_seq`` per sequence at 100% SMs, divided by
    the share, scaled by ``size_weight`` where ``by_size``."""
    w = size_weight(engine) if by_size else 1.0
    return per_seq * w * batch * 100.0 / max(sm_pct, 1e-9)


def profiled(latency: LatencyModel) -> LatencyModel:
    """``latency`` without the calibration wrappers of this module: the profile's step, an
    engine alone on its GPU (what the HBM interference fit measures demand against)."""
    while isinstance(latency, (ScaledLatency, EngineScaledLatency)):
        latency = latency.inner
    return latency


def without_colocation(latency: LatencyModel) -> LatencyModel | None:
    """``latency``'s calibrated MPS decode step divided by its common factor
    (``ScaledLatency.decode_scale``: the model's step x 1, the per-sequence term / the factor),
    the prefill factor and the per-model factors kept: the step of an engine whose MPS
    neighbours are idle, where the co-location slowdown the common factor absorbed does not
    apply (``SimOptions.colocation_when_busy``). The per-model factors stay: they also carry
    each model's profile errors. None where there is no common factor above 1."""
    if isinstance(latency, EngineScaledLatency):
        inner = without_colocation(latency.inner)
        return None if inner is None else replace(latency, inner=inner)
    if isinstance(latency, ScaledLatency) and latency.decode_scale > 1:
        s = latency.decode_scale
        return replace(latency, decode_scale=1.0, decode_s_per_seq=latency.decode_s_per_seq / s)
    return None


@dataclass(frozen=True, slots=True)
class ScaledLatency:
    """``inner`` with every decode step x ``decode_scale`` plus ``decode_s_per_seq`` per
    decoding sequence at 100% SMs (more at a smaller share), every prefill x
    ``prefill_scale``."""

    inner: LatencyModel
    decode_scale: float = 1.0
    prefill_scale: float = 1.0
    decode_s_per_seq: float = 0.0  # seconds per sequence per step on the whole GPU
    per_seq_by_size: bool = False  # the term scaled by the engine's size (size_weight)

    def __post_init__(self) -> None:
        for name in ("decode_scale", "prefill_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 1):
                raise SpecError(f"{name} must be a number >= 1, got {v}")
        v = self.decode_s_per_seq
        if not (math.isfinite(v) and v >= 0):
            raise SpecError(f"decode_s_per_seq must be a number >= 0, got {v}")

    def prefill(self, engine: EngineShape, prompt_tokens: int, sm_pct: float,
                batch: int = 1) -> Latency:
        t = self.inner.prefill(engine, prompt_tokens, sm_pct, batch)
        return Latency(t.seconds * self.prefill_scale, t.source)

    def decode_step(self, engine: EngineShape, batch: int, context_tokens: float,
                    sm_pct: float) -> Latency:
        t = self.inner.decode_step(engine, batch, context_tokens, sm_pct)
        extra = per_seq_s(self.decode_s_per_seq, self.per_seq_by_size, engine, batch, sm_pct)
        return Latency(t.seconds * self.decode_scale + extra, t.source)

    def covers(self, engine: EngineShape) -> bool:
        return self.inner.covers(engine)


@dataclass(frozen=True, slots=True)
class EngineScaledLatency:
    """``inner`` with each engine's decode steps x its own factor (by ``ModelSpec.key``; 1
    for engines not named), plus ``decode_s_per_seq`` per decoding sequence at 100% SMs. For
    time slicing (``--no-mps``), where no single factor fits: the engines of (a) are a
    profiled 8B at batches beyond the profiles' 32 beside a 3B and an int4 7B nobody profiled
    (roofline estimates with an eager host floor: steps too long), so the factors go both
    ways (``bench/e2e/calibrate.py --time-sliced``).

        step = factor[engine] x model(batch, context, sm) + decode_s_per_seq x batch x 100 / sm

    The factor corrects the profile where it was fitted (batches up to the cap of 128 then);
    the per-sequence term is what a step gains per sequence, which the model's step, flat in
    batch beyond the profiles, cannot see: without it a factor fitted at batch ~120 says
    nothing of batch 400 (cap 1024: the third H100 run, where (a) was over-predicted)."""

    inner: LatencyModel
    factors: tuple[tuple[str, float], ...] = ()
    decode_s_per_seq: float = 0.0  # seconds per sequence per step on the whole GPU
    per_seq_by_size: bool = False  # the term scaled by the engine's size (size_weight)

    def __post_init__(self) -> None:
        for key, v in self.factors:
            if not (math.isfinite(v) and v > 0):
                raise SpecError(f"decode factor of {key} must be a positive number, got {v}")
        v = self.decode_s_per_seq
        if not (math.isfinite(v) and v >= 0):
            raise SpecError(f"decode_s_per_seq must be a number >= 0, got {v}")

    def factor(self, engine: EngineShape) -> float:
        return dict(self.factors).get(engine.model.key, 1.0)

    def prefill(self, engine: EngineShape, prompt_tokens: int, sm_pct: float,
                batch: int = 1) -> Latency:
        return self.inner.prefill(engine, prompt_tokens, sm_pct, batch)

    def decode_step(self, engine: EngineShape, batch: int, context_tokens: float,
                    sm_pct: float) -> Latency:
        t = self.inner.decode_step(engine, batch, context_tokens, sm_pct)
        extra = per_seq_s(self.decode_s_per_seq, self.per_seq_by_size, engine, batch, sm_pct)
        return Latency(t.seconds * self.factor(engine) + extra, t.source)

    def covers(self, engine: EngineShape) -> bool:
        return self.inner.covers(engine)
