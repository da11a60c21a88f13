"""Valid bounds from an aggregated relaxation of the placement ILP.

Forget which GPU each engine sits on and keep only totals per GPU type: n[m,o] engines of
option o use tp_o x s_o SM percent, tp_o x w_o memory (plus pooled KV for their traffic) and
tp_o GPU slots. Every plan maps to a solution of this small integer program, so its optimum
bounds the ILP: a lower bound on cost, and (at a given cost) an upper bound on the minimum
headroom. The ILP adds both as cuts; when its incumbent meets them, optimality is proven
without searching the symmetric per-GPU space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fineserve.planner.variables import H_SCALE, MILLI, IlpData


@dataclass(frozen=True, slots=True)
class Bounds:
    cost_lb: int  # cost x 1000, valid lower bound when all traffic is placed
    headroom_ub: int | None  # H x 1000 at cost <= the cost it was computed for


@dataclass
class Relaxation:
    """The aggregated model: n[m,i] engines, F[m,i] traffic (pooled), Y[t] GPUs of type t."""

    model: cp_model.CpModel
    n: dict
    F: dict
    Y: dict
    H: cp_model.IntVar
    cost: cp_model.LinearExpr


def relaxation(d: IlpData) -> Relaxation:
    m_ = cp_model.CpModel()
    types: dict[str, list[int]] = {}
    for g in d.gpus:
        types.setdefault(g.spec.name, []).append(g.gpu_id)
    Y = {t: m_.new_int_var(0, len(ids), f"Y[{t}]") for t, ids in types.items()}
    n, F = {}, {}
    for m in d.models:
        for i, o in enumerate(d.options[m]):
            most = len(d.groups_for(o))
            n[m, i] = m_.new_int_var(0, most, f"n[{m},{i}]")
            if d.pooled:
                F[m, i] = m_.new_int_var(0, d.mu[m, i] * most, f"F[{m},{i}]")
                m_.add(F[m, i] <= d.mu[m, i] * n[m, i])
    H = m_.new_int_var(0, d.h_cap, "H")
    for t, ids in types.items():
        g = d.gpus[ids[0]]
        mine = [(m, i) for (m, i) in n if d.options[m][i].gpu_type == t]
        tp = {k: d.options[k[0]][k[1]].tp for k in mine}
        m_.add(sum(tp[k] * d.sm[k] * n[k] for k in mine) <= d.sm_cap * Y[t])
        mem = [tp[k] * d.w[k] * n[k] for k in mine]
        if d.pooled:
            mem += [tp[k] * d.kappa[k] * F[k] for k in mine]
        m_.add(sum(mem) <= d.mem_cap[g.gpu_id] * Y[t])
        m_.add(sum(tp[k] * n[k] for k in mine) <= d.inst.settings.max_engines_per_gpu * Y[t])
        for m in d.models:
            own = [tp[k] * n[k] for k in mine if k[0] == m]
            if own:
                m_.add(sum(own) <= Y[t])  # one engine of a model per GPU
        # large items cannot share a GPU: at most one rank above half of a resource per GPU,
        # two above a third (valid bin-packing cuts; they carry per-GPU packing into totals)
        cap_mem, cap_sm = d.mem_cap[g.gpu_id], d.sm_cap
        for share, per_gpu in ((2, 1), (3, 2)):
            big_mem = [tp[k] * n[k] for k in mine if d.w[k] * share > cap_mem]
            big_sm = [tp[k] * n[k] for k in mine if d.sm[k] * share > cap_sm]
            for big in (big_mem, big_sm):
                if big:
                    m_.add(sum(big) <= per_gpu * Y[t])
    for m in d.models:
        keys = [k for k in n if k[0] == m]
        cap = sum(d.mu[k] * n[k] for k in keys)
        m_.add(MILLI * cap >= d.h_min * d.lam[m])
        m_.add(H_SCALE * cap >= d.lam[m] * H)
        if d.pooled:
            m_.add(sum(F[k] for k in keys) == d.lam[m])
    cost = sum(d.cost[ids[0]] * Y[t] for t, ids in types.items())
    return Relaxation(m_, n, F, Y, H, cost)


def solve(model: cp_model.CpModel, seconds: float, workers: int
          ) -> tuple[cp_model.CpSolver, str]:
    """Solve; returns the solver (for values and bounds) and the status name."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.2, seconds)
    solver.parameters.num_workers = workers
    code = solver.solve(model)
    return solver, solver.status_name(code)


def cost_lower_bound(d: IlpData, seconds: float = 3.0, workers: int = 8) -> int:
    """Lower bound on sum_g c_g y_g over plans placing all traffic (0 if unknown)."""
    r = relaxation(d)
    r.model.minimize(r.cost)
    solver, _ = solve(r.model, seconds, workers)
    bound = solver.best_objective_bound
    return max(0, math.ceil(bound - 1e-6)) if math.isfinite(bound) else 0


def headroom_upper_bound(d: IlpData, max_cost: int, seconds: float = 3.0,
                         workers: int = 8) -> int:
    """Upper bound on H (x1000) over plans placing all traffic at cost <= max_cost."""
    r = relaxation(d)
    r.model.add(r.cost <= max_cost)
    r.model.maximize(r.H)
    solver, _ = solve(r.model, seconds, workers)
    bound = solver.best_objective_bound
    return min(d.h_cap, math.floor(bound + 1e-6)) if math.isfinite(bound) else d.h_cap
