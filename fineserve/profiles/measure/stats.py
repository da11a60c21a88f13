"""Repeat statistics of one grid point (standard library only: the engine worker imports it).

The spread reported against issue 5's 5% target is ``rel_spread``: (max - min) / median of a
point's timed repeats, every repeat counted (none is dropped as an outlier). What a repeat is
depends on the method (docs/profiler.md): a decode repeat is one run's mean full-batch step
over ~127 steps; a prefill repeat (method ``step-ts/2 medN``) is the median of N consecutive
blocker + batch runs, because a single run's step is read from two engine-core stamps and one
late stamp (host-side output processing, both signs, ~0.3-3 ms) moves a 5-10 ms step by more
than 5%. The raw runs are kept in the record, and ``run_spread`` reports their range too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

SPREAD_TARGET = 0.05  # issue 5: repeated measurement of one point varies by <= 5%


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


def medians_of(runs: Sequence[float], size: int) -> tuple[float, ...]:
    """Consecutive groups of ``size`` runs, each reduced to its median (one repeat each).

    Raises:
        ValueError: ``size`` < 1, or the runs do not split into whole groups.
    """
    if size < 1 or len(runs) % size:
        raise ValueError(f"{len(runs)} runs do not split into groups of {size}")
    return tuple(median(runs[i:i + size]) for i in range(0, len(runs), size))


def spread_without_one(values: Sequence[float]) -> float:
    """The smallest (max - min) / median left after dropping one value: a diagnostic that
    tells a single outlying repeat (large drop) from a point that varies throughout (none).
    Never the reported spread."""
    if len(values) < 3:
        return rel_spread(values)
    return min(rel_spread([*values[:i], *values[i + 1:]]) for i in range(len(values)))
