"""Packing: solve the aggregated ILP (bounds.py), then pack its engines onto GPUs.

The aggregated model decides how many engines of each option to run; a small CP-SAT model
then assigns them to aligned TP groups of the first Y GPUs, respecting every per-GPU row of
the full ILP (SM, memory with pooled KV for each engine's traffic, engine count, one engine
per model). A packing is feasible for the full ILP. For the cost stage it has the
aggregate's objective when it uses as many GPUs as the aggregate (then both are optimal
together, without searching the ILP's symmetric per-GPU space - what makes 100-model
instances tractable); for the headroom stage its routed headroom is at most the aggregate's
capacity-based one, with traffic split as pooled KV's aggregate routes it, or in proportion
to capacity under static KV; best_split then re-routes a pooled packing with its busiest
engine as idle as memory allows. relaxpack.py runs the stages on these steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fineserve.planner.bounds import Relaxation, relaxation, solve
from fineserve.planner.improve import headroom_of, split_by_capacity
from fineserve.planner.master import Mix
from fineserve.planner.placed import Placed, PlacedEngine
from fineserve.planner.variables import IlpData
from fineserve.planner.warmstart import REPAIR_SECONDS, repair_flows

OptionKey = tuple[str, int]  # (model, option index)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The aggregated model's engine set: how many engines of each option, and the traffic
    each option carries (pooled KV; empty or zero otherwise)."""

    objective: int  # cost x1000 or H x1000
    bound: int
    counts: dict[OptionKey, int]  # engines
    flows: dict[OptionKey, int]  # milli-rps
    mix: Mix = ()  # (configuration, GPUs) behind the counts, when rounded from columns


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
        engine, kv = slack_weights(d)
        use = sum(engine[k] * v for k, v in r.n.items())
        if d.pooled:  # F is in milli-rps
            use += sum(kv[k] * f for k, f in r.F.items())
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


SLACK_UNIT = 10**9  # the slack objective's unit: billionths of a GPU


def slack_weights(d: IlpData) -> tuple[dict[OptionKey, int], dict[OptionKey, int]]:
    """The slack objective's weights in SLACK_UNIT: the SM and fixed memory one engine of each
    option takes (over all its ranks), and the pooled KV one milli-rps of its traffic takes.
    KV per milli-rps is ~1e-6 of a GPU: in millionths it truncated to a few units or 0."""
    cap = max(d.mem_cap.values())
    engine, kv = {}, {}
    for m in d.models:
        for i, o in enumerate(d.options[m]):
            engine[m, i] = o.tp * (SLACK_UNIT * d.sm[m, i] // d.sm_cap
                                   + SLACK_UNIT * d.w[m, i] // cap)
            kv[m, i] = o.tp * (SLACK_UNIT * d.kappa[m, i] // cap)
    return engine, kv


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
            placed.append(PlacedEngine(m, j, d.groups[d.options[m][j].tp][k], f))
    # static KV: the aggregate routes no traffic (memory does not depend on it)
    return placed if d.pooled else split_by_capacity(d, placed)


def best_split(d: IlpData, placed: Placed, seconds: float, workers: int) -> Placed:
    """``placed`` with each model's traffic re-split (pooled KV) so that the busiest engine is
    as idle as every GPU's memory allows (warmstart.repair_flows: rows (1)-(5) with the
    engines fixed), if that routes every model's rate and raises the minimum routed
    headroom; else ``placed`` itself (static KV: split in proportion to capacity already).
    A packing's own split (the aggregate's flow per option, spread evenly) can route far
    below its capacity: packings are compared by their best split."""
    if not d.pooled or seconds <= 0 or not placed:
        return placed
    keys = [(p.model, p.option, d.groups[d.options[p.model][p.option].tp].index(p.group))
            for p in placed]
    repair = repair_flows(d, keys, workers, min(REPAIR_SECONDS, seconds))
    if repair is None or any(repair.placed[m] < d.lam[m] for m in d.models):
        return placed
    out = [p._replace(flow=repair.flows[k]) for p, k in zip(placed, keys, strict=True)]
    return out if headroom_of(d, out) > headroom_of(d, placed) else placed
