"""The placement ILP: build (from constraints.py families), solve in lexicographic stages,
extract a ``Plan``. Mirrors docs/planner.md.

Notation
    m in M        models, offered rate lambda_m (req/s), SLOs, request lengths
    g in G        GPUs, usable memory M_g, cost c_g; nodes group GPUs
    t, U_t        TP degree t; U_t the aligned groups of t GPUs inside a node
    o in O_m      engine options of m: (GPU type, t_o, SM share s_o, batch cap) with capacity
                  mu_o (capacity.py), fixed memory w_o per rank (weights + overhead [+ static
                  KV]) and pooled-KV bytes per unit of traffic kappa_o
    x[m,o,u]      1 if option o of m runs on group u in U_{t_o}          (binary)
    f[m,o,u]      traffic routed to that engine                          (>= 0)
    p[m]          placed traffic of m, <= lambda_m                       (>= 0)
    y[g]          1 if GPU g hosts any engine                            (binary)
    U             utilisation of the busiest engine (millionths); the minimum headroom
                  (routed capacity over routed rate, Plan.headroom_of) is U_SCALE / U

Objective (lexicographic by default)
    [if not all traffic can be placed]  max sum_m p[m] / lambda_m
    min sum_g c_g y[g]
    min U   (max headroom)

Constraints (numbers as in constraints.py)
    (1) f <= mu_o x                      (2) sum_{o,u} f[m,o,u] = p[m]
    (3) sum_{o,u} mu_o x >= H_min p[m]   (4) U_SCALE f[m,o,u] <= mu_o U
    (5) sum_{u ni g} w_o x + kappa_o f <= M_g y[g]
    (6) sum_{u ni g} s_o x <= S y[g]     (7) sum_{u ni g} x <= E y[g]
    (8) sum_{o, u ni g} x[m,o,u] <= 1    (9) y ordered within nodes and across identical nodes
    (10) x[m,o,u] <= y[g], g in u        (11) lambda_m sum_{o,u} x[m,o,u] >= p[m]
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fineserve.errors import PlanInfeasible
from fineserve.planner import lns
from fineserve.planner.assemble import Choice, assemble_plan
from fineserve.planner.bounds import cost_lower_bound, headroom_upper_bound
from fineserve.planner.builder import Builder, CpSatBuilder, SolveResult, make_builder
from fineserve.planner.configuration import configuration_bound
from fineserve.planner.constraints import (
    ALL_FAMILIES,
    FRACTION_SCALE,
    all_traffic,
    gpu_cost,
    pin_all_placed,
    placed_traffic,
)
from fineserve.planner.improve import placed_from_plan
from fineserve.planner.options import EngineOption
from fineserve.planner.ranking import rank
from fineserve.planner.relaxpack import relax_and_pack
from fineserve.planner.rounding import rounded_plan
from fineserve.planner.schema import Instance, Objective, Plan, SolveReport, StageReport
from fineserve.planner.variables import (
    MILLI,
    U_SCALE,
    IlpData,
    PlacementVars,
    headroom_of_u,
    scale,
    u_for_headroom,
    utilisation,
)
from fineserve.planner.warmstart import all_vars, hint_from_plan, places_all

FocusOf = Callable[[IlpData, PlacementVars], lns.Focus]  # lns.short_of_traffic, lns.busiest
# a stage's external bounds: (seconds, best objective so far) -> (bound, better hint)
Prepare = Callable[[float, float | None], tuple[float, dict | None]]


@dataclass(frozen=True, slots=True)
class Preparation:
    """A stage's work outside the solver, in two steps: ``first`` (cheap bounds, maybe a
    hint) and ``then`` (costlier bounds and hints), run only if a short local search from
    the best solution does not meet the bound ``first`` proved."""

    first: Prepare
    then: Prepare | None = None


@dataclass
class BuiltModel:
    b: Builder
    d: IlpData
    v: PlacementVars
    values: dict = field(default_factory=dict)  # the best solution of the current stage
    hinted: dict = field(default_factory=dict)  # the last complete hint given (a solution)
    notes: list[str] = field(default_factory=list)  # for the solve report (hints dropped)


def build_model(
    inst: Instance, options: dict[str, tuple[EngineOption, ...]], backend: str = "ortools",
    d: IlpData | None = None,
) -> BuiltModel:
    """Variables and every constraint family; objectives are set per stage in ``solve``."""
    st = inst.settings
    b = make_builder(backend, st.num_workers, st.seed)
    d = d if d is not None else scale(inst, options)
    v = PlacementVars.create(b, d)
    for family in ALL_FAMILIES:
        family(b, d, v)
    return BuiltModel(b, d, v)


def solve_ilp(
    inst: Instance,
    options: dict[str, tuple[EngineOption, ...]],
    *,
    backend: str = "ortools",
    warm_start: Plan | None = None,
    time_limit_s: float | None = None,
) -> Plan:
    """Solve the placement ILP and return a plan (not yet validated).

    ``time_limit_s`` overrides the instance's limit (the caller may have spent part of it).

    Raises:
        PlanInfeasible: the solver found no plan within the time limit and no warm start was
            given to fall back on.
    """
    t0 = time.perf_counter()
    st = inst.settings
    limit = st.time_limit_s if time_limit_s is None else time_limit_s
    deadline = t0 + limit
    d = scale(inst, options)
    all_placed = warm_start is not None and not warm_start.unplaced
    placement_vars = _x_count(d)
    if placement_vars > MAX_PLACEMENT_VARS:
        # The full model cannot be searched in time: relax-and-pack, else the warm start.
        # (On smaller instances the full ILP finds better headroom: bench/planner_scale.py.)
        if backend == "ortools" and all_placed and st.objective in (
                Objective.LEXICOGRAPHIC, Objective.MIN_GPUS):
            packed, bounds = _relax_and_pack(d, t0, deadline, limit, warm_start)
            if (packed is not None and warm_start is not None
                    and rank(inst, warm_start) < rank(inst, packed)):
                return _keep_warm(warm_start, packed, t0)
            if packed is not None:
                return packed
        else:
            bounds = []
        return _fallback(inst, warm_start, bounds, backend, t0, limit, "the full ILP is too "
                         f"large to search in {limit:g} s ({placement_vars} placement variables)"
                         + ("; relax-and-pack packed nothing in time" if bounds else ""))
    bm = build_model(inst, options, backend, d)
    b, v = bm.b, bm.v
    if warm_start is not None:
        hint = _hint_from_plan(bm, warm_start, deadline - time.perf_counter())
        if hint is not None:
            b.hint(hint)
            bm.hinted = hint
        # what the hint places in the ILP's units: rounding may leave a sliver unplaced;
        # without a hint, whether all traffic fits is for the placed-traffic stage to find
        all_placed = hint is not None and places_all(d, v, hint)
    stages: list[StageReport] = []
    snapshot: Plan | None = None  # plan of the last successful stage
    prep = _Prepare(bm, limit, warm_start)
    if all_placed:
        pin_all_placed(b, d, v)
    else:
        res = _stage(bm, "placed-traffic", "max", placed_traffic(b, d, v), deadline,
                     PLACED_SHARE, lambda x: x / FRACTION_SCALE, stages,
                     focus=lns.short_of_traffic, ceiling=all_traffic(d))
        if not res.has_solution:
            return _fallback(inst, warm_start, stages, backend, t0, limit, notes=bm.notes)
        snapshot = _extract(bm, _report(backend, stages, t0, notes=bm.notes))
    order = _stage_order(st.objective)
    for k, name in enumerate(order):
        share = 1.0 if k == len(order) - 1 else FIRST_STAGE_SHARE[st.objective]
        res = _run_named(bm, name, deadline, share, stages,
                         prep.for_stage(name, stages) if all_placed else None)
        if not res.has_solution:
            if snapshot is None:
                return _fallback(inst, prep.warm, stages, backend, t0, limit, notes=bm.notes)
            note = f"stage {name!r} found no solution in time; plan of the previous stage"
            return _no_worse(_with_report(snapshot, _report(backend, stages, t0,
                                                            [note, *bm.notes])),
                             prep.warm, t0)
        snapshot = _extract(bm, _report(backend, stages, t0, notes=bm.notes))
    assert snapshot is not None  # order is never empty
    return _no_worse(snapshot, prep.warm, t0)


class _Prepare:
    """External bounds and rounded hints for a stage, computed only when CP-SAT has not
    closed the stage itself within ``QUICK_S`` (small instances never pay for them)."""

    def __init__(self, bm: BuiltModel, limit: float, warm: Plan | None) -> None:
        self.bm, self.limit, self.warm = bm, limit, warm
        self.pool: tuple = ()  # configuration-LP columns, reused by the next bound
        self.h_ub = math.inf  # the aggregated headroom bound (H x1000), once computed

    def for_stage(self, name: str, stages: list[StageReport]) -> Preparation | None:
        if name == "cost":
            return Preparation(self._cost)
        if name == "headroom":
            d = self.bm.d
            cost_cap = (round(stages[-1].objective / d.cost_unit * 1000)
                        if stages and stages[-1].name == "cost" else sum(d.cost.values()))
            return Preparation(
                lambda seconds, found: self._headroom(cost_cap, seconds, found),
                lambda seconds, found: self._headroom_columns(cost_cap, seconds, found))
        return None

    def _cost(self, seconds: float, found: float | None) -> tuple[float, dict | None]:
        """Cuts from the aggregated and configuration bounds; a cheaper rounded plan."""
        started = time.perf_counter()
        end = started + seconds
        bm = self.bm
        b, d, v, st = bm.b, bm.d, bm.v, bm.d.inst.settings
        lb = cost_lower_bound(d, min(AGGREGATE_SHARE * self.limit, 0.3 * seconds),
                              st.num_workers)
        b.add(gpu_cost(b, d, v) >= lb, "cut[cost>=aggregate]")
        if found is not None and found <= _achievable_cost(d, lb):
            return _achievable_cost(d, lb), None  # proven: skip the rest
        config = configuration_bound(d, seconds=min(CONFIG_SHARE * self.limit, 0.3 * seconds),
                                     settle=True)
        if config.value > lb:
            b.add(gpu_cost(b, d, v) >= config.value, "cut[cost>=configuration]")
        known = _achievable_cost(d, max(lb, config.value))
        self.pool = config.pool
        cap = found if found is not None else (
            None if self.warm is None else round(self.warm.cost / d.cost_unit * 1000))
        # the rounded start dives on the configuration LP first (dive.py): it needs seconds
        left = seconds - (time.perf_counter() - started)
        better = _rounded_start(d, config.pool, cap, known,
                                min(COST_ROUNDING_SHARE * self.limit, ROUNDING_LEFT * left))
        if better is None:
            return known, None
        if self.warm is None or better.cost < self.warm.cost:
            self.warm = better  # the fallback if no solver stage finds a plan
        return known, _hint_from_plan(bm, better, end - time.perf_counter())

    def _headroom(self, cost_cap: int, seconds: float, found: float | None
                  ) -> tuple[float, dict | None]:
        """The aggregated bound (cheap); the configuration LP's waits for a local search."""
        bm = self.bm
        b, d, v, st = bm.b, bm.d, bm.v, bm.d.inst.settings
        # both bound the capacity-based headroom, hence the routed one (U >= 1 / bound); the
        # bounds must hold exactly: one rounded down cuts off the optimum (review finding 3)
        self.h_ub = headroom_upper_bound(
            d, cost_cap, min(AGGREGATE_SHARE * self.limit, 0.3 * seconds), st.num_workers)
        b.add(v.U >= u_for_headroom(self.h_ub), "cut[U>=aggregate]")
        return u_for_headroom(self.h_ub), None

    def _headroom_columns(self, cost_cap: int, seconds: float, found: float | None
                          ) -> tuple[float, dict | None]:
        """The configuration LP's headroom bound and a plan rounded from its columns."""
        end = time.perf_counter() + seconds
        bm = self.bm
        b, d, v, st = bm.b, bm.d, bm.v, bm.d.inst.settings
        ub = self.h_ub
        config_h = configuration_bound(d, headroom=True, cost_cap=cost_cap, extra=self.pool,
                                       seconds=min(CONFIG_H_SHARE * self.limit, 0.25 * seconds))
        self.pool = config_h.pool
        config_ub = config_h.value + 1  # rounded down to thousandths: exclusive above
        if config_ub < ub:
            b.add(v.U >= u_for_headroom(config_ub), "cut[U>=configuration]")
        placed = rounded_plan(d, self.pool, cost_cap=cost_cap, workers=st.num_workers,
                              seconds=min(ROUNDING_SHARE * self.limit, 0.2 * seconds),
                              headroom=True)
        hint = None
        if placed is not None:
            plan = _placed_plan(d, placed, SolveReport("ilp-rounding", "FEASIBLE", 0.0))
            hint = _hint_from_plan(bm, plan, end - time.perf_counter())
            if hint is not None and found is not None and hint[v.U] >= found:
                hint = None
        return u_for_headroom(min(ub, config_ub)), hint


def _no_worse(plan: Plan, warm: Plan | None, t0: float) -> Plan:
    """The solver's plan, unless the warm start beats it on the objective's stages (placed
    traffic first): CP-SAT can lose a hint that integer rounding made infeasible."""
    if warm is None or rank(plan.instance, plan) <= rank(plan.instance, warm):
        return plan
    r = plan.report
    note = (f"the solver's plan ({r.status}) is worse than the warm start "
            f"({warm.report.method}); returning the warm start with the solver's bounds"
            + (f"; {r.note}" if r.note else ""))
    return _with_report(warm, SolveReport(r.method, "HEURISTIC", time.perf_counter() - t0,
                                          r.stages, note))


def _report(backend: str, stages: list[StageReport], t0: float,
            notes: Sequence[str] = ()) -> SolveReport:
    ok = all(s.status == "OPTIMAL" for s in stages)
    return SolveReport(f"ilp-{backend}", "OPTIMAL" if ok else "FEASIBLE",
                       time.perf_counter() - t0, tuple(stages), "; ".join(notes))


def _with_report(plan: Plan, report: SolveReport) -> Plan:
    return plan.with_report(report)


MAX_PLACEMENT_VARS = 60_000  # above this the full model does not presolve in a minute
# Shares of the time limit for the bounds and the rounded warm start. The configuration LP's
# cost bound gets the most: it is what can prove the GPU count. Its headroom bound reuses
# the columns and needs less.
AGGREGATE_SHARE = 0.12  # per aggregated bound (bounds.py)
CONFIG_SHARE = 0.2  # configuration-LP cost bound (configuration.py)
CONFIG_H_SHARE = 0.1  # configuration-LP headroom bound
# warm start from the configuration LP's columns (dive, rounding): the dive is what finds
# the cheapest plans of memory-bound instances (docs/planner-benchmarks.md, 19 models)
ROUNDING_SHARE = 0.5
# ... in the cost stage more: a failed dive restarts (dive.py), and on the 19-model instance
# with the 2026-11-26 profiles the first attempt fails, about half the restarts succeed, 5-8 s
# each on 2 loaded cores; the GPU count comes first, and the headroom stage's local search
# (EARLY_LNS_SHARE) needs a few seconds only
COST_ROUNDING_SHARE = 0.7
ROUNDING_LEFT = 0.95  # at most this share of what the cost stage has left, for it
# Each stage first runs CP-SAT alone for QUICK_S (or QUICK_SHARE of its time, if less); the
# bounds and rounded hints above are computed only if that did not prove the stage optimal.
QUICK_S = 1.5
QUICK_SHARE = 0.25
# Of what a stage has left after its quick solve and bounds, for large-neighbourhood search
# (lns.py) in the placed-traffic and headroom stages; the solver continues for the rest
# (it also tightens the bound).
LNS_SHARE = 0.8
# Of what a stage has left after its cheap bound, for a first local search before the costly
# bounds and hints (the headroom stage's configuration LP and rounding: 19 models, 2026-11-26
# profiles, 10 s for a plan the search reaches in 1 s)
EARLY_LNS_SHARE = 0.2
PLACED_SHARE = 0.6  # of the limit, for maximising placed traffic when the warm start cannot
# Of what is left, for the first of two stages (the second gets the rest). Max-headroom
# puts its real work first. The lexicographic cost stage ends as soon as its plan meets the
# bound, leaving the rest to headroom; where that takes dive restarts, the GPU count comes
# first (the headroom stage's local search needs a few seconds: EARLY_LNS_SHARE).
FIRST_STAGE_SHARE = {Objective.LEXICOGRAPHIC: 0.8, Objective.MAX_HEADROOM: 0.85,
                     Objective.MIN_GPUS: 1.0, Objective.WEIGHTED: 1.0}


def _achievable_cost(d: IlpData, lb: float) -> float:
    """Round a cost lower bound up to the next cost a set of GPUs can have (exact when every
    GPU costs the same, the common case; otherwise the bound as is)."""
    costs = set(d.cost.values())
    if len(costs) == 1:
        c = costs.pop()
        return -(-int(math.ceil(lb)) // c) * c
    return lb


def _x_count(d: IlpData) -> int:
    return sum(len(d.groups_for(o)) for opts in d.options.values() for o in opts)


def _keep_warm(warm: Plan, packed: Plan, t0: float) -> Plan:
    """The warm start beat relax-and-pack: return it, with relax-and-pack's proven bounds."""
    values = {"cost": warm.cost, "headroom": warm.min_headroom}
    stages = tuple(StageReport(s.name, "FEASIBLE", values[s.name], s.bound, s.seconds)
                   for s in packed.report.stages)
    report = SolveReport(packed.report.method, "HEURISTIC", time.perf_counter() - t0, stages,
                         f"relax-and-pack found a worse plan; returning the warm start "
                         f"({warm.report.method}) with its bounds")
    return _with_report(warm, report)


def _rounded_start(d: IlpData, pool, found: float | None, lower: float, seconds: float
                   ) -> Plan | None:
    """A plan cheaper than ``found`` (ILP cost units; None: any) from the configuration LP's
    columns, if one packs (rounding.py); None when ``found`` already meets the lower bound."""
    cap = sum(d.cost.values()) if found is None else round(found) - 1
    if cap < lower:
        return None
    st = d.inst.settings
    placed = rounded_plan(d, pool, cost_cap=cap, seconds=seconds, workers=st.num_workers)
    if placed is None:
        return None
    return _placed_plan(d, placed, SolveReport("ilp-rounding", "FEASIBLE", 0.0))


def _placed_plan(d: IlpData, placed, report: SolveReport) -> Plan:
    choices = [Choice(d.options[m][i], u) for m, i, u, _ in placed]
    rates = [f / MILLI for *_, f in placed] if d.pooled else None
    placed_rps = {m.name: m.rate_rps for m in d.inst.models}
    return assemble_plan(d.inst, choices, placed_rps, report, d.options, rates)


def _relax_and_pack(d: IlpData, t0: float, deadline: float, limit: float, warm: Plan | None
                    ) -> tuple[Plan | None, list[StageReport]]:
    """Relax-and-pack's plan, or None with the cost bound it proved (for the warm start)."""
    st = d.inst.settings
    result = relax_and_pack(
        d, with_headroom=st.objective is Objective.LEXICOGRAPHIC,
        seconds=limit, workers=st.num_workers,
        clock=lambda: deadline - time.perf_counter(),
        start=None if warm is None else placed_from_plan(d, warm),
    )
    if result is None:
        return None, []
    placed, pstages = result
    units = {"cost": 1000 / d.cost_unit, "headroom": 1000}  # relax-and-pack: H x 1000
    if placed is None:
        found = float("nan") if warm is None else warm.cost
        return None, [StageReport(p.name, "FEASIBLE" if warm is not None else "UNKNOWN", found,
                                  p.bound / units[p.name], p.seconds) for p in pstages]
    stages = tuple(StageReport(p.name, "OPTIMAL" if p.optimal else "FEASIBLE",
                               p.objective / units[p.name], p.bound / units[p.name], p.seconds)
                   for p in pstages)
    status = "OPTIMAL" if all(p.optimal for p in pstages) else "FEASIBLE"
    notes = "; ".join(p.note for p in pstages if p.note)
    report = SolveReport("ilp-ortools", status, time.perf_counter() - t0, stages,
                         "relax-and-pack: aggregated ILP + packing, then local search "
                         "(improve.py)" + (f"; {notes}" if notes else ""))
    return _placed_plan(d, placed, report), []


def _stage_order(obj: Objective) -> tuple[str, ...]:
    return {
        Objective.LEXICOGRAPHIC: ("cost", "headroom"),
        Objective.MIN_GPUS: ("cost",),
        Objective.MAX_HEADROOM: ("headroom", "cost"),
        Objective.WEIGHTED: ("weighted",),
    }[obj]


def _run_named(bm: BuiltModel, name: str, deadline: float, share: float,
               stages: list[StageReport], prepare: Preparation | None = None) -> SolveResult:
    b, d, v = bm.b, bm.d, bm.v
    if name == "cost":
        unit = 1000 / d.cost_unit
        return _stage(bm, "cost", "min", gpu_cost(b, d, v), deadline, share,
                      lambda x: x / unit, stages, prepare)
    if name == "headroom":  # max headroom = min U; reported as headroom U_SCALE / U
        return _stage(bm, "headroom", "min", v.U, deadline, share, headroom_of_u, stages,
                      prepare, focus=lns.busiest)
    # cost + headroom_weight x U (U = 1 / minimum headroom), in ILP units x U_SCALE
    w = round(bm.d.inst.settings.headroom_weight / d.cost_unit * 1000)
    expr = U_SCALE * gpu_cost(b, d, v) + w * v.U
    unit = 1000 * U_SCALE / d.cost_unit
    return _stage(bm, "weighted", "min", expr, deadline, share, lambda x: x / unit, stages)


def _stage(bm: BuiltModel, name: str, sense: str, expr, deadline: float, share: float,
           show: Callable[[float], float], stages: list[StageReport],
           prepare: Preparation | None = None, focus: FocusOf | None = None,
           ceiling: float | None = None) -> SolveResult:
    """Solve one objective, record it, then pin it so later stages keep it.

    With ``prepare`` or ``focus`` the solver first runs alone for ``QUICK_S``; only if that
    does not prove the stage optimal does ``prepare(seconds, found)`` add cuts from outside
    the solver (bounds.py, configuration.py), return their bound (the reported bound is the
    tighter of it and the solver's; meeting it proves the stage optimal) and maybe a better
    hint. Then, with ``focus`` (CP-SAT only), large-neighbourhood search (lns.py) improves
    the best solution for ``LNS_SHARE`` of what is left, and the solver continues from the
    best solution so far. ``ceiling`` is a bound known beforehand (all traffic placed): the
    search runs first, from the stage's hint, and reaching the ceiling ends the stage.
    ``show`` turns the ILP's integer objective into the reported one."""
    b = bm.b
    (b.maximize if sense == "max" else b.minimize)(expr)
    budget = max(0.5, (deadline - time.perf_counter()) * share)
    end = time.perf_counter() + budget
    staged = prepare is not None or focus is not None
    known, hint = ceiling, None
    if ceiling is not None and focus is not None and bm.hinted:
        # the hint is a solution: search around it first, then let the solver prove
        none = SolveResult("UNKNOWN", math.nan, math.nan, 0.0)
        res = _lns(bm, none, sense, LNS_SHARE * budget, focus, ceiling)
        if res.status != "OPTIMAL" and not (
                res.has_solution and _meets(sense, res.objective, ceiling)):
            if res.has_solution:
                b.hint(bm.values)
            res = _solve_keep(bm, max(0.5, end - time.perf_counter()), sense, res)
    else:
        first = min(QUICK_S, QUICK_SHARE * budget) if staged else budget
        res = _solve_keep(bm, first, sense, None)
    if staged and ceiling is None and res.status != "OPTIMAL":
        if prepare is not None:
            known, hint = prepare.first(end - time.perf_counter(),
                                        res.objective if res.has_solution else None)
        bound_now = _tighter(sense, res.bound, known)
        if prepare is not None and prepare.then is not None and hint is None and not (
                res.has_solution and _meets(sense, res.objective, bound_now)):
            if focus is not None:  # a short search first: it often meets the cheap bound
                res = _lns(bm, res, sense, EARLY_LNS_SHARE * (end - time.perf_counter()),
                           focus, bound_now)
            if res.status != "OPTIMAL" and not (
                    res.has_solution and _meets(sense, res.objective, bound_now)):
                more, hint = prepare.then(end - time.perf_counter(),
                                          res.objective if res.has_solution else None)
                known = _tighter(sense, more, known)
                bound_now = _tighter(sense, res.bound, known)
        if hint is None and focus is not None and not (
                res.has_solution and _meets(sense, res.objective, bound_now)):
            res = _lns(bm, res, sense, LNS_SHARE * (end - time.perf_counter()), focus,
                       bound_now)
        if not (res.has_solution and _meets(sense, res.objective, bound_now)):
            if hint is not None:
                b.hint(hint)
            elif res.has_solution:
                b.hint(bm.values)
            res = _solve_keep(bm, max(0.5, end - time.perf_counter()), sense, res)
    if not res.has_solution:
        stages.append(StageReport(name, res.status, float("nan"), float("nan"), res.seconds))
        return res
    bound = _tighter(sense, res.bound, known)
    if res.status == "FEASIBLE" and _meets(sense, res.objective, bound):
        res = dataclasses.replace(res, status="OPTIMAL", bound=res.objective)
        bound = res.objective
    stages.append(StageReport(name, res.status, show(res.objective),
                              show(bound) if bound == bound else math.nan, res.seconds))
    pinned = round(res.objective)
    b.add(expr >= pinned if sense == "max" else expr <= pinned, f"pin[{name}]")
    values = dict(bm.values)
    values[bm.v.U] = _best_u(bm, values)  # U is free until its own stage: hint its best
    b.hint(values)
    bm.hinted = values
    return res


def _lns(bm: BuiltModel, res: SolveResult, sense: str, seconds: float, focus: FocusOf,
         bound: float) -> SolveResult:
    """Large-neighbourhood search from the stage's best solution (CP-SAT only): its best
    becomes the incumbent ``_solve_keep`` compares against."""
    if not isinstance(bm.b, CpSatBuilder) or seconds < 2 * lns.STEP_S or not (
            res.has_solution or bm.hinted):
        return res
    st = bm.d.inst.settings
    # no solution yet (the quick solve did not get through presolve): start from the hint
    start, objective = (bm.values, res.objective) if res.has_solution else (bm.hinted, None)
    t0 = time.perf_counter()
    out = lns.improve(bm.b.model, bm.d, bm.v, start, objective, sense=sense,
                      seconds=seconds, focus=focus(bm.d, bm.v), workers=st.num_workers,
                      seed=st.seed, overload=focus is lns.busiest,
                      stop_at=bound if bound == bound else None)
    spent = res.seconds + time.perf_counter() - t0
    if out.objective is None:
        return dataclasses.replace(res, seconds=spent)
    bm.values = out.values
    if out.proven:  # the last neighbourhood was the whole model, solved to optimality
        return SolveResult("OPTIMAL", out.objective, out.objective, spent)
    bound = res.bound if out.bound is None else _tighter(sense, res.bound, out.bound)
    return dataclasses.replace(res, status="FEASIBLE" if not res.has_solution else res.status,
                               objective=out.objective, bound=bound, seconds=spent)


def _meets(sense: str, objective: float, bound: float) -> bool:
    return bound == bound and (objective <= bound + 1e-6 if sense == "min"
                               else objective >= bound - 1e-6)


def _solve_keep(bm: BuiltModel, seconds: float, sense: str, prior: SolveResult | None
                ) -> SolveResult:
    """Solve; keep the better of this and ``prior`` (whose values are in ``bm.values``),
    with the tighter of both bounds and the time of both."""
    res = bm.b.solve(seconds)
    if prior is None:
        if res.has_solution:
            bm.values = {var: bm.b.value(var) for var in _all_vars(bm)}
        return res
    spent = prior.seconds + res.seconds
    bound = _tighter(sense, prior.bound, res.bound)
    if res.status == "OPTIMAL":
        bm.values = {var: bm.b.value(var) for var in _all_vars(bm)}
        return dataclasses.replace(res, seconds=spent)
    better = res.has_solution and (not prior.has_solution or (
        res.objective < prior.objective if sense == "min" else res.objective > prior.objective))
    if better:
        bm.values = {var: bm.b.value(var) for var in _all_vars(bm)}
        return dataclasses.replace(res, bound=bound, seconds=spent)
    return dataclasses.replace(prior, bound=bound, seconds=spent)


def _tighter(sense: str, solver_bound: float, known: float | None) -> float:
    """The better of the solver's bound and an external one (nan when neither is known)."""
    vals = [x for x in (solver_bound, known) if x is not None and x == x]
    if not vals:
        return math.nan
    return max(vals) if sense == "min" else min(vals)


def _best_u(bm: BuiltModel, values: dict) -> int:
    return utilisation(bm.d, {key: round(values[f]) for key, f in bm.v.f.items()})


def _all_vars(bm: BuiltModel):
    return all_vars(bm.v)


def _extract(bm: BuiltModel, report: SolveReport) -> Plan:
    d, v, val = bm.d, bm.v, bm.values
    choices, rates = [], []
    for key, x in v.x.items():
        if val[x] > 0.5:
            m, i, _ = key
            choices.append(Choice(d.options[m][i], v.group_of(d, key)))
            rates.append(val[v.f[key]] / MILLI if d.pooled else 0.0)
    placed = {m: val[v.p[m]] / MILLI for m in d.models}
    # p is rounded up from the offered rate; never report more than was offered
    placed = {m.name: min(placed[m.name], m.rate_rps) for m in d.inst.models}
    return assemble_plan(d.inst, choices, placed, report, d.options,
                         rates if d.pooled else None)


def _hint_from_plan(bm: BuiltModel, plan: Plan, seconds: float = math.inf) -> dict | None:
    """``plan`` as a feasible ILP solution in integer units (warmstart.py), repaired in at
    most ``seconds``; None, with the reason in ``bm.notes``, when there is none."""
    hint = hint_from_plan(bm.d, bm.v, plan, bm.d.inst.settings.num_workers, seconds)
    if hint.values is None:
        bm.notes.append(f"no hint from the {plan.report.method} plan: {hint.reason}")
    return hint.values


def _fallback(inst: Instance, warm: Plan | None, stages: list[StageReport], backend: str,
              t0: float, limit: float, why: str = "", notes: Sequence[str] = ()) -> Plan:
    if warm is None:
        last = stages[-1].status if stages else "UNKNOWN"
        raise PlanInfeasible(
            f"the {backend} solver found no plan within {limit:.0f} s "
            f"(status {last})",
            hint="raise --time-limit, or plan with a greedy method to get a starting point",
        )
    note = why or "solver found nothing better within the time limit"
    note += f"; returning the warm start ({warm.report.method})"
    note += "".join(f"; {n}" for n in notes)
    report = SolveReport(f"ilp-{backend}", "HEURISTIC", time.perf_counter() - t0,
                         tuple(stages), note)
    return _with_report(warm, report)
