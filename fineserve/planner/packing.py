"""Relax-and-pack: solve the aggregated ILP (bounds.py), then pack its engines onto GPUs.

The aggregated model decides how many engines of each option to run; a small CP-SAT model
then assigns them to aligned TP groups of the first Y GPUs, respecting every per-GPU row of
the full ILP (SM, memory with pooled KV for each engine's traffic, engine count, one engine
per model). A packing is feasible for the full ILP. For the cost stage it has the
aggregate's objective when it uses as many GPUs as the aggregate (then both are optimal
together, without searching the ILP's symmetric per-GPU space - what makes 100-model
instances tractable); for the headroom stage its routed headroom is at most the aggregate's
capacity-based one, with traffic split as pooled KV's aggregate routes it, or in proportion
to capacity under static KV.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fineserve.planner.bounds import Relaxation, relaxation, solve
from fineserve.planner.improve import Placed, improve_headroom, routed, split_by_capacity
from fineserve.planner.variables import IlpData

OptionKey = tuple[str, int]  # (model, option index)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The aggregated model's engine set: how many engines of each option, and the traffic
    each option carries (pooled KV; empty or zero otherwise)."""

    objective: int  # cost x1000 or H x1000
    bound: int
    counts: dict[OptionKey, int]  # engines
    flows: dict[OptionKey, int]  # milli-rps
    mix: tuple = ()  # (configuration, GPUs) behind the counts, when rounded from columns


def solve_aggregate(d: IlpData, stage: str, *, cost_cap: int | None = None,
                    h_floor: int | None = None, seconds: float, workers: int
                    ) -> Aggregate | None:
    """Optimise the relaxation for ``stage``: "cost", "headroom" or "slack"."""
    r: Relaxation = relaxation(d)
    if cost_cap is not None:
        r.model.add(r.cost <= cost_cap)
    if h_floor is not None:
        r.model.add(r.H >= h_floor)
    if stage == "cost":
        r.model.minimize(r.cost)
    elif stage == "headroom":
        r.model.maximize(r.H)
    else:  # "slack": least SM and memory in use, which leaves the packer the most room
        # ... spread over every GPU the cost cap allows (Y as large as possible first)
        cap = max(d.mem_cap.values())
        unit = 10**9  # fractions of a GPU, in billionths: KV per milli-rps is ~1e-6 of one
        use = sum(
            d.options[m][i].tp * (unit * d.sm[m, i] // d.sm_cap + unit * d.w[m, i] // cap) * v
            for (m, i), v in r.n.items())
        if d.pooled:  # F is in milli-rps and kappa in KiB per milli-rps
            use += sum(d.options[m][i].tp * (unit * d.kappa[m, i] // cap) * f
                       for (m, i), f in r.F.items())
        r.model.minimize(use - 10**14 * sum(r.Y.values()))
    s, status = solve(r.model, seconds, workers, d.inst.settings.seed)
    if status not in ("OPTIMAL", "FEASIBLE"):
        return None
    bound = s.best_objective_bound
    bound = math.floor(bound + 1e-6) if stage == "headroom" else math.ceil(bound - 1e-6)
    return Aggregate(
        round(s.objective_value), bound,
        {k: s.value(v) for k, v in r.n.items() if s.value(v) > 0},
        {k: s.value(v) for k, v in r.F.items()},
    )


HEADROOM_AGG_SHARE = 0.25  # of the limit, for the headroom stage's aggregate
IMPROVE_SHARE = 0.05  # of the limit, per run of the local search (improve.py)
ALTERNATIVES = 3  # lower SM levels an engine may fall back to while packing


def _alternatives(d: IlpData, m: str, i: int) -> list[int]:
    """Option i and up to ALTERNATIVES options of m with the same GPU type and TP at lower
    SM shares: small give-backs that let tight aggregate solutions fit the per-GPU rows."""
    o = d.options[m][i]
    lower = sorted((j for j, p in enumerate(d.options[m])
                    if p.gpu_type == o.gpu_type and p.tp == o.tp and p.sm_pct < o.sm_pct),
                   key=lambda j: -d.options[m][j].sm_pct)
    return [i, *lower[:ALTERNATIVES]]


def pack(d: IlpData, agg: Aggregate, h_target: int, seconds: float, workers: int,
         cost_cap: int | None = None, free_flows: bool = False) -> Placed | None:
    """Assign the aggregate's engines to TP groups using as few GPUs (cost) as possible, each
    engine at its option or a lower SM share, keeping every model's capacity >= h_target x
    its rate (x1000); ``cost_cap`` bounds the cost. With ``free_flows`` (pooled KV) the
    packer also splits each model's traffic over its engines, instead of taking the
    aggregate's flow per option split evenly: a TP engine whose ranks sit on GPUs with
    little KV room then carries less (rounding.py's mixes need that)."""
    engines = []  # (m, i, flow share)
    for (m, i), c in sorted(agg.counts.items()):
        total = agg.flows.get((m, i), 0)
        engines += [(m, i, total // c + (1 if j < total % c else 0)) for j in range(c)]
    model = cp_model.CpModel()
    free = free_flows and d.pooled
    x: dict[tuple[int, int, int], cp_model.IntVar] = {}  # (engine, option, group)
    fv: dict[tuple[int, int, int], cp_model.IntVar] = {}  # its traffic (free_flows)
    on_gpu: dict[int, list[tuple[int, int, int]]] = {g.gpu_id: [] for g in d.gpus}
    for e, (m, i, f) in enumerate(engines):
        o = d.options[m][i]
        keys = [k for k, _ in d.groups_for(o)]
        alts = [j for j in _alternatives(d, m, i) if free or d.mu[m, j] >= f]
        for j in alts:
            for k in keys:
                x[e, j, k] = model.new_bool_var(f"x[{e},{j},{k}]")
                if free:
                    fv[e, j, k] = model.new_int_var(0, min(d.mu[m, j], d.lam[m]), "")
                    model.add(fv[e, j, k] <= min(d.mu[m, j], d.lam[m]) * x[e, j, k])
                for g in d.groups[o.tp][k].gpus:
                    on_gpu[g].append((e, j, k))
        mine = [x[e, j, k] for j in alts for k in keys]
        if not mine:
            return None
        model.add_exactly_one(mine)
    for m in d.models:
        cap = [d.mu[m, j] * var for (e, j, _), var in x.items() if engines[e][0] == m]
        model.add(1000 * sum(cap) >= h_target * d.lam[m])
        if free:
            model.add(sum(f for (e, _, _), f in fv.items() if engines[e][0] == m) == d.lam[m])
    y = {g: model.new_bool_var(f"y[{g}]") for g in on_gpu}
    for g, keys in on_gpu.items():
        if not keys:
            model.add(y[g] == 0)
            continue
        model.add(sum(d.sm[engines[e][0], j] * x[e, j, k] for e, j, k in keys)
                  <= d.sm_cap * y[g])
        if free:
            model.add(sum(d.w[engines[e][0], j] * x[e, j, k]
                          + d.kappa[engines[e][0], j] * fv[e, j, k] for e, j, k in keys)
                      <= d.mem_cap[g] * y[g])
        else:
            model.add(sum((d.w[engines[e][0], j]
                           + (d.kappa[engines[e][0], j] * engines[e][2] if d.pooled else 0))
                          * x[e, j, k] for e, j, k in keys) <= d.mem_cap[g] * y[g])
        model.add(sum(x[key] for key in keys) <= d.inst.settings.max_engines_per_gpu)
        by_model: dict[str, list] = {}
        for e, j, k in keys:
            by_model.setdefault(engines[e][0], []).append(x[e, j, k])
        for lits in by_model.values():
            if len(lits) > 1:
                model.add_at_most_one(lits)
    by_node: dict[str, list[int]] = {}
    for g in d.gpus:
        by_node.setdefault(g.node, []).append(g.gpu_id)
    for ids in by_node.values():  # symmetry: GPUs of a node used in order
        for a, c in zip(ids, ids[1:], strict=False):
            model.add(y[a] >= y[c])
    cost = sum(d.cost[g] * y[g] for g in on_gpu)
    if cost_cap is not None:
        model.add(cost <= cost_cap)
    model.minimize(cost)
    s, status = solve(model, seconds, workers, d.inst.settings.seed)
    if status not in ("OPTIMAL", "FEASIBLE"):
        return None
    placed: Placed = []
    for (e, j, k), var in x.items():
        if s.value(var):
            m, _, f = engines[e]
            f = s.value(fv[e, j, k]) if free else f
            placed.append((m, j, d.groups[d.options[m][j].tp][k], f))
    # static KV: the aggregate routes no traffic (memory does not depend on it)
    return placed if d.pooled else split_by_capacity(d, placed)


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


def _headroom_of(d: IlpData, placed: Placed) -> int:
    """Routed headroom (x1000) of ``placed`` with its own traffic split."""
    by_model: dict[str, list] = {m: [] for m in d.models}
    for m, i, u, f in placed:
        by_model[m].append((i, u, f))
    return min(routed(d, m, engines) for m, engines in by_model.items())


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

    ``start`` (the warm start's engines) stands in when the cost stage packs nothing or
    packs more GPUs. The headroom stage begins and ends with improve.py's local search at
    the stage's GPU set, and starts from the better of the packing and the start (after
    that search) when they cost the same, so its plan is never below the start's headroom.
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
        gain = improved is not None and _headroom_of(d, improved) > _headroom_of(d, start)
        if gain or placed is not None:
            placed, note = start, "cost stage: the warm start's GPUs (no cheaper packing found)"
    if placed is None:  # nothing packed: the aggregate's bound is still proven
        return None, [PackStage("cost", False, 0, lower, started - clock())]
    cost = _cost(d, placed)
    stages = [PackStage("cost", cost == lower, cost, lower, started - clock(), note)]
    started = clock()
    if not with_headroom:
        return placed, stages
    best = improved if placed is start and improved is not None else improve_headroom(
        d, placed, min(seconds * IMPROVE_SHARE, max(0.0, clock())))
    best_h = _headroom_of(d, best)
    if improved is not None and best is not improved and _headroom_of(d, improved) > best_h:
        best, best_h = improved, _headroom_of(d, improved)  # same cost, more headroom
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
            trial = improve_headroom(d, trial, min(seconds * IMPROVE_SHARE, max(0.0, clock())))
            h = _headroom_of(d, trial)
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
        best_h = _headroom_of(d, best)
    stages.append(PackStage("headroom", best_h >= upper, best_h, upper, started - clock()))
    final = _cost(d, best)
    if final < cost:  # packing the headroom stage found a cheaper plan: it counts for cost too
        c = stages[0]
        stages[0] = PackStage(c.name, final == c.bound, final, c.bound, c.seconds)
    return best, stages
