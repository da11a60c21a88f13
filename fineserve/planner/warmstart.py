"""A plan as a complete, feasible solution of the ILP, in the ILP's integer units.

A greedy plan is valid in exact arithmetic, but the ILP rounds against it (capacity down,
rates and memory up, docs/planner.md "Integer units"): a GPU packed to the last megabyte
overflows by a few KiB per engine, and CP-SAT silently drops a hint that breaks a row. So the
plan's placement (x, y) is kept and its traffic re-split in integer units by a small CP-SAT
model over the plan's engines only - most placed traffic, then the least busy busiest
engine - under every row that involves flows: (1) capacity, (2) flow conservation, (3)
coverage, (4) U and (5) memory. SM shares (6), engine limits (7, 8) and symmetry (9) depend on
x and y alone, which a valid plan in canonical form already meets. Zero traffic meets the
flow rows, so a split exists whenever each GPU's fixed memory (rounded up to KiB) fits its
cap (rounded down); the hint is then a solution if the repair finds one in its time
(REPAIR_SECONDS, at most the caller's). Otherwise there is no hint, and ``Hint.reason`` says
why (the ILP notes it in its report). It may place a sliver less than the plan when rounding
leaves no room, and then the ILP's placed-traffic stage runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from fineserve.planner.constraints import served_weight
from fineserve.planner.schema import EnginePlacement, Plan
from fineserve.planner.symmetry import canonical_plan
from fineserve.planner.variables import (
    MILLI,
    U_SCALE,
    IlpData,
    PlacementVars,
    VarKey,
    utilisation,
)

REPAIR_SECONDS = 2.0  # the repair model has one flow per engine: it solves in milliseconds


@dataclass(frozen=True, slots=True)
class Hint:
    """Every ILP variable's value reproducing a plan, or None and why not."""

    values: dict[Any, int] | None
    reason: str = ""  # why ``values`` is None


@dataclass(frozen=True, slots=True)
class Repair:
    """Integer traffic for a plan's engines: flow per engine, placed per model, U."""

    flows: dict[VarKey, int]
    placed: dict[str, int]
    u: int


def all_vars(v: PlacementVars) -> Iterator[Any]:
    yield from v.x.values()
    yield from v.f.values()
    yield from v.y.values()
    yield from v.p.values()
    yield v.U


def engine_key(d: IlpData, e: EnginePlacement) -> tuple[int, int] | None:
    """(option index, TP group index) of engine ``e`` in the ILP; None if it has neither."""
    gpu_type = d.gpus[e.gpus[0]].spec.name
    i = next((j for j, o in enumerate(d.options[e.model])
              if (o.gpu_type, o.tp, o.sm_pct, o.max_batch)
              == (gpu_type, e.tp, e.sm_pct, e.max_batch)), None)
    k = next((k for k, u in enumerate(d.groups.get(e.tp, ())) if u.gpus == e.gpus), None)
    return None if i is None or k is None else (i, k)


def plan_keys(d: IlpData, v: PlacementVars, plan: Plan) -> list[tuple[VarKey, float]]:
    """(x key, routed req/s) of every engine of ``plan`` the ILP can express, canonical GPU
    labels; engines whose option or group the ILP lacks are skipped."""
    out = []
    for e in canonical_plan(plan).engines:
        key = engine_key(d, e)
        if key is not None and (e.model, *key) in v.x:
            out.append(((e.model, *key), e.rate_rps))
    return out


def hint_from_plan(d: IlpData, v: PlacementVars, plan: Plan, workers: int = 1,
                   seconds: float = math.inf) -> Hint:
    """Values of every ILP variable reproducing ``plan``'s placement, with traffic re-split
    so that every row holds in integer units (module docstring); the repair gets at most
    ``seconds`` (the caller's time left), none when that is not positive."""
    keys = [k for k, _ in plan_keys(d, v, plan)]
    over = _fixed_overflow(d, keys)
    if over:
        return Hint(None, over)
    limit = min(REPAIR_SECONDS, seconds)
    if limit <= 0:
        return Hint(None, "no time left to re-split its traffic in integer units")
    repair = repair_flows(d, keys, workers, limit)
    if repair is None:
        return Hint(None, f"no integer traffic split found in {limit:.2g} s")
    values = {var: 0 for var in all_vars(v)}
    for key in keys:
        values[v.x[key]] = 1
        for g in v.group_of(d, key).gpus:
            values[v.y[g]] = 1
    for key, f in repair.flows.items():
        values[v.f[key]] = f
    for m, p in repair.placed.items():
        values[v.p[m]] = p
    values[v.U] = repair.u
    return Hint(values)


def _fixed_overflow(d: IlpData, keys: list[VarKey]) -> str:
    """Why no traffic split can exist: a GPU whose engines' fixed memory, rounded up to KiB,
    exceeds its cap, rounded down ("" if none)."""
    fixed: dict[int, int] = {}
    for m, i, k in keys:
        for g in d.groups[d.options[m][i].tp][k].gpus:
            fixed[g] = fixed.get(g, 0) + d.w[m, i]
    for g, used in sorted(fixed.items()):
        if used > d.mem_cap[g]:
            return (f"GPU {g}: fixed memory {used} KiB in integer units is above its cap "
                    f"{d.mem_cap[g]} KiB")
    return ""


def repair_flows(d: IlpData, keys: list[VarKey], workers: int = 1,
                 seconds: float = REPAIR_SECONDS) -> Repair | None:
    """Integer flows for engines ``keys`` (x = 1): the most placed traffic (served fraction,
    as stage 0 counts it), then the smallest U, both within ``seconds``. None when the first
    finds no split in time; if the second does not finish, U is the first split's own."""
    end = time.perf_counter() + seconds
    model = cp_model.CpModel()
    f = {key: model.new_int_var(0, min(d.mu[key[0], key[1]], d.lam[key[0]]), "")
         for key in keys}
    p = {m: model.new_int_var(0, d.lam[m], "") for m in d.models}
    u = model.new_int_var(d.u_min, U_SCALE, "U")
    for m in d.models:
        mine = [key for key in keys if key[0] == m]
        model.add(sum(f[key] for key in mine) == p[m])  # (2)
        model.add(MILLI * sum(d.mu[key[0], key[1]] for key in mine) >= d.h_min * p[m])  # (3)
    for key, fk in f.items():
        model.add(U_SCALE * fk <= d.mu[key[0], key[1]] * u)  # (4); (1) is fk's domain
    on_gpu: dict[int, list[VarKey]] = {}
    for key in keys:
        for g in d.groups[d.options[key[0]][key[1]].tp][key[2]].gpus:
            on_gpu.setdefault(g, []).append(key)
    for g, mine in on_gpu.items():
        fixed = sum(d.w[m, i] for m, i, _ in mine)
        pooled = sum(d.kappa[m, i] * f[m, i, k] for m, i, k in mine) if d.pooled else 0
        model.add(pooled <= d.mem_cap[g] - fixed)  # (5)
    served = sum(served_weight(d, m) * p[m] for m in d.models)  # as placed_traffic
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = max(1, workers)
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.random_seed = d.inst.settings.seed
    model.maximize(served)
    if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    flows = {key: solver.value(x) for key, x in f.items()}
    first = Repair(flows, {m: solver.value(x) for m, x in p.items()}, utilisation(d, flows))
    left = end - time.perf_counter()
    if left <= 0:
        return first
    model.add(served >= round(solver.objective_value))
    model.clear_hints()
    for var in [*f.values(), *p.values()]:
        model.add_hint(var, solver.value(var))
    model.minimize(u)
    solver.parameters.max_time_in_seconds = left
    if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return first
    return Repair({key: solver.value(x) for key, x in f.items()},
                  {m: solver.value(x) for m, x in p.items()}, solver.value(u))


def places_all(d: IlpData, v: PlacementVars, values: dict) -> bool:
    return all(values[v.p[m]] >= d.lam[m] for m in d.models)
