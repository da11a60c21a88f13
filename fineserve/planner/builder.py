"""One small interface over CP-SAT and PuLP so the ILP is written once (constraints.py).

Both libraries overload ``+``, ``*`` and comparisons on their expressions; what differs is how
variables are made, sums are built efficiently, constraints added, hints given and results
read. Data reaching the builder is already scaled to integers (see ilp.py), so both backends
solve the same problem.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SolveResult:
    status: str  # OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN
    objective: float
    bound: float
    seconds: float

    @property
    def has_solution(self) -> bool:
        return self.status in ("OPTIMAL", "FEASIBLE")


class Builder(Protocol):
    def bool_var(self, name: str) -> Any: ...
    def int_var(self, lo: int, hi: int, name: str) -> Any: ...
    def flow_var(self, hi: int, name: str) -> Any: ...  # traffic: integer (CP-SAT) or real
    def add(self, constraint: Any, name: str) -> None: ...
    def implies(self, a: Any, b: Any, name: str) -> None: ...  # a, b binary: a = 1 => b = 1
    def total(self, terms: Iterable[Any]) -> Any: ...
    def minimize(self, expr: Any) -> None: ...
    def maximize(self, expr: Any) -> None: ...
    def hint(self, values: dict[Any, float]) -> None: ...
    def solve(self, time_limit_s: float) -> SolveResult: ...
    def value(self, var: Any) -> float: ...


class CpSatBuilder:
    """OR-Tools CP-SAT."""

    def __init__(self, num_workers: int = 8, seed: int = 0) -> None:
        from ortools.sat.python import cp_model

        self._cp = cp_model
        self.model = cp_model.CpModel()
        self.solver = cp_model.CpSolver()
        self.solver.parameters.num_search_workers = num_workers
        self.solver.parameters.random_seed = seed
        # Probing spends ~10 s on 2 cores deriving 700k binary clauses from the per-GPU
        # rows and never pays back; measured in bench/planner_scale.py.
        self.solver.parameters.cp_model_probing_level = 0

    def bool_var(self, name: str) -> Any:
        return self.model.new_bool_var(name)

    def int_var(self, lo: int, hi: int, name: str) -> Any:
        return self.model.new_int_var(lo, hi, name)

    def flow_var(self, hi: int, name: str) -> Any:
        return self.model.new_int_var(0, hi, name)

    def add(self, constraint: Any, name: str) -> None:
        self.model.add(constraint).with_name(name)

    def implies(self, a: Any, b: Any, name: str) -> None:
        self.model.add_implication(a, b)

    def total(self, terms: Iterable[Any]) -> Any:
        return self._cp.LinearExpr.sum(list(terms))

    def minimize(self, expr: Any) -> None:
        self.model.minimize(expr)

    def maximize(self, expr: Any) -> None:
        self.model.maximize(expr)

    def hint(self, values: dict[Any, float]) -> None:
        self.model.clear_hints()
        for var, val in values.items():
            self.model.add_hint(var, int(round(val)))

    def solve(self, time_limit_s: float) -> SolveResult:
        self.solver.parameters.max_time_in_seconds = max(0.1, time_limit_s)
        t0 = time.perf_counter()
        code = self.solver.solve(self.model)
        status = self.solver.status_name(code)
        status = "UNKNOWN" if status == "MODEL_INVALID" else status
        ok = status in ("OPTIMAL", "FEASIBLE")
        return SolveResult(
            status,
            self.solver.objective_value if ok else math.nan,
            self.solver.best_objective_bound if ok else math.nan,
            time.perf_counter() - t0,
        )

    def value(self, var: Any) -> float:
        return float(self.solver.value(var))


class PulpBuilder:
    """PuLP with its bundled CBC. CBC reports no bound through PuLP: gap is 0 when optimal,
    unknown (nan) otherwise."""

    def __init__(self, num_workers: int = 1, seed: int = 0) -> None:
        import pulp

        self._pulp = pulp
        self.prob = pulp.LpProblem("fineserve", pulp.LpMinimize)
        self.threads = num_workers
        self._hinted = False
        self._count = 0
        # seconds a solve takes beyond CBC's own limit (writing the model, starting CBC,
        # reading the answer; 1-3 s on the 19-model instance): the most seen, kept off the
        # next limit so that a stage's time covers the whole call
        self._overhead = 0.0

    def _name(self, name: str) -> str:
        self._count += 1
        return f"{_safe(name)}_{self._count}"

    def bool_var(self, name: str) -> Any:
        return self._pulp.LpVariable(self._name(name), cat="Binary")

    def int_var(self, lo: int, hi: int, name: str) -> Any:
        return self._pulp.LpVariable(self._name(name), lo, hi, cat="Integer")

    def flow_var(self, hi: int, name: str) -> Any:
        return self._pulp.LpVariable(self._name(name), 0, hi, cat="Continuous")

    def add(self, constraint: Any, name: str) -> None:
        # CBC mis-solves rows with coefficients around 1e7 (memory in KiB): normalise each
        # row so its largest coefficient is 1 before handing it over.
        biggest = max((abs(c) for c in constraint.values()), default=0.0)
        if biggest > 1e3:
            constraint = self._pulp.LpConstraint(
                {var: c / biggest for var, c in constraint.items()}, constraint.sense,
                rhs=-constraint.constant / biggest,
            )
        self.prob += constraint, self._name(name)

    def implies(self, a: Any, b: Any, name: str) -> None:
        self.prob += a <= b, self._name(name)

    def total(self, terms: Iterable[Any]) -> Any:
        return self._pulp.lpSum(terms)

    def minimize(self, expr: Any) -> None:
        self.prob.sense = self._pulp.LpMinimize
        self.prob.setObjective(expr)

    def maximize(self, expr: Any) -> None:
        self.prob.sense = self._pulp.LpMaximize
        self.prob.setObjective(expr)

    def hint(self, values: dict[Any, float]) -> None:
        for var, val in values.items():
            var.setInitialValue(val)
        self._hinted = True

    def solve(self, time_limit_s: float) -> SolveResult:
        pulp = self._pulp
        t0 = time.perf_counter()
        limit = max(1, round(time_limit_s - self._overhead))  # CBC takes whole seconds
        try:
            self.prob.solve(self._cmd(limit, self._hinted))
        except pulp.PulpSolverError:
            if not self._hinted:
                raise
            # CBC can crash (SIGSEGV) reading a MIP start: solve again without it
            left = time_limit_s - (time.perf_counter() - t0)
            self.prob.solve(self._cmd(left, False))
        seconds = time.perf_counter() - t0
        self._overhead = max(self._overhead, seconds - limit)  # < 0 if CBC ended early
        sol = self.prob.sol_status
        if sol == pulp.LpSolutionOptimal:
            obj = float(pulp.value(self.prob.objective) or 0.0)
            return SolveResult("OPTIMAL", obj, obj, seconds)
        if sol == pulp.LpSolutionIntegerFeasible:
            obj = float(pulp.value(self.prob.objective) or 0.0)
            return SolveResult("FEASIBLE", obj, math.nan, seconds)
        if sol == pulp.LpSolutionInfeasible:
            return SolveResult("INFEASIBLE", math.nan, math.nan, seconds)
        return SolveResult("UNKNOWN", math.nan, math.nan, seconds)

    def _cmd(self, seconds: float, warm: bool) -> Any:
        return self._pulp.PULP_CBC_CMD(
            msg=False, timeLimit=max(1, math.ceil(seconds)), threads=self.threads,
            warmStart=warm,
        )

    def value(self, var: Any) -> float:
        return float(var.varValue or 0.0)


def _safe(name: str) -> str:
    """PuLP/CBC names may not contain spaces or some punctuation."""
    return "".join(c if c.isalnum() or c in "_[]" else "_" for c in name)


def make_builder(backend: str, num_workers: int, seed: int) -> Builder:
    if backend == "ortools":
        return CpSatBuilder(num_workers, seed)
    if backend == "pulp":
        return PulpBuilder(1, seed)
    raise ValueError(f"unknown solver backend {backend!r}: use ortools or pulp")
