"""Demand statistics an engine publishes: time-decayed mean and spread of its KV demand.

Pure (time is passed in). The policy reads them as the tail of the demand distribution beyond
the tokens wanted now, so an engine whose load swings keeps memory ahead of its bursts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class DemandStats:
    """Exponentially weighted mean and variance of demand tokens, time constant ``tau_s``."""

    tau_s: float = 30.0
    mean: float = 0.0
    var: float = 0.0
    last: float | None = None

    def update(self, now: float, demand_tokens: int) -> None:
        """Fold in one observation taken at ``now`` (seconds)."""
        x = float(demand_tokens)
        if self.last is None:
            self.mean, self.var, self.last = x, 0.0, now
            return
        dt = max(0.0, now - self.last)
        self.last = now
        a = 1.0 - math.exp(-dt / self.tau_s) if self.tau_s > 0 else 1.0
        d = x - self.mean
        self.mean += a * d
        self.var = (1 - a) * (self.var + a * d * d)  # West's incremental EW variance

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))
