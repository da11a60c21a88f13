"""Relax-and-pack: the cost and headroom stages of a model too large for the full ILP.

Each stage solves the aggregated ILP (bounds.py) and packs its engines (packing.py); the
headroom stage binary-searches the floor the packing must reach and runs the local search
(improve.py) on what packs. The aggregate's optimum bounds each stage, so a packing that
meets it is optimal for the full ILP as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fineserve.planner.improve import headroom_of, improve_headroom
from fineserve.planner.packing import best_split, pack, solve_aggregate
from fineserve.planner.placed import Placed
from fineserve.planner.variables import IlpData

HEADROOM_AGG_SHARE = 0.25  # of the limit, for the headroom stage's aggregate
IMPROVE_SHARE = 0.05  # of the limit, per run of the local search (improve.py)


@dataclass(frozen=True, slots=True)
class PackStage:
    name: str
    optimal: bool
    objective: int  # x1000
    bound: int  # x1000
    seconds: float
    note: str = ""  # where the stage's plan came from, when not from packing


def _cost(d: IlpData, placed: Placed) -> int:
    return sum(d.cost[g] for g in {g for _, _, u, _ in placed for g in u.gpus})


def relax_and_pack(
    d: IlpData, *, with_headroom: bool, seconds: float, workers: int,
    clock: Callable[[], float], start: Placed | None = None,
) -> tuple[Placed | None, list[PackStage]] | None:
    """Cost stage, then (optionally) headroom stage, each as aggregate -> pack; None when
    the aggregate finds nothing, no placement (with the cost bound) when nothing packs.

    Cost: pack the aggregate's cheapest engine set onto as few GPUs as possible, then try the
    most packable engine set at that cost (least SM and memory) for a cheaper packing; the
    aggregate's bound is the stage's bound. Headroom: at the packed cost, pack the
    aggregate's best-H engine set, then binary-search H between what packed (or the local
    search reached) and what failed to pack, each floor's engine set from the slack
    aggregate, until within 0.5% or out of time. ``clock()`` returns seconds left of the
    overall budget.

    Every packing's traffic is re-split first (packing.best_split: the busiest engine as
    idle as memory allows), so packings are compared by their best split, not the
    aggregate's. ``start`` (the warm start's engines) stands in when the cost stage packs
    nothing or packs more GPUs. The headroom stage begins and ends with improve.py's local
    search at the stage's GPU set, and starts from the better of the packing and the start
    (after that search) when they cost the same, so its plan is never below the start's
    headroom.
    """
    started = clock()
    agg = solve_aggregate(d, "cost", seconds=min(seconds * 0.1, clock()), workers=workers)
    if agg is None:
        return None
    lower = agg.bound
    placed = pack(d, agg, d.h_min, min(seconds * 0.15, clock()), workers)
    slack = solve_aggregate(d, "slack", cost_cap=agg.objective,
                            seconds=min(seconds * 0.05, clock()), workers=workers)
    if slack is not None and clock() > 0:
        alt = pack(d, slack, d.h_min, min(seconds * 0.1, clock()), workers,
                   cost_cap=None if placed is None else _cost(d, placed) - 1)
        placed = alt if alt is not None else placed
    note = ""
    improved = None  # the start after the local search, reused by the headroom stage
    if with_headroom and start is not None and (
            placed is None or _cost(d, start) <= _cost(d, placed)):
        improved = improve_headroom(d, start, min(seconds * IMPROVE_SHARE, max(0.0, clock())))
    if start is not None and (placed is None or _cost(d, start) < _cost(d, placed)):
        # the start stands in only if the headroom stage can improve it (else the caller
        # returns it as is, with the bounds)
        gain = improved is not None and headroom_of(d, improved) > headroom_of(d, start)
        if gain or placed is not None:
            placed, note = start, "cost stage: the warm start's GPUs (no cheaper packing found)"
    if placed is None:  # nothing packed: the aggregate's bound is still proven
        return None, [PackStage("cost", False, 0, lower, started - clock())]
    if placed is not start:  # a packing: its traffic split as the aggregate routed it
        placed = best_split(d, placed, clock(), workers)
    cost = _cost(d, placed)
    stages = [PackStage("cost", cost == lower, cost, lower, started - clock(), note)]
    started = clock()
    if not with_headroom:
        return placed, stages
    best = improved if placed is start and improved is not None else improve_headroom(
        d, placed, min(seconds * IMPROVE_SHARE, max(0.0, clock())))
    best_h = headroom_of(d, best)
    if improved is not None and best is not improved and headroom_of(d, improved) > best_h:
        best, best_h = improved, headroom_of(d, improved)  # same cost, more headroom
    # the headroom aggregate needs longer than the cost one (100 models: nothing in 6 s on
    # 2 loaded cores); it gives the stage's bound and the engine sets the packing tries
    top = solve_aggregate(d, "headroom", cost_cap=cost,
                          seconds=min(seconds * HEADROOM_AGG_SHARE, 0.6 * clock()),
                          workers=workers) if clock() > 0 else None
    if top is None:
        stages.append(PackStage("headroom", False, best_h, d.h_cap, started - clock()))
        return best, stages
    upper, target = top.bound, top
    lo, hi, floor = best_h, top.objective, top.objective
    reserve = seconds * IMPROVE_SHARE  # kept for the local search of the last packing

    def left() -> float:
        return clock() - reserve

    while left() > 0 and target is not None:
        trial = pack(d, target, max(floor, best_h + 1), min(seconds * 0.1, left()), workers,
                     cost_cap=cost)
        if trial is not None:  # capacity >= floor; its traffic split may route less
            trial = best_split(d, trial, clock(), workers)
            trial = improve_headroom(d, trial, min(seconds * IMPROVE_SHARE, max(0.0, clock())))
            h = headroom_of(d, trial)
            if h > best_h:
                best_h, best = h, trial
            lo = max(lo, h, floor)
        else:
            hi = floor - 1  # heuristic: treat the floor that failed to pack as too high
        if hi - lo <= max(1, lo // 200) or left() <= 0:  # within 0.5%, or out of time
            break
        floor = (lo + hi + 1) // 2
        target = solve_aggregate(d, "slack", cost_cap=cost, h_floor=floor,
                                 seconds=min(seconds * 0.05, left()), workers=workers)
    if clock() > 0:  # the packed plan may leave room on its GPUs
        best = improve_headroom(d, best, min(seconds * IMPROVE_SHARE, clock()))
        best_h = headroom_of(d, best)
    stages.append(PackStage("headroom", best_h >= upper, best_h, upper, started - clock()))
    final = _cost(d, best)
    if final < cost:  # packing the headroom stage found a cheaper plan: it counts for cost too
        c = stages[0]
        stages[0] = PackStage(c.name, final == c.bound, final, c.bound, c.seconds)
    return best, stages
