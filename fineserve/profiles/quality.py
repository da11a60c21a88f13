"""Which measured points are trusted: a point whose repeats disagree wildly is not one quantity.

The profiler ships a point with its ``rel_spread`` ((max - min) / median over its repeats) and
aims for 5%. Some prefill points of the 2026-11-26 H100 run at 100% SMs have repeats from
0.6 ms to 14 ms for one 512-token prompt on Llama-3.1-8B (runs far below the physical floor:
the step's stamps caught part of it), so their median is wrong, not just noisy. Such points
stay in the shipped CSV (provenance) but the latency model and the calibration leave them
out: the table interpolates the cell from its neighbours, or the anchored estimate answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fineserve.profiles.schema import LatencyPoint, ProfileTable

# Five times the profiler's 5% target: past it the repeats are not one distribution.
SPREAD_LIMIT = 0.25


@dataclass(frozen=True, slots=True)
class Screened:
    """A measured table split into the points kept and those left out (with why)."""

    kept: ProfileTable
    rejected: tuple[LatencyPoint, ...]

    def reasons(self) -> tuple[str, ...]:
        """One line per rejected point, for reports."""
        return tuple(
            f"{p.engine.model} {p.engine.precision.name} SM {p.sm_pct:g} {p.phase.value} "
            f"{p.batch} x {p.tokens}: {p.latency_s * 1e3:.2f} ms, repeats spread "
            f"{p.rel_spread:.0%} > {SPREAD_LIMIT:.0%}" for p in self.rejected)


def screen(points: ProfileTable | Iterable[LatencyPoint],
           limit: float = SPREAD_LIMIT) -> Screened:  # fmt: skip
    """Keep the points whose repeats spread at most ``limit``."""
    table = points if isinstance(points, ProfileTable) else ProfileTable(points)
    kept = [p for p in table if p.rel_spread <= limit]
    return Screened(ProfileTable(kept), tuple(p for p in table if p.rel_spread > limit))
