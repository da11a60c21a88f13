"""The configuration LP's master problem, its columns and their pricing.

A column is what one GPU of a class holds (configuration.py explains the LP); ``Master`` is
the LP over the columns generated so far, ``price`` finds the most valuable new column under
its duals (pricing.py's DP) and ``generate`` alternates the two until no column improves
the LP. The bounds (configuration.py) and the primal dive (dive.py) share them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ortools.linear_solver import pywraplp

from fineserve.planner.bounds import gpu_groups
from fineserve.planner.pricing import Q_UNITS, RankItem, best_configuration
from fineserve.planner.variables import H_SCALE, MILLI, IlpData

ClassKey = tuple[str, int]  # (GPU type, cost x1000), as bounds.gpu_groups
Rank = tuple[str, int, int]  # (model m, option i, engine traffic phi in milli-rps)
Allowed = frozenset[tuple[str, int]] | None  # options (m, i) a branch allows; None: all


def allows(allowed: Allowed, m: str, i: int) -> bool:
    return allowed is None or (m, i) in allowed


@dataclass(frozen=True, slots=True)
class Column:
    """One GPU's configuration: its class and ranks, sorted."""

    cls: ClassKey
    ranks: tuple[Rank, ...]


Mix = tuple[tuple[Column, int], ...]  # (configuration, GPUs in it): an integer solution
L = 8  # every TP degree divides this: rank contributions become integers (rounding, complete)


PENALTY = 1e4  # cost of an artificial unit of uncovered demand: keeps the master feasible


class LpFailed(RuntimeError):
    """GLOP could not solve the master LP; the bound found so far still holds."""


@dataclass
class Master:
    """The restricted master LP over the columns added so far: min cost, or (``headroom``)
    max H within ``cost_cap``. ``fix`` sets a column's bounds (diving, dive.py); they
    survive the cold rebuild after a numerical failure."""

    d: IlpData
    headroom: bool
    cost_cap: int | None
    fixed: dict = field(default_factory=dict)  # Column -> (lower, upper) bounds on lambda_c
    lp: pywraplp.Solver = field(init=False)
    rows: dict = field(init=False)
    cols: dict[Column, object] = field(init=False)

    def __post_init__(self) -> None:
        d = self.d
        self.lp = pywraplp.Solver.CreateSolver("GLOP")
        inf = self.lp.infinity()
        self.rows, self.cols = {}, {}
        obj = self.lp.Objective()
        self.H = None
        if self.headroom:
            self.H = self.lp.NumVar(0, d.h_cap, "H")
            obj.SetCoefficient(self.H, 1)
            obj.SetMaximization()
        else:
            obj.SetMinimization()
        sign = -1 if self.headroom else 1
        for m in d.models:
            for kind, rhs in self._demand(m).items():
                row = self.lp.Constraint(rhs, inf, f"{kind}[{m}]")
                self.rows[kind, m] = row
                slack = self.lp.NumVar(0, inf, "")
                row.SetCoefficient(slack, 1)
                obj.SetCoefficient(slack, sign * PENALTY)
            if self.headroom:
                row = self.lp.Constraint(0, inf, f"H[{m}]")
                row.SetCoefficient(self.H, -d.lam[m] / H_SCALE)
                self.rows["H", m] = row
                slack = self.lp.NumVar(0, inf, "")
                row.SetCoefficient(slack, 1)
                obj.SetCoefficient(slack, -PENALTY)
        for k, ids in gpu_groups(d).items():
            self.rows["gpus", k] = self.lp.Constraint(-inf, len(ids), f"gpus[{k}]")
        if self.cost_cap is not None:
            self.rows["cost", None] = self.lp.Constraint(-inf, self.cost_cap, "cost")

    def _demand(self, m: str) -> dict[str, float]:
        d = self.d
        out = {"cov": d.h_min * d.lam[m] / MILLI, "rep": replicas(d, m)}
        if d.pooled:
            out["flow"] = d.lam[m]
        return out

    def add(self, col: Column) -> bool:
        if col in self.cols:
            return False
        d = self.d
        lower, upper = self.fixed.get(col, (0, self.lp.infinity()))
        var = self.lp.NumVar(lower, upper, "")
        cost = col.cls[1]
        for m, i, phi in col.ranks:
            t = d.options[m][i].tp
            self.rows["cov", m].SetCoefficient(var, d.mu[m, i] / t)
            self.rows["rep", m].SetCoefficient(var, 1 / t)
            if d.pooled:
                self.rows["flow", m].SetCoefficient(var, phi / t)
            if self.headroom:
                self.rows["H", m].SetCoefficient(var, d.mu[m, i] / t)
        self.rows["gpus", col.cls].SetCoefficient(var, 1)
        if self.cost_cap is not None:
            self.rows["cost", None].SetCoefficient(var, cost)
        if not self.headroom:
            self.lp.Objective().SetCoefficient(var, cost)
        self.cols[col] = var
        return True

    def fix(self, col: Column, lower: float = 0, upper: float = math.inf) -> None:
        """lower <= lambda_c <= upper (no arguments: release it); the column must have been
        added."""
        upper = min(upper, self.lp.infinity())
        self.fixed[col] = (lower, upper)
        self.cols[col].SetBounds(lower, upper)

    def values(self) -> dict[Column, float]:
        """lambda_c of the last solve, for columns in use."""
        return {c: x for c, var in self.cols.items() if (x := var.solution_value()) > 1e-9}

    def solve(self) -> tuple[float, dict]:
        """LP value and multipliers >= 0 of the demand rows, keyed like ``rows``."""
        if self.lp.Solve() != pywraplp.Solver.OPTIMAL:
            # GLOP's incremental re-solve can fail numerically: rebuild and solve cold
            cols = list(self.cols)
            self.__post_init__()
            for col in cols:
                self.add(col)
            if self.lp.Solve() != pywraplp.Solver.OPTIMAL:
                raise LpFailed("configuration LP: GLOP found no optimum")
        duals = {key: abs(row.dual_value()) for key, row in self.rows.items()
                 if key[0] not in ("gpus", "cost")}
        return self.lp.Objective().Value(), duals


def replicas(d: IlpData, m: str) -> int:
    """Engines m needs at least (integer rounding of coverage, as pin_all_placed)."""
    best = max(d.mu[m, i] for i in range(len(d.options[m])))
    return -(-d.h_min * d.lam[m] // (MILLI * best)) if best > 0 else 1


def rank_values(d: IlpData, duals: dict, m: str, i: int) -> tuple[float, float]:
    """Value of a rank of option i: fixed part and per milli-rps of its engine's traffic."""
    t = d.options[m][i].tp
    fixed = (duals.get(("cov", m), 0) + duals.get(("H", m), 0)) * d.mu[m, i] / t
    fixed += duals.get(("rep", m), 0) / t
    return fixed, duals.get(("flow", m), 0) / t


def column_value(d: IlpData, duals: dict, col: Column) -> float:
    total = 0.0
    for m, i, phi in col.ranks:
        fixed, per = rank_values(d, duals, m, i)
        total += fixed + per * phi
    return total


def price(d: IlpData, cls: ClassKey, node_size: int, duals: dict, units: int = Q_UNITS,
          allowed: Allowed = None) -> tuple[list[Column], float]:
    """The best configuration of GPU class ``cls`` under ``duals`` that the pricing DP finds,
    and its proven upper bound on every configuration's value (pricing.py)."""
    gpu_type = cls[0]
    mem = min(d.mem_cap[g] for g in gpu_groups(d)[cls])
    items, pooled = [], d.pooled
    for m in d.models:
        for i, o in enumerate(d.options[m]):
            if o.gpu_type != gpu_type or o.tp > node_size or not allows(allowed, m, i):
                continue
            fixed, per = rank_values(d, duals, m, i)
            hi = min(d.mu[m, i], d.lam[m]) if pooled else 0
            if fixed + per * hi > 1e-12:
                items.append(RankItem(m, i, d.sm[m, i], d.w[m, i], d.kappa[m, i], hi,
                                      fixed, per))
    bound, chosen = best_configuration(items, d.sm_cap, mem,
                                       d.inst.settings.max_engines_per_gpu, units)
    ranks = tuple(sorted((it.model, it.option, phi) for it, phi in chosen))
    # relative padding: the DP sums floats; keep its optimum an upper bound
    return ([Column(cls, ranks)] if ranks else []), bound * (1 + 1e-9) + 1e-9


def node_sizes(d: IlpData) -> dict[ClassKey, int]:
    out = {}
    for k, ids in gpu_groups(d).items():
        out[k] = max(sum(1 for g in ids if d.gpus[g].node == n)
                     for n in {d.gpus[g].node for g in ids})
    return out


def seed_columns(d: IlpData, allowed: Allowed = None) -> list[Column]:
    """One column per option: a lone rank carrying as much traffic as fits."""
    cols = []
    for k, ids in gpu_groups(d).items():
        mem = min(d.mem_cap[g] for g in ids)
        for m in d.models:
            for i, o in enumerate(d.options[m]):
                if (o.gpu_type != k[0] or d.w[m, i] > mem or d.sm[m, i] > d.sm_cap
                        or not allows(allowed, m, i)):
                    continue
                room = (mem - d.w[m, i]) // max(1, d.kappa[m, i])
                phi = min(d.mu[m, i], d.lam[m], room) if d.pooled else 0
                cols.append(Column(k, ((m, i, phi),)))
    return cols


MAX_UNITS = 8 * Q_UNITS  # finest memory resolution of the pricing DP


def generate(master: Master, deadline: float, allowed: Allowed = None,
             max_units: int = MAX_UNITS) -> float:
    """Column generation at the LP's own duals until no column improves the master (at
    memory resolution ``max_units``) or ``deadline`` (perf_counter); returns the LP value.
    Pricing starts coarse and doubles the resolution when no column shows - unless the
    coarse DP's bound (valid at every resolution) already proves none exists. Only the
    min-cost master: a column improves it when worth more than its cost."""
    d, sizes, units = master.d, node_sizes(master.d), Q_UNITS
    value, duals = master.solve()
    while time.perf_counter() < deadline:
        added, proven = False, True
        for k, size in sizes.items():
            cols, bound = price(d, k, size, duals, units, allowed)
            threshold = k[1] * (1 + 1e-7) + 1e-9
            proven &= bound <= threshold
            added |= any(master.add(c) for c in cols if column_value(d, duals, c) > threshold)
        if not added:
            if units >= max_units or proven:
                break
            units *= 2
            continue
        value, duals = master.solve()
    return value
