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
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fineserve.planner.variables import H_SCALE, MILLI, IlpData, OptKey

GroupKey = tuple[str, int]  # (GPU type, cost): a class of interchangeable GPUs


@dataclass(frozen=True)
class Relaxation:
    """The aggregated model: n[m,i] engines, F[m,i] traffic (pooled), Y[k] GPUs of class k.
    Callers add their objective and cuts to ``model``."""

    model: cp_model.CpModel
    n: dict[OptKey, cp_model.IntVar]
    F: dict[OptKey, cp_model.IntVar]  # empty under static KV
    Y: dict[GroupKey, cp_model.IntVar]
    H: cp_model.IntVar
    cost: cp_model.LinearExprT


def gpu_groups(d: IlpData) -> dict[GroupKey, list[int]]:
    """GPUs that are interchangeable for the relaxation: same type and same cost."""
    groups: dict[GroupKey, list[int]] = {}
    for g in d.gpus:
        groups.setdefault((g.spec.name, d.cost[g.gpu_id]), []).append(g.gpu_id)
    return groups


def relaxation(d: IlpData, h_scale: int = H_SCALE) -> Relaxation:
    """n[m,i] counts engines of option i; each is split over GPU groups as n[m,i,k]. H is in
    1/h_scale (thousandths unless asked finer)."""
    m_ = cp_model.CpModel()
    groups = gpu_groups(d)
    node_size = {}
    for (t, c), ids in groups.items():
        nodes = {d.gpus[g].node for g in ids}
        node_size[t, c] = max(sum(1 for g in ids if d.gpus[g].node == n) for n in nodes)
    Y = {k: m_.new_int_var(0, len(ids), f"Y[{k}]") for k, ids in groups.items()}
    n, nk, F, Fk = {}, {}, {}, {}
    for m in d.models:
        for i, o in enumerate(d.options[m]):
            parts, flows = [], []
            for k, ids in groups.items():
                if k[0] != o.gpu_type or o.tp > node_size[k]:
                    continue
                nk[m, i, k] = m_.new_int_var(0, len(ids) // o.tp, f"n[{m},{i},{k}]")
                parts.append(nk[m, i, k])
                if d.pooled:
                    Fk[m, i, k] = m_.new_int_var(0, d.mu[m, i] * len(ids), f"F[{m},{i},{k}]")
                    m_.add(Fk[m, i, k] <= d.mu[m, i] * nk[m, i, k])
                    flows.append(Fk[m, i, k])
            n[m, i] = m_.new_int_var(0, len(d.gpus), f"n[{m},{i}]")
            m_.add(n[m, i] == sum(parts))
            if d.pooled:
                F[m, i] = m_.new_int_var(0, d.mu[m, i] * len(d.gpus), f"F[{m},{i}]")
                m_.add(F[m, i] == sum(flows))
    H = m_.new_int_var(0, d.h_cap * h_scale // H_SCALE, "H")
    for k, ids in groups.items():
        cap_mem = d.mem_cap[ids[0]]
        mine = [(m, i) for (m, i, kk) in nk if kk == k]
        tp = {key: d.options[key[0]][key[1]].tp for key in mine}
        cnt = {key: nk[key[0], key[1], k] for key in mine}
        m_.add(sum(tp[x] * d.sm[x] * cnt[x] for x in mine) <= d.sm_cap * Y[k])
        mem = [tp[x] * d.w[x] * cnt[x] for x in mine]
        if d.pooled:
            mem += [tp[x] * d.kappa[x] * Fk[x[0], x[1], k] for x in mine]
        m_.add(sum(mem) <= cap_mem * Y[k])
        m_.add(sum(tp[x] * cnt[x] for x in mine) <= d.inst.settings.max_engines_per_gpu * Y[k])
        for m in d.models:
            own = [tp[x] * cnt[x] for x in mine if x[0] == m]
            if own:
                m_.add(sum(own) <= Y[k])  # one engine of a model per GPU
        # large items cannot share a GPU: at most one rank above half of a resource per GPU,
        # two above a third (valid bin-packing cuts; they carry per-GPU packing into totals)
        for share, per_gpu in ((2, 1), (3, 2)):
            big_mem = [tp[x] * cnt[x] for x in mine if d.w[x] * share > cap_mem]
            big_sm = [tp[x] * cnt[x] for x in mine if d.sm[x] * share > d.sm_cap]
            for big in (big_mem, big_sm):
                if big:
                    m_.add(sum(big) <= per_gpu * Y[k])
    for m in d.models:
        keys = [x for x in n if x[0] == m]
        cap = sum(d.mu[x] * n[x] for x in keys)
        m_.add(MILLI * cap >= d.h_min * d.lam[m])
        m_.add(h_scale * cap >= d.lam[m] * H)
        if d.pooled:
            m_.add(sum(F[x] for x in keys) == d.lam[m])
    cost = sum(k[1] * Y[k] for k in groups)
    return Relaxation(m_, n, F, Y, H, cost)


MIN_SOLVE_S = 0.2  # an optional solve with less time left is not started
NO_TIME = "NO_TIME"  # solve()'s status when it had no time: the solver was not started
SOLVED = ("OPTIMAL", "FEASIBLE")


def solve(model: cp_model.CpModel, seconds: float, workers: int, seed: int = 0
          ) -> tuple[cp_model.CpSolver, str]:
    """Solve for at most ``seconds``; returns the solver (for values and bounds) and the
    status name. With no time left the solver is not started (loading a large model alone
    takes a fraction of a second, past the caller's deadline): status NO_TIME, and the
    solver has no values or bound. ``seed`` is the planner settings' (runs repeat where
    CP-SAT's workers allow)."""
    solver = cp_model.CpSolver()
    if seconds <= 0:
        return solver, NO_TIME
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    code = solver.solve(model)
    return solver, solver.status_name(code)


def cost_lower_bound(d: IlpData, seconds: float = 3.0, workers: int = 8) -> int:
    """Lower bound on sum_g c_g y_g over plans placing all traffic (0 if unknown)."""
    r = relaxation(d)
    r.model.minimize(r.cost)
    solver, status = solve(r.model, seconds, workers, d.inst.settings.seed)
    if status == NO_TIME:
        return 0
    bound = solver.best_objective_bound  # cost >= 0: CP-SAT's default bound 0 holds too
    return max(0, math.ceil(bound - 1e-6)) if math.isfinite(bound) else 0


FINE = 10**6  # below a thousandth: billionths, finer than the ILP's U (millionths)
FINE_SHARE = 0.6  # of the bound's time, for H in billionths


def headroom_upper_bound(d: IlpData, max_cost: int, seconds: float = 3.0,
                         workers: int = 8) -> float:
    """Upper bound on the capacity-based headroom (x1000, exact: every plan placing all
    traffic at cost <= max_cost has less). The aggregate's H is an integer, the plan's
    headroom rounded down, so the bound is one unit above the aggregate's: a bound rounded
    down to thousandths cut off the ILP's optimum. H in billionths (finer than U; on the
    19-model instance proven in 0.4-0.6 s, where thousandths take 1.4-2.1 s), then, if that
    is not proven in FINE_SHARE of the time, in thousandths with the rest."""
    end = time.perf_counter() + seconds
    fine, proven = _headroom_bound(d, max_cost, H_SCALE * FINE, FINE_SHARE * seconds, workers)
    left = end - time.perf_counter()
    if proven or left < MIN_SOLVE_S:
        return fine
    return min(fine, _headroom_bound(d, max_cost, H_SCALE, left, workers)[0])


def _headroom_bound(d: IlpData, max_cost: int, h_scale: int, seconds: float, workers: int
                    ) -> tuple[float, bool]:
    """The bound (x1000) with H in 1/h_scale, and whether the aggregate was solved."""
    r = relaxation(d, h_scale)
    r.model.add(r.cost <= max_cost)
    r.model.maximize(r.H)
    solver, status = solve(r.model, seconds, workers, d.inst.settings.seed)
    if status not in SOLVED:  # e.g. stopped in presolve: CP-SAT reports bound 0, not a bound
        return float(d.h_cap), False
    bound = solver.best_objective_bound
    if not math.isfinite(bound):
        return float(d.h_cap), False
    return (min(float(d.h_cap), (math.floor(bound + 1e-6) + 1) * H_SCALE / h_scale),
            status == "OPTIMAL")
