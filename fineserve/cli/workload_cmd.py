"""``fineserve workload``: generate a request trace for the models of a spec or plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fineserve.cli.common import err, out, run_guarded
from fineserve.errors import SpecError


def workload(
    source: Annotated[Path | None, typer.Argument(
        help="Planning spec or plan file (models and rates). Omit for the bundled example.",
        show_default=False)] = None,
    *,
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Trace file: .jsonl, .parquet or .csv.")],
    duration: Annotated[float, typer.Option(help="Seconds of traffic.")] = 300.0,
    arrival: Annotated[str, typer.Option(help="poisson, gamma or diurnal.")] = "poisson",
    cv: Annotated[float, typer.Option(help="Gamma: coefficient of variation of gaps.")] = 1.0,
    rate_scale: Annotated[float, typer.Option(help="Multiply every model's rate.")] = 1.0,
    lengths: Annotated[str, typer.Option(
        help="spec (log-normal around each model's planned means), sharegpt, lmsys, "
             "fixed:P,O, or a ShareGPT JSON file.")] = "spec",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same trace).")] = 0,
) -> None:
    """Generate a deterministic request trace (arrival time, model, prompt/output tokens)."""
    run_guarded(lambda: _workload(source, output, duration, arrival, cv, rate_scale, lengths,
                                  seed))


def _workload(source, output, duration, arrival, cv, rate_scale, lengths, seed) -> None:
    from fineserve.planner.planfile import load_models
    from fineserve.planner.spec import load_example
    from fineserve.workload.arrivals import Diurnal, Gamma, Poisson
    from fineserve.workload.lengths import around_means, length_distribution
    from fineserve.workload.trace import ModelLoad, generate

    if duration <= 0 or rate_scale <= 0:
        raise SpecError("--duration and --rate-scale must be > 0")
    models = load_example().models if source is None else load_models(source)
    shared = None if lengths == "spec" else length_distribution(lengths)

    def dist_for(m):  # "spec": the means the plan was made for
        return around_means(m.lengths.prompt_mean, m.lengths.output_mean) if shared is None \
            else shared

    makers = {"poisson": lambda r: Poisson(r), "gamma": lambda r: Gamma(r, cv),
              "diurnal": lambda r: Diurnal(r, 0.5, duration)}
    if arrival not in makers:
        raise SpecError(f"--arrival: unknown process {arrival!r}",
                        hint="use poisson, gamma or diurnal")
    loads = [ModelLoad(m.name, makers[arrival](m.rate_rps * rate_scale), dist_for(m))
             for m in models]
    with err.status("generating trace..."):
        trace = generate(loads, duration, seed)
        trace.save(output)
    df = trace.to_frame()
    t = Table(title=f"{len(trace)} requests over {duration:g} s -> {output}",
              title_justify="left")
    for col in ("model", "requests", "req/s", "prompt mean", "output mean"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, g in df.groupby("model", sort=False):
        t.add_row(str(name), str(len(g)), f"{len(g) / duration:.2f}",
                  f"{g.prompt_tokens.mean():.0f}", f"{g.output_tokens.mean():.0f}")
    out.print(t)
