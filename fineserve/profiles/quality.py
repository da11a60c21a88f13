"""Which measured points are trusted: a point is one quantity, and a plausible one.

Two screens, each one rule:

- **spread**: repeats that disagree wildly are not one quantity. The profiler aims for a 5%
  ``rel_spread`` ((max - min) / median); some prefill points of the 2026-11-26 H100 run at
  100% SMs had repeats from 0.6 to 14 ms for one 512-token prompt on Llama-3.1-8B, so their
  median is wrong, not just noisy. Past ``SPREAD_LIMIT`` a point is left out (with its turn,
  below).
- **more SMs, not much slower**: a step at a larger SM share of the same engine is never much
  slower than the same step (phase, batch, tokens) at a smaller one; MPS only takes SMs
  away. Session 7's Llama-3.2-3B at SM 100 read 27-28 ms for 128, 512 and 2048-token prompts
  alike while SM 50 read 4.2 / 9.3 / 33 ms, with repeats agreeing (1.4% for 512): the whole
  engine ran ~2.5x slow for its turn. A point slower than one at a smaller share by more
  than ``SLOWER_LIMIT`` (compared only with points that pass the spread screen) is left out
  with the rest of its phase at that share: they were measured in the same slow turn, and
  a lone hole at the grid's edge (the 128-token cell) could not be interpolated.

Left-out points stay in the shipped CSV (provenance); the latency model and the calibration
leave them out: the table interpolates the cell from its neighbours, or the anchored
estimate answers. ``--redo-noisy`` measures them again (``measure/store.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fineserve.profiles.schema import LatencyPoint, ProfileTable

# Five times the profiler's 5% target: past it the repeats are not one distribution.
SPREAD_LIMIT = 0.25
# More SMs may cost a little (MPS scheduling, a kernel choice), never this much: the 3B's
# SM-100 points of session 7 were 1.9-6.6x their SM-50/30 ones; decode at 5-8% is noise.
SLOWER_LIMIT = 0.25


@dataclass(frozen=True, slots=True)
class Screened:
    """A measured table split into the points kept and those left out, with why."""

    kept: ProfileTable
    rejected: tuple[LatencyPoint, ...]
    why: tuple[str, ...] = ()  # one reason per rejected point, same order

    def reasons(self) -> tuple[str, ...]:
        """One line per rejected point, for reports."""
        return tuple(f"{_name(p)}: {p.latency_s * 1e3:.2f} ms, {why}"
                     for p, why in zip(self.rejected, self.why, strict=True))


def _name(p: LatencyPoint) -> str:
    return (f"{p.engine.model} {p.engine.precision.name} SM {p.sm_pct:g} {p.phase.value} "
            f"{p.batch} x {p.tokens}")


def _slower(p: LatencyPoint, fastest_below: dict[tuple, LatencyPoint],
            limit: float) -> str | None:  # fmt: skip
    """Why ``p`` is implausibly slow against its cell at a smaller SM share, or None."""
    ref = fastest_below.get(_cell(p))
    if ref is None or p.latency_s <= ref.latency_s * (1 + limit):
        return None
    return (f"{p.latency_s / ref.latency_s - 1:.0%} slower than at SM {ref.sm_pct:g} "
            f"({ref.latency_s * 1e3:.2f} ms) > {limit:.0%}: more SMs never make a step "
            "much slower")


def _cell(p: LatencyPoint) -> tuple:
    return (p.engine, p.phase, p.batch, p.tokens, p.sm_pct)


def _fastest_below(points: Iterable[LatencyPoint]) -> dict[tuple, LatencyPoint]:
    """(engine, phase, batch, tokens, SM share) -> the fastest point of that cell at a
    smaller SM share of the same engine."""
    cells: dict[tuple, list[LatencyPoint]] = {}
    for p in points:
        cells.setdefault((p.engine, p.phase, p.batch, p.tokens), []).append(p)
    out: dict[tuple, LatencyPoint] = {}
    for cell, pts in cells.items():
        for p in pts:
            below = [q for q in pts if q.sm_pct < p.sm_pct]
            if below:
                out[(*cell, p.sm_pct)] = min(below, key=lambda q: q.latency_s)
    return out


def screen(points: ProfileTable | Iterable[LatencyPoint], limit: float = SPREAD_LIMIT,
           slower_limit: float = SLOWER_LIMIT) -> Screened:  # fmt: skip
    """Keep the points whose repeats spread at most ``limit`` and whose (engine, phase, SM
    share) has no point slower than the same cell at a smaller share by over
    ``slower_limit``. A rejected point takes its whole (engine, phase, SM share) turn with it:
    the table interpolates between SM shares, not inside one share's grid."""
    table = points if isinstance(points, ProfileTable) else ProfileTable(points)
    below = _fastest_below(p for p in table if p.rel_spread <= limit)
    own: dict[LatencyPoint, str] = {}  # a point's own reason to be left out
    slowness: dict[LatencyPoint, float] = {}  # ... x its fastest cell below, where slow
    for p in table:
        if p.rel_spread > limit:
            own[p] = f"repeats spread {p.rel_spread:.0%} > {limit:.0%}"
        elif (reason := _slower(p, below, slower_limit)) is not None:
            own[p] = reason
            slowness[p] = p.latency_s / below[_cell(p)].latency_s
    # the point a turn is left out for: its slowest, else its first noisy one
    named: dict[tuple, LatencyPoint] = {}
    for p in own:
        q = named.get(_turn(p))
        if q is None or slowness.get(p, 0.0) > slowness.get(q, 0.0):
            named[_turn(p)] = p
    kept, rejected, why = [], [], []
    for p in table:
        rep = named.get(_turn(p))
        if rep is None:
            kept.append(p)
            continue
        rejected.append(p)
        why.append(own.get(p) or f"same turn as {rep.batch} x {rep.tokens}: {own[rep]}")
    return Screened(ProfileTable(kept), tuple(rejected), tuple(why))


def _turn(p: LatencyPoint) -> tuple:
    return (p.engine, p.phase, p.sm_pct)
