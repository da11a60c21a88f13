"""The one latency interface that planner, simulator and gateway import.

Implementations: ``TableLatency`` (measured profiles, interpolated), ``AnalyticLatency``
(roofline estimate from GPU specs), and ``ProfiledLatency`` (table where measured, the estimate
anchored to the table's edge elsewhere). Every answer carries its ``source`` so callers can
tell a measurement from a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from fineserve.profiles.catalog import ModelSpec
from fineserve.profiles.gpus import GpuSpec


class LatencySource(StrEnum):
    MEASURED = "measured"  # a profiled grid point
    INTERPOLATED = "interpolated"  # between profiled grid points
    CLAMPED = "clamped"  # outside the profiled range: value at the nearest edge, not trusted
    ESTIMATED = "estimated"  # analytic roofline estimate (possibly anchored to a table edge)

    @property
    def trusted(self) -> bool:
        return self is not LatencySource.CLAMPED


@dataclass(frozen=True, slots=True)
class Latency:
    seconds: float
    source: LatencySource


@dataclass(frozen=True, slots=True)
class EngineShape:
    """What a latency depends on besides the batch: GPU type, model at a precision, TP degree."""

    gpu: GpuSpec
    model: ModelSpec
    tp: int = 1

    @property
    def key(self) -> str:
        return f"{self.gpu.name}/{self.model.key}/tp{self.tp}"


@runtime_checkable
class LatencyModel(Protocol):
    """Prefill and decode-step latency of one engine at an MPS SM share.

    ``sm_pct`` is the engine's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (1..100). Latencies are
    non-increasing in ``sm_pct`` and non-decreasing in tokens, batch and context.
    """

    def prefill(
        self, engine: EngineShape, prompt_tokens: int, sm_pct: float, batch: int = 1
    ) -> Latency:
        """Seconds to prefill ``batch`` prompts of ``prompt_tokens`` tokens each in one step."""
        ...

    def decode_step(
        self, engine: EngineShape, batch: int, context_tokens: float, sm_pct: float
    ) -> Latency:
        """Seconds of one decode step producing one token for each of ``batch`` sequences
        whose mean context (prompt + generated so far) is ``context_tokens``."""
        ...

    def covers(self, engine: EngineShape) -> bool:
        """Whether this model can answer for ``engine`` at all."""
        ...
