"""``fineserve plan``: spec -> validated plan -> table, YAML or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fineserve.cli.common import err, latency_model, out, run_guarded
from fineserve.errors import SpecError

SpecArg = Annotated[Path | None, typer.Argument(
    help="Planning spec (YAML). Omit to plan the bundled mixed-precision H100 example.",
    show_default=False)]


def plan(
    spec: SpecArg = None,
    *,
    profiles: Annotated[list[Path] | None, typer.Option(
        "--profiles", "-p", help="Extra latency profiles (CSV/Parquet file or folder).")] = None,
    method: Annotated[str, typer.Option(
        help="ilp, or a greedy baseline: static, muxserve, kv-pressure, worst-fit.")] = "ilp",
    objective: Annotated[str | None, typer.Option(
        help="lexicographic, min-gpus, max-headroom or weighted (overrides the spec).")] = None,
    solver: Annotated[str, typer.Option(help="ILP backend: ortools (CP-SAT) or pulp (CBC).")]
    = "ortools",
    kv_mode: Annotated[str | None, typer.Option(
        "--kv-mode", help="pooled or static (overrides the spec).")] = None,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", help="Solver time limit in seconds (overrides the spec).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Write the plan file here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Also plan with every greedy baseline and compare.")] = False,
) -> None:
    """Place models on GPUs (replicas, TP groups, MPS SM shares, KV memory) within their SLOs."""
    run_guarded(lambda: _plan(spec, profiles, method, objective, solver, kv_mode, time_limit,
                              output, as_json, compare))


def _plan(spec, profiles, method, objective, solver, kv_mode, time_limit, output, as_json,
          compare) -> None:
    from dataclasses import replace

    from fineserve.planner.api import PLAN_METHODS, make_plan
    from fineserve.planner.options import engine_options
    from fineserve.planner.planfile import plan_to_dict, save_plan
    from fineserve.planner.render import compare_table, gpu_table, model_table, summary_line
    from fineserve.planner.schema import KVMode, Objective
    from fineserve.planner.spec import load_example, load_spec

    if solver not in ("ortools", "pulp"):
        raise SpecError(f"--solver: unknown backend {solver!r}", hint="use ortools or pulp")
    inst = load_example() if spec is None else load_spec(spec)
    changes = {}
    if objective is not None:
        changes["objective"] = _enum(Objective, objective, "--objective")
    if kv_mode is not None:
        changes["kv_mode"] = _enum(KVMode, kv_mode, "--kv-mode")
    if time_limit is not None:
        if time_limit <= 0:
            raise SpecError("--time-limit: must be > 0 seconds")
        changes["time_limit_s"] = time_limit
    if changes:
        inst = replace(inst, settings=replace(inst.settings, **changes))
    latency = latency_model(profiles)
    with err.status("computing engine options (capacity model)..."):
        try:
            options = engine_options(inst, latency)
        except SpecError as exc:
            where = spec.name if spec is not None else "example"
            raise SpecError(f"{where}: {exc.message}", exc.hint) from None
    methods = [method] + ([m for m in PLAN_METHODS if m != method] if compare else [])
    plans = []
    for name in methods:
        with err.status(f"planning with {name}..."):
            plans.append(make_plan(inst, latency, method=name, backend=solver, options=options))
    result = plans[0]
    if output is not None:
        save_plan(result, output)
    if as_json:
        out.print_json(json.dumps(plan_to_dict(result)))
    else:
        out.print(gpu_table(result))
        out.print(model_table(result))
        out.print(summary_line(result), highlight=False)
        if any(e.estimated for e in result.engines):
            out.print("* capacity from estimated latencies (no measured profile covers it)")
        if compare:
            out.print(compare_table(plans))
    for u in result.unplaced:
        err.print(f"warning: {u.model}: {u.rate_rps:.2f} req/s unplaced - {u.reason}",
                  markup=False, highlight=False)
    if output is not None:
        err.print(f"plan written to {output}")


def _enum(cls, text: str, field: str):
    try:
        return cls(text)
    except ValueError:
        raise SpecError(f"{field}: unknown value {text!r}",
                        hint=f"use one of {', '.join(v.value for v in cls)}") from None
