"""Arrival processes: when requests come, for one model.

Every process draws from the numpy ``Generator`` it is given, so a trace is a pure function of
its seed. Times are seconds from the start of the trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fineserve.errors import SpecError


class ArrivalProcess(Protocol):
    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        """Sorted arrival times in [0, duration_s)."""
        ...

    @property
    def mean_rate(self) -> float: ...


def _renewal(rng: np.random.Generator, duration_s: float, rate: float,
             draw) -> np.ndarray:
    """Cumulative sums of i.i.d. gaps, drawn in blocks until the duration is covered."""
    if rate <= 0 or duration_s <= 0:
        return np.empty(0)
    out, t = [], 0.0
    block = max(16, int(rate * duration_s * 1.1) + 16)
    while t < duration_s:
        gaps = draw(block)
        times = t + np.cumsum(gaps)
        out.append(times)
        t = float(times[-1])
    all_times = np.concatenate(out)
    return all_times[all_times < duration_s]


@dataclass(frozen=True, slots=True)
class Poisson:
    rate: float  # requests per second

    @property
    def mean_rate(self) -> float:
        return self.rate

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        return _renewal(rng, duration_s, self.rate,
                        lambda n: rng.exponential(1 / self.rate, n))


@dataclass(frozen=True, slots=True)
class Gamma:
    """Gamma-distributed gaps: cv = 1 is Poisson, cv > 1 bursty (as in AlpaServe/MuxServe)."""

    rate: float
    cv: float

    def __post_init__(self) -> None:
        if self.cv <= 0:
            raise SpecError(f"arrival cv must be > 0, got {self.cv}")

    @property
    def mean_rate(self) -> float:
        return self.rate

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        shape = 1 / self.cv**2
        scale = 1 / (self.rate * shape)
        return _renewal(rng, duration_s, self.rate, lambda n: rng.gamma(shape, scale, n))


@dataclass(frozen=True, slots=True)
class Piecewise:
    """Rate changes at given times (each segment Gamma with the same cv)."""

    starts: tuple[float, ...]  # segment start times, first 0
    rates: tuple[float, ...]
    cv: float = 1.0

    @property
    def mean_rate(self) -> float:
        return float(np.mean(self.rates))

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        bounds = [*self.starts, math.inf]
        parts = []
        for k, rate in enumerate(self.rates):
            lo, hi = bounds[k], min(bounds[k + 1], duration_s)
            if hi <= lo or rate <= 0:
                continue
            parts.append(lo + Gamma(rate, self.cv).times(rng, hi - lo))
        return np.concatenate(parts) if parts else np.empty(0)


@dataclass(frozen=True, slots=True)
class Diurnal:
    """Poisson with rate mean x (1 + amplitude x sin(2 pi t / period)), by thinning."""

    mean: float
    amplitude: float = 0.5  # 0..1
    period_s: float = 86400.0

    @property
    def mean_rate(self) -> float:
        return self.mean

    def times(self, rng: np.random.Generator, duration_s: float) -> np.ndarray:
        peak = self.mean * (1 + self.amplitude)
        candidates = Poisson(peak).times(rng, duration_s)
        rate = self.mean * (1 + self.amplitude * np.sin(2 * np.pi * candidates / self.period_s))
        keep = rng.random(candidates.size) < rate / peak
        return candidates[keep]


def power_law_weights(n: int, alpha: float) -> np.ndarray:
    """Popularity of n models: rank^-alpha, normalised (alpha 0 = uniform)."""
    w = np.arange(1, n + 1, dtype=float) ** -alpha
    return w / w.sum()
