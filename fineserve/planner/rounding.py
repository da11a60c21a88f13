"""A primal plan from the configuration LP's columns (price-and-branch, then packing).

Column generation (configuration.py) leaves a pool of single-GPU configurations that fit
together well. An integer programme over that pool picks whole GPUs: integer counts lambda_c
covering every model's capacity, traffic and replica floor, with the ranks of each TP-t option
a multiple of t (whole engines), at least cost. The engine counts and traffic it implies go to
the packer (packing.py), which places them on aligned TP groups under every per-GPU row of the
full ILP. A packed plan is feasible for the ILP and serves as its warm start; it is no bound.
"""

from __future__ import annotations

import dataclasses
import math
import time

from ortools.sat.python import cp_model

from fineserve.planner.bounds import gpu_groups, solve
from fineserve.planner.dive import dive
from fineserve.planner.master import Column, L, replicas
from fineserve.planner.mixplace import place_mix
from fineserve.planner.packing import Aggregate, pack
from fineserve.planner.placed import Placed
from fineserve.planner.variables import H_SCALE, MILLI, IlpData, min_headroom

# of rounded_plan's time, for the dive when a cost cap is given: the rounding programme
# after a failed dive seldom finds a mix the dive did not
DIVE_SHARE = 0.9


def round_columns(d: IlpData, pool: tuple[Column, ...], *, cost_cap: int | None,
                  seconds: float, workers: int, headroom: bool = False,
                  hint: tuple[tuple[Column, int], ...] = ()) -> Aggregate | None:
    """Engine counts and traffic per option from the cheapest integer mix of ``pool`` - or,
    with ``headroom``, the mix of largest H within ``cost_cap`` (objective and bound then
    in H x1000). None if the pool has no mix within ``cost_cap`` in time. ``hint`` is a
    mix to start from (a dive's, dive.py)."""
    if not pool:
        return None
    model = cp_model.CpModel()
    size = {k: len(ids) for k, ids in gpu_groups(d).items()}
    lam = {c: model.new_int_var(0, size[c.cls], "") for c in pool}
    cov: dict[str, list] = {m: [] for m in d.models}
    flow: dict[str, list] = {m: [] for m in d.models}
    rep: dict[str, list] = {m: [] for m in d.models}
    ranks: dict[tuple[str, int], list] = {}
    traffic: dict[tuple[str, int], list] = {}
    for c, var in lam.items():
        for m, i, phi in c.ranks:
            share = L // d.options[m][i].tp
            cov[m].append(share * d.mu[m, i] * var)
            flow[m].append(share * phi * var)
            rep[m].append(share * var)
            ranks.setdefault((m, i), []).append(var)
            traffic.setdefault((m, i), []).append(share * phi * var)
    h = model.new_int_var(d.h_min, d.h_cap, "H")
    for m in d.models:
        model.add(MILLI * sum(cov[m]) >= L * d.h_min * d.lam[m])
        if headroom:
            model.add(H_SCALE * sum(cov[m]) >= L * d.lam[m] * h)
        if d.pooled:
            model.add(sum(flow[m]) >= L * d.lam[m])
        model.add(sum(rep[m]) >= L * replicas(d, m))
    engines = {}
    for key, rs in ranks.items():
        t = d.options[key[0]][key[1]].tp
        engines[key] = model.new_int_var(0, len(d.gpus) // t, "")
        model.add(sum(rs) == t * engines[key])  # whole engines
    cost = sum(c.cls[1] * var for c, var in lam.items())
    if cost_cap is not None:
        model.add(cost <= cost_cap)
    if headroom:
        model.maximize(h)
    else:
        model.minimize(cost)
    if hint:
        start = dict(hint)
        for c, var in lam.items():
            model.add_hint(var, start.get(c, 0))
    s, status = solve(model, seconds, workers, d.inst.settings.seed)
    if status not in ("OPTIMAL", "FEASIBLE"):
        return None
    counts = {k: s.value(v) for k, v in engines.items() if s.value(v) > 0}
    # traffic of an option: its ranks' share, at most what the engines can carry
    flows = {k: min(d.mu[k] * counts[k], sum(s.value(x) for x in traffic[k]) // L)
             for k in counts} if d.pooled else {}
    _trim_flows(d, counts, flows)
    mix = tuple((c, s.value(v)) for c, v in lam.items() if s.value(v) > 0)
    return Aggregate(round(s.objective_value), round(s.best_objective_bound), counts, flows,
                     mix)


def _trim_flows(d: IlpData, counts: dict, flows: dict) -> None:
    """Columns may carry more traffic than offered: scale each model's flows down to its rate
    (less KV to place), keeping integers that sum exactly to it."""
    if not d.pooled:
        return
    for m in d.models:
        keys = [k for k in counts if k[0] == m]
        total = sum(flows[k] for k in keys)
        if total <= d.lam[m] or total == 0:
            continue
        left = d.lam[m]
        for j, k in enumerate(keys):
            share = left if j == len(keys) - 1 else flows[k] * d.lam[m] // total
            share = min(share, d.mu[k] * counts[k], left)
            flows[k], left = share, left - share


def rounded_plan(d: IlpData, pool: tuple[Column, ...], *, cost_cap: int | None,
                 seconds: float, workers: int, headroom: bool = False) -> Placed | None:
    """Round the pool (half the time) and pack the result (the rest); with ``headroom`` the
    packer keeps the rounded mix's H. With a ``cost_cap``, first dive (DIVE_SHARE of the
    time, dive.py): for a mix within the cap, placed directly if it decomposes into aligned
    engines (mixplace.py), else its columns and mix seed the rounding, whose engines the
    packer then routes itself; with ``headroom``, bisecting on H (headroom_dive)."""
    end = time.perf_counter() + seconds
    hint: tuple[tuple[Column, int], ...] = ()
    if cost_cap is not None and headroom:
        placed = headroom_dive(d, pool, cost_cap=cost_cap, seconds=DIVE_SHARE * seconds)
        if placed is not None:
            return placed
    if cost_cap is not None and not headroom:
        found = dive(d, pool, cost_cap=cost_cap, seconds=DIVE_SHARE * seconds)
        placed = place_mix(d, found.mix) if found.mix else None
        if placed is not None:
            return placed
        pool, hint = found.pool, found.mix or found.near
    left = max(0.2, end - time.perf_counter())
    agg = round_columns(d, pool, cost_cap=cost_cap, seconds=left / 2, workers=workers,
                        headroom=headroom, hint=hint)
    if agg is None:
        return None
    placed = None if headroom else place_mix(d, agg.mix)
    if placed is not None:
        return placed
    target = agg.objective if headroom else d.h_min
    return pack(d, agg, target, max(0.2, end - time.perf_counter()), workers,
                cost_cap=cost_cap, free_flows=bool(hint))


def headroom_dive(d: IlpData, pool: tuple[Column, ...], *, cost_cap: int, seconds: float
                  ) -> Placed | None:
    """The placed dive of largest capacity-based H found by bisection (geometric, down to
    1%) on H within ``cost_cap``: a dive at H = h is the min-cost dive with every model's
    coverage raised to h (H_min := h). A failed dive counts as infeasible (a heuristic)."""
    end = time.perf_counter() + seconds
    lo, hi, best = d.h_min, d.h_cap + 1, None
    while time.perf_counter() < end and hi - lo > max(1, lo // 100):
        mid = max(lo + 1, min(hi - 1, math.isqrt(lo * hi)))
        found = dive(dataclasses.replace(d, h_min=mid), pool, cost_cap=cost_cap,
                     seconds=end - time.perf_counter())
        pool = found.pool
        placed = place_mix(d, found.mix) if found.mix else None
        if placed is None:
            hi = mid
            continue
        best, lo = placed, max(mid, _capacity_h(d, placed))
    return best


def _capacity_h(d: IlpData, placed: Placed) -> int:
    caps = {m: 0 for m in d.models}
    for m, i, _, _ in placed:
        caps[m] += d.mu[m, i]
    return min_headroom(d, caps)
