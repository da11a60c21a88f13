"""Large-neighbourhood search around the incumbent, for stages CP-SAT cannot close alone.

On the 19-model / 32-GPU instance at high load the full model (5,600 placement variables)
barely moves from its hint in a few seconds: one improving move - an engine traded for a
larger one, traffic shifted to where KV fits - touches several GPUs at once. Here the same
model is solved again and again with every placement x[m,o,u] fixed to the incumbent except
on the groups inside a few GPUs (flows, p and U stay free everywhere), from the incumbent as
hint; a better solution becomes the incumbent. Half of each neighbourhood is GPUs that hold
the engines the objective is stuck on (``focus``: models short of traffic, the busiest
engines), the rest random. Its size adapts: a neighbourhood solved to optimality without
gain grows, one that ran out of time shrinks. Every solution is a solution of the full model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fineserve.planner.variables import U_SCALE, IlpData, PlacementVars, VarKey, utilisation

STEP_S = 0.3  # per neighbourhood: enough to close 4-6 GPUs of the 19-model instance
MIN_GPUS, START_GPUS, MAX_GPUS = 3, 5, 12
# overload target below the incumbent's U, as a fraction of it: doubled after each step
# that reaches its target, halved after one that gains nothing
FIRST_STEP, MAX_STEP = 0.005, 0.25

Values = dict[cp_model.IntVar, float]  # every variable's value: a solution (or a hint)
Focus = Callable[[Values], set[int]]  # incumbent values -> GPUs worth freeing


@dataclass(frozen=True, slots=True)
class LnsResult:
    values: Values  # best solution found (the incumbent if nothing better)
    objective: float | None  # its objective; None: no solution known (start not verified)
    steps: int
    improvements: int
    proven: bool  # a neighbourhood of every GPU was solved to optimality: nothing better
    bound: float | None = None  # overload: U of every solution is at least this (proven)


def improve(model: cp_model.CpModel, d: IlpData, v: PlacementVars, values: Values,
            objective: float | None, *, sense: str, seconds: float, focus: Focus,
            workers: int, seed: int = 0, overload: bool = False,
            stop_at: float | None = None) -> LnsResult:
    """Improve ``values`` (a solution of ``model`` with objective ``objective``) for
    ``seconds``. ``model`` carries the stage's objective and is not modified. With
    ``objective`` None, ``values`` is a hint not yet confirmed by the solver: the first
    solution found replaces it (with ``overload`` it is taken as a solution of U
    ``values[v.U]``: the stage's hint, feasible by construction).

    ``overload`` (the objective is U): U is a maximum over engines, flat while any
    bottleneck engine is left, and several models usually tie at it. So each neighbourhood
    minimises instead the total overload above a target just below the incumbent's U -
    sum over engines of max(0, U_SCALE f - target mu) - with U kept no worse: moves that
    relieve one bottleneck at a time are accepted, and U drops when all are. The target's
    distance adapts (FIRST_STEP to MAX_STEP of U, doubled after a step that reaches it,
    halved after one without gain). A neighbourhood of every GPU solved to optimality
    without gain proves U above the target: that bound is kept, and the search ends once
    it meets U (then ``proven``). The search ends early once the objective meets
    ``stop_at`` (a bound: nothing better exists)."""
    end = time.perf_counter() + seconds
    rng = random.Random(seed)
    gpus = [g.gpu_id for g in d.gpus]
    size = min(START_GPUS, len(gpus))
    best, best_obj = values, objective
    if best_obj is None and overload:
        best_obj = values[v.U]
    steps = improvements = 0
    now = 0  # the incumbent's overload (``overload`` only)
    step, lower = FIRST_STEP, 0  # overload: the target's distance; U >= lower is proven
    while time.perf_counter() + 0.05 < end and not _reached(sense, best_obj, stop_at):
        if overload:
            u_now = int(best_obj or 0)
            if u_now <= d.u_min:  # the headroom cap: nothing is better
                return LnsResult(best, best_obj, steps, improvements, True, d.u_min)
            target = max(lower, u_now - max(1, int(u_now * step)))
            now = _overload(d, v, best, target)
            if now == 0:  # U above the flows' own utilisation: tighten it, no solve needed
                best = {**best, v.U: _flows_u(d, v, best)}
                best_obj, improvements = best[v.U], improvements + 1
                continue
        free = _neighbourhood(focus(best), gpus, size, rng)
        sub = _fixed_outside(model, d, v, best, free)
        if overload:
            _minimise_overload(sub, d, v, best, free, target, u_now)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = max(1, workers)
        solver.parameters.random_seed = seed + steps
        solver.parameters.cp_model_probing_level = 0
        solver.parameters.max_time_in_seconds = max(0.05, min(STEP_S, end - time.perf_counter()))
        status = solver.solve(sub)
        steps += 1
        found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
        gain = found and (solver.objective_value < now - 0.5 if overload
                          else _better(sense, solver.objective_value, best_obj))
        if gain:
            best = {var: solver.value(sub.get_int_var_from_proto_index(var.index))
                    for var in best}
            if overload:  # U is only bounded above there: tighten it to the flows
                best[v.U] = _flows_u(d, v, best)
            new_obj = best[v.U] if overload else solver.objective_value
            improvements += _better(sense, new_obj, best_obj)
            best_obj = new_obj
        whole = status == cp_model.OPTIMAL and len(free) == len(gpus)
        if whole and not overload:
            return LnsResult(best, best_obj, steps, improvements, True)  # the full model
        if overload:
            if whole and not gain:  # now > 0 is the least overload: no U <= target
                lower = max(lower, target + 1)
                if lower >= best_obj:
                    return LnsResult(best, best_obj, steps, improvements, True, lower)
            if gain and solver.objective_value < 0.5:  # reached the target: aim further
                step = min(MAX_STEP, 2 * step)
            elif not gain:
                step /= 2
        if not gain:  # closed without gain: look wider; out of time: look narrower
            size = (min(size + 1, MAX_GPUS, len(gpus)) if status == cp_model.OPTIMAL
                    else max(size - 1, MIN_GPUS))
    return LnsResult(best, best_obj, steps, improvements, False,
                     lower if overload and lower else None)


def _flows_u(d: IlpData, v: PlacementVars, values: Values) -> int:
    return utilisation(d, {key: round(values[f]) for key, f in v.f.items()})


def _overload(d: IlpData, v: PlacementVars, values: Values, target: int) -> int:
    return sum(max(0, U_SCALE * round(values[f]) - target * d.mu[key[0], key[1]])
               for key, f in v.f.items() if values[v.x[key]] > 0.5)


def _minimise_overload(sub: cp_model.CpModel, d: IlpData, v: PlacementVars, values: Values,
                       free: set[int], target: int, u_now: int) -> None:
    """Objective of ``sub``: total overload above ``target`` over the engines that are or
    may be placed; U no worse than ``u_now``."""
    sub.add(sub.get_int_var_from_proto_index(v.U.index) <= u_now)
    terms = []
    for key, x in v.x.items():
        if values[x] < 0.5 and not set(v.group_of(d, key).gpus) <= free:
            continue  # fixed to 0: no traffic
        mu = d.mu[key[0], key[1]]
        f = sub.get_int_var_from_proto_index(v.f[key].index)
        e = sub.new_int_var(0, U_SCALE * max(1, min(mu, d.lam[key[0]])), "")
        sub.add(e >= U_SCALE * f - target * mu)
        terms.append(e)
    sub.minimize(sum(terms))


def _reached(sense: str, obj: float | None, bound: float | None) -> bool:
    if obj is None or bound is None:
        return False
    return obj <= bound + 1e-6 if sense == "min" else obj >= bound - 1e-6


def _better(sense: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old - 0.5 if sense == "min" else new > old + 0.5


def _neighbourhood(focus: set[int], gpus: list[int], size: int, rng: random.Random
                   ) -> set[int]:
    picked = set(rng.sample(sorted(focus), min(len(focus), (size + 1) // 2)))
    rest = [g for g in gpus if g not in picked]
    picked.update(rng.sample(rest, min(len(rest), size - len(picked))))
    return picked


def _fixed_outside(model: cp_model.CpModel, d: IlpData, v: PlacementVars, values: Values,
                   free: set[int]) -> cp_model.CpModel:
    """A copy of ``model`` with x fixed to ``values`` on every group not inside ``free``,
    hinted with ``values``."""
    sub = model.clone()
    proto = sub.proto
    for key, x in v.x.items():
        if not set(v.group_of(d, key).gpus) <= free:
            dom = proto.variables[x.index].domain
            dom[0] = dom[1] = int(values[x])
    sub.clear_hints()
    for var, val in values.items():
        sub.add_hint(sub.get_int_var_from_proto_index(var.index), int(round(val)))
    return sub


def short_of_traffic(d: IlpData, v: PlacementVars) -> Focus:
    """GPUs holding engines of models with traffic unplaced, and the GPUs with the most
    free memory (where a new engine of such a model would go)."""
    def focus(values: Values) -> set[int]:
        short = {m for m in d.models if values[v.p[m]] < d.lam[m]}
        return (_gpus_of(d, v, values, lambda key: key[0] in short)
                | _emptiest(d, v, values, ROOMY_GPUS))
    return focus


def busiest(d: IlpData, v: PlacementVars) -> Focus:
    """GPUs holding the engines whose utilisation is within 1% of the busiest (those set U),
    and the GPUs with the most free memory."""
    def focus(values: Values) -> set[int]:
        util = {key: values[v.f[key]] / d.mu[key[0], key[1]]
                for key, x in v.x.items() if values[x] > 0.5 and d.mu[key[0], key[1]] > 0}
        top = max(util.values(), default=0.0)
        return (_gpus_of(d, v, values, lambda key: util.get(key, 0.0) >= 0.99 * top)
                | _emptiest(d, v, values, ROOMY_GPUS))
    return focus


ROOMY_GPUS = 3  # GPUs with the most free memory added to every focus


def _gpus_of(d: IlpData, v: PlacementVars, values: Values,
             keep: Callable[[VarKey], bool]) -> set[int]:
    return {g for key, x in v.x.items() if values[x] > 0.5 and keep(key)
            for g in v.group_of(d, key).gpus}


def _emptiest(d: IlpData, v: PlacementVars, values: Values, n: int) -> set[int]:
    """The ``n`` GPUs whose memory row (5) has the most room left under ``values``."""
    def used(g: int) -> float:
        return sum(d.w[m, i] * values[v.x[m, i, k]] + d.kappa[m, i] * values[v.f[m, i, k]]
                   for m, i, k in v.on_gpu[g]) / max(1, d.mem_cap[g])
    return set(sorted(v.on_gpu, key=used)[:n])
