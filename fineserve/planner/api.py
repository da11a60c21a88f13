"""Entry point of the planner: options -> method -> validated plan."""

from __future__ import annotations

import time

from fineserve.errors import PlanInfeasible, SpecError
from fineserve.planner.greedy import METHODS as GREEDY
from fineserve.planner.ilp import solve_ilp
from fineserve.planner.options import EngineOption, engine_options
from fineserve.planner.ranking import rank
from fineserve.planner.schema import Instance, Plan
from fineserve.planner.validate import validate_plan
from fineserve.profiles.latency import LatencyModel

PLAN_METHODS = ("ilp", *GREEDY)


def best_greedy(inst: Instance, options: dict[str, tuple[EngineOption, ...]]) -> Plan:
    """The greedy plan to warm-start from: most traffic placed (as the ILP's first stage
    counts it: served fraction summed over models), then the objective's own order."""
    plans = [build(inst, options) for build in GREEDY.values()]
    return min(plans, key=lambda p: rank(inst, p))


def make_plan(
    inst: Instance,
    latency: LatencyModel,
    *,
    method: str = "ilp",
    backend: str = "ortools",
    options: dict[str, tuple[EngineOption, ...]] | None = None,
) -> Plan:
    """Plan ``inst`` with ``method`` and validate the result.

    Raises:
        SpecError: unknown method, or a model that cannot be served at all (see options.py).
        PlanInfeasible: nothing at all could be placed.
        PlanInvalid: the plan breaks a constraint (a planner bug).
    """
    if method not in PLAN_METHODS:
        raise SpecError(f"--method: unknown method {method!r}",
                        hint=f"use one of {', '.join(PLAN_METHODS)}")
    t0 = time.perf_counter()
    options = options if options is not None else engine_options(inst, latency)
    if method == "ilp":
        warm = best_greedy(inst, options)
        # the time limit covers the whole planning call, warm start included
        # (5% is kept back for assembling and validating the plan)
        left = max(1.0, 0.95 * inst.settings.time_limit_s - (time.perf_counter() - t0))
        plan = solve_ilp(inst, options, backend=backend, warm_start=warm, time_limit_s=left)
    else:
        plan = GREEDY[method](inst, options)
    if not plan.engines:
        raise PlanInfeasible(
            f"nothing fits: no model could be placed on the {inst.cluster.num_gpus} GPUs",
            hint="add GPUs, use smaller precisions, or relax the SLOs",
        )
    return validate_plan(inst, plan, latency)
