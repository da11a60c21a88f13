"""``fineserve replay``: drive a trace against a deployment and report what users got."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fineserve.cli.common import err, out, run_guarded
from fineserve.errors import SpecError


def replay(
    trace: Annotated[Path, typer.Argument(help="Trace file (.jsonl, .parquet, .csv).")],
    *,
    url: Annotated[str, typer.Option(help="Base URL of the gateway or an OpenAI server.")],
    api_key: Annotated[str | None, typer.Option(help="Bearer token.")] = None,
    speed: Annotated[float, typer.Option(help="Replay speed (2 = twice as fast).")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Replay only this many seconds.")]
    = None,
    plan: Annotated[Path | None, typer.Option(help="Plan file: SLOs per model.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Results folder.")]
    = Path("replay-results"),
    prompt_mode: Annotated[str, typer.Option(help="tokens (ids) or text.")] = "tokens",
) -> None:
    """Send every request at its trace time (open loop, streaming) and measure TTFT/TPOT."""
    run_guarded(lambda: _replay(trace, url, api_key, speed, duration, plan, output,
                                prompt_mode))


def _replay(trace_path, url, api_key, speed, duration, plan_path, output, prompt_mode) -> None:
    from fineserve.planner.planfile import load_plan
    from fineserve.replay.client import ReplayConfig, replay
    from fineserve.replay.report import write_results
    from fineserve.workload.trace import Trace

    if speed <= 0 or (duration is not None and duration <= 0):
        raise SpecError("--speed and --duration must be > 0")
    if prompt_mode not in ("tokens", "text"):
        raise SpecError(f"--prompt-mode: {prompt_mode!r}", hint="use tokens or text")
    if not url.startswith(("http://", "https://")):
        raise SpecError(f"--url: {url!r} is not an http(s) URL")
    trace = Trace.load(trace_path)
    slos = {m.name: m.slo for m in load_plan(plan_path).models} if plan_path else {}
    cfg = ReplayConfig(url, api_key, speed, duration, prompt_mode)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("done {task.fields[done]}"), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("replay", total=len(trace), done=0)
        records, wall = replay(trace, cfg, lambda sent, done: bar.update(task, completed=sent,
                                                                          done=done))
    if records and all(r.status == 0 for r in records):
        raise SpecError(f"--url: no request reached {url} ({records[0].error})",
                        hint="check that the server is up and the URL is right")
    summary = write_results(output, records, slos, wall)
    _print(summary, output)


def _print(summary: dict, output: Path) -> None:
    from fineserve.metrics.render import summary_table

    out.print(summary_table(summary, f"Replay: {summary['overall']['requests']} requests in "
                                     f"{summary['duration_s']:.1f} s -> {output}"))
    lag = summary["send_lag_ms"]
    out.print(f"send lag p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, "
              f"max {lag['max']:.2f} ms", highlight=False)
