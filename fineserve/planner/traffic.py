"""Split each model's traffic over its engines so the busiest engine is as idle as possible.

Static KV: proportional to capacity is optimal (no coupling between engines). Pooled KV: an
engine's KV floor grows with its traffic, so GPUs couple the split; a small LP (GLOP) minimises
the highest utilisation t subject to each GPU's memory:

    min t  s.t.  r_e <= t * mu_e,  sum_{e of m} r_e = placed_m,
                 sum_{e on g} (w_e + kappa_e * r_e) <= M_g
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import Instance, KVMode

if TYPE_CHECKING:
    from fineserve.planner.assemble import Choice


def _proportional(choices: list[Choice], placed: dict[str, float]) -> list[float]:
    total = {}
    for c in choices:
        total[c.option.model] = total.get(c.option.model, 0.0) + c.option.capacity_rps
    return [
        placed.get(c.option.model, 0.0) * c.option.capacity_rps / total[c.option.model]
        for c in choices
    ]


def balance_traffic(
    inst: Instance,
    choices: list[Choice],
    placed: dict[str, float],
    fallback: list[float] | None = None,
) -> list[float]:
    """Rate (req/s) per choice, in the order given. ``fallback`` (the solver's own split) is
    used if the LP fails."""
    share = _proportional(choices, placed)
    if inst.settings.kv_mode is KVMode.STATIC or not choices:
        return share
    if _fits(inst, choices, share):
        return share
    return _lp_split(inst, choices, placed) or fallback or share


def _fits(inst: Instance, choices: list[Choice], rates: list[float]) -> bool:
    margin = 1 + inst.settings.pool_burst_margin
    load: dict[int, float] = {}
    for c, r in zip(choices, rates, strict=True):
        for g in c.group.gpus:
            load[g] = load.get(g, 0.0) + c.option.fixed_bytes(KVMode.POOLED) + (
                c.option.kv_bytes_per_rps * r * margin
            )
    caps = {g.gpu_id: usable_bytes(g.spec, inst.settings.memory_utilization)
            for g in inst.cluster.gpus}
    return all(v <= caps[g] for g, v in load.items())


def _lp_split(
    inst: Instance, choices: list[Choice], placed: dict[str, float]
) -> list[float] | None:
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("GLOP")
    margin = 1 + inst.settings.pool_burst_margin
    t = solver.NumVar(0, solver.infinity(), "t")
    r = [solver.NumVar(0, c.option.capacity_rps, f"r{j}") for j, c in enumerate(choices)]
    for j, c in enumerate(choices):
        solver.Add(r[j] <= t * c.option.capacity_rps)
    for m, amount in placed.items():
        mine = [r[j] for j, c in enumerate(choices) if c.option.model == m]
        if mine:
            solver.Add(solver.Sum(mine) == amount)
    caps = {g.gpu_id: usable_bytes(g.spec, inst.settings.memory_utilization)
            for g in inst.cluster.gpus}
    for g, cap in caps.items():
        on = [(j, c) for j, c in enumerate(choices) if g in c.group.gpus]
        if on:
            fixed = sum(c.option.fixed_bytes(KVMode.POOLED) for _, c in on)
            # scale to GiB so GLOP's tolerances stay meaningful
            solver.Add(solver.Sum([c.option.kv_bytes_per_rps * margin / 2**30 * r[j]
                                   for j, c in on]) <= (cap - fixed) / 2**30)
    solver.Minimize(t)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    return [max(0.0, x.solution_value()) for x in r]
