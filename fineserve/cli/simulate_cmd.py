"""``fineserve simulate`` and ``fineserve compare``: predicted SLO attainment before deploying."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fineserve.cli.common import err, latency_model, out, run_guarded
from fineserve.errors import SpecError

POLICIES = ("none", "fcfs", "deadline", "adaptive")


def simulate(
    plan: Annotated[Path, typer.Argument(help="Plan file (fineserve plan -o).")],
    trace: Annotated[Path, typer.Argument(help="Trace file (fineserve workload -o).")],
    *,
    profiles: Annotated[list[Path] | None, typer.Option(
        "--profiles", "-p", help="Extra latency profiles.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Write the JSON summary here.")] = None,
    policy: Annotated[str, typer.Option(
        help="Local scheduler in front of each engine: none (straight to the engine), fcfs, "
             "deadline or adaptive (the runtime's fineserve.scheduler).")] = "none",
    kv: Annotated[str, typer.Option(
        help="KV memory: plan (the plan's kv_mode), static (partitions) or pooled (KV Slab "
             "pool per GPU).")] = "plan",
    interference: Annotated[str, typer.Option(
        help="HBM interference between co-located engines: off, on (default parameters) or "
             "a parameter file (JSON/YAML, e.g. from bench/interference_h100.py).")] = "off",
    chrome_trace: Annotated[Path | None, typer.Option(
        "--chrome-trace", help="Write a Chrome trace-event JSON (open in ui.perfetto.dev).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write a PNG of KV utilisation and stranded memory per GPU over time.")] = None,
) -> None:
    """Simulate a plan serving a trace; print per-model SLO attainment, latencies, drops and
    queueing delay, and KV memory per GPU."""
    run_guarded(lambda: _simulate(plan, trace, profiles, output, policy, kv, interference,
                                  chrome_trace, plot))


def sim_options(policy: str, kv: str, interference: str, *, chrome_trace: bool = False):
    """SimOptions from the CLI's strings (one-line errors naming the option)."""
    from fineserve.runtime.gateway.config import SchedulerSection
    from fineserve.scheduler import SchedulerConfig
    from fineserve.sim.cluster import KV_MODES, SimOptions
    from fineserve.sim.interference import InterferenceParams

    if policy not in POLICIES:
        raise SpecError(f"--policy: unknown policy {policy!r}", hint=f"use one of {POLICIES}")
    if kv not in KV_MODES:
        raise SpecError(f"--kv: unknown KV mode {kv!r}", hint=f"use one of {KV_MODES}")
    params = None
    if interference == "on":
        params = InterferenceParams()
    elif interference != "off":
        params = InterferenceParams.load(Path(interference))
    # the gateway's default ceiling, so `fineserve simulate` holds the limits a deploy would
    sched = None if policy == "none" else SchedulerConfig(
        policy=policy, max_limit=SchedulerSection().max_limit
    )
    return SimOptions(kv=kv, interference=params, scheduler=sched, chrome_trace=chrome_trace)


def _simulate(plan_path, trace_path, profiles, output, policy, kv, interference, chrome_trace,
              plot) -> None:
    from fineserve.metrics.kv import kv_plot, kv_summary, kv_table
    from fineserve.metrics.render import summary_table
    from fineserve.metrics.summary import summarize
    from fineserve.planner.planfile import load_plan
    from fineserve.sim.cluster import simulate as run
    from fineserve.workload.trace import Trace

    opts = sim_options(policy, kv, interference, chrome_trace=chrome_trace is not None)
    if plot is not None:
        _need_matplotlib()
    plan = load_plan(plan_path)
    trace = Trace.load(trace_path)
    latency = latency_model(profiles)
    with err.status(f"simulating {len(trace):,} requests..."):
        result = run(plan, trace, latency, options=opts)
    summary = summarize(result.records, {m.name: m.slo for m in plan.models},
                        max(result.duration_s, trace.duration_s), "simulate")
    kv_sum = kv_summary(result.kv_samples)
    summary["kv_mode"] = result.kv_mode
    summary["policy"] = policy
    summary["interference"] = (None if opts.interference is None
                               else opts.interference.source)
    summary["kv_per_gpu"] = kv_sum
    if output is not None:
        output.write_text(json.dumps(summary, indent=2))
    out.print(summary_table(summary, f"Simulated {len(trace):,} requests ({plan_path.name}, "
                                     f"policy {policy}, KV {result.kv_mode})"))
    if kv_sum:
        out.print(kv_table(kv_sum, result.kv_mode))
    if chrome_trace is not None and result.trace is not None:
        result.trace.write(chrome_trace)
        err.print(f"Chrome trace written to {chrome_trace} (open in ui.perfetto.dev)")
    if plot is not None:
        kv_plot(kv_sum, plot, f"KV memory per GPU ({result.kv_mode})")
        err.print(f"plot written to {plot}")


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SpecError("--plot needs matplotlib", hint="pip install 'fineserve[plots]'") from None


def compare(
    spec: Annotated[Path | None, typer.Argument(
        help="Planning spec; omit for the bundled example.", show_default=False)] = None,
    trace: Annotated[Path | None, typer.Argument(
        help="Trace; omit to generate a Poisson trace at the spec's rates.",
        show_default=False)] = None,
    *,
    duration: Annotated[float, typer.Option(help="Seconds of generated trace.")] = 120.0,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG bar chart here.")] = None,
    time_limit: Annotated[float | None, typer.Option("--time-limit")] = None,
    policy: Annotated[str, typer.Option(help="Local scheduler (see simulate).")] = "none",
    kv: Annotated[str, typer.Option(help="KV memory (see simulate).")] = "plan",
    interference: Annotated[str, typer.Option(
        help="HBM interference: off, on or a parameter file (see simulate).")] = "off",
    measured: Annotated[Path | None, typer.Option(
        help="A replay's results folder (fineserve replay -o): compare it with the "
             "simulator's prediction for --plan on TRACE instead of comparing planners.")
    ] = None,
    plan: Annotated[Path | None, typer.Option(
        help="With --measured: the plan that was deployed.")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="With --measured: write measured, predicted and errors "
                               "as JSON.")] = None,
) -> None:
    """Plan with the ILP and every baseline, simulate each on one trace, compare; or, with
    --measured, set a replay's measurements beside the simulator's prediction."""
    if measured is not None:
        run_guarded(lambda: _compare_measured(measured, plan, spec, trace, output,
                                              sim_options(policy, kv, interference)))
        return
    run_guarded(lambda: _compare(spec, trace, duration, plot, time_limit,
                                 sim_options(policy, kv, interference)))


def _compare_measured(results: Path, plan_path: Path | None, spec: Path | None,
                      trace_path: Path | None, output: Path | None, opts) -> None:
    from fineserve.metrics.summary import summarize
    from fineserve.metrics.versus import pair_summaries, versus_table
    from fineserve.planner.planfile import load_plan
    from fineserve.sim.cluster import simulate as run
    from fineserve.workload.trace import Trace

    if plan_path is None:
        raise SpecError("--measured needs --plan: the plan that was deployed")
    # positional arguments: `compare --measured R --plan P TRACE` (TRACE lands in `spec`)
    if trace_path is None and spec is not None:
        trace_path, spec = spec, None
    if trace_path is None or spec is not None:
        raise SpecError("--measured: give exactly one positional argument, the replayed trace")
    summary_path = results / "summary.json"
    if not summary_path.is_file():
        raise SpecError(f"--measured: {summary_path} not found",
                        hint="point it at the folder fineserve replay -o wrote")
    try:
        measured = json.loads(summary_path.read_text())
        sent = int(measured["overall"]["requests"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"--measured: {summary_path} is not a replay summary ({exc})") from None
    plan = load_plan(plan_path)
    trace = Trace.load(trace_path)
    if sent < len(trace):  # the replay stopped early (--duration): predict the same requests
        frame = trace.to_frame().sort_values("arrival_s").head(sent)
        trace = Trace.from_frame(frame.reset_index(drop=True), source=str(trace_path))
    latency = latency_model(None)
    with err.status(f"simulating {len(trace):,} requests..."):
        result = run(plan, trace, latency, options=opts)
    predicted = summarize(result.records, {m.name: m.slo for m in plan.models},
                          float(measured.get("duration_s") or trace.duration_s), "simulate")
    pairs = pair_summaries(measured, predicted)
    out.print(versus_table(pairs, f"Measured ({results}) against predicted "
                                  f"({plan_path.name}, {len(trace):,} requests)"))
    if output is not None:
        output.write_text(json.dumps({
            "measured": measured, "predicted": predicted,
            "errors": [{"model": p.model, "figure": p.figure, "measured": p.measured,
                        "predicted": p.predicted, "error": p.error} for p in pairs]},
            indent=2))


def _compare(spec, trace_path, duration, plot, time_limit, opts) -> None:
    from dataclasses import replace

    from fineserve.metrics.summary import summarize
    from fineserve.planner.api import PLAN_METHODS, make_plan
    from fineserve.planner.options import engine_options
    from fineserve.planner.spec import load_example, load_spec
    from fineserve.sim.cluster import simulate as run
    from fineserve.workload.arrivals import Poisson
    from fineserve.workload.lengths import around_means
    from fineserve.workload.trace import ModelLoad, Trace, generate

    inst = load_example() if spec is None else load_spec(spec)
    if time_limit is not None:
        if time_limit <= 0:
            raise SpecError("--time-limit: must be > 0 seconds")
        inst = replace(inst, settings=replace(inst.settings, time_limit_s=time_limit))
    if trace_path is not None:
        trace = Trace.load(trace_path)
    else:
        trace = generate([ModelLoad(m.name, Poisson(m.rate_rps),
                                    around_means(m.lengths.prompt_mean, m.lengths.output_mean))
                          for m in inst.models], duration, seed=0)
    latency = latency_model(None)
    options = engine_options(inst, latency)
    slos = {m.name: m.slo for m in inst.models}
    rows = []
    for method in PLAN_METHODS:
        with err.status(f"{method}: planning and simulating..."):
            plan = make_plan(inst, latency, method=method, options=options)
            result = run(plan, trace, latency, options=opts)
        s = summarize(result.records, slos, max(result.duration_s, trace.duration_s),
                      "simulate")
        worst = min(g.get("slo_attainment", 0) for g in s["per_model"].values())
        rows.append((plan.report.method, len(plan.gpus_used), plan.min_headroom,
                     s["overall"]["slo_attainment"], worst, s["overall"]["goodput_rps"]))
    t = Table(title=f"Plans on one trace ({len(trace):,} requests)", title_justify="left")
    for col in ("method", "GPUs", "min headroom", "SLO met", "worst model", "goodput req/s"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        t.add_row(r[0], str(r[1]), f"{r[2]:.2f}x", f"{r[3]:.1%}", f"{r[4]:.1%}", f"{r[5]:.2f}")
    out.print(t)
    if plot is not None:
        _plot(rows, plot)
        err.print(f"plot written to {plot}")


def _plot(rows, path: Path) -> None:
    _need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r[0] for r in rows]
    a.bar(names, [r[1] for r in rows], color="#4c72b0")
    a.set_ylabel("GPUs used")
    b.bar(names, [100 * r[3] for r in rows], color="#55a868")
    b.set_ylabel("SLO attainment (%)")
    b.set_ylim(0, 100)
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
