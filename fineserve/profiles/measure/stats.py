"""Repeat statistics of one grid point (standard library only: the engine worker imports it)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def rel_spread(values: Sequence[float]) -> float:
    """(max - min) / median: the schema's ``rel_spread``; 0 for a single value."""
    mid = median(values)
    if mid <= 0:
        raise ValueError(f"median {mid} must be > 0")
    return (max(values) - min(values)) / mid
