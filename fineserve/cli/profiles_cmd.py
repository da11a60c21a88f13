"""``fineserve profiles``: inspect latency profiles and import published tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fineserve.cli.common import err, out, run_guarded

app = typer.Typer(help="Inspect and import latency profiles.", no_args_is_help=True)


@app.command("show")
def show(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Profile files or folders; omit for the shipped profiles.")] = None,
) -> None:
    """List the engines a profile set covers and its measured ranges."""
    run_guarded(lambda: _show(paths or []))


def _show(paths: list[Path]) -> None:
    from fineserve.profiles.composite import default_latency_model
    from fineserve.profiles.schema import load_profile

    origins = {}
    if paths:
        tables = [load_profile(p) for p in paths]
    else:  # the shipped catalog: say which phases were measured and which are published
        from fineserve.profiles.composite import profile_origins

        model = default_latency_model([])
        tables = [model.table.table] if model.table is not None else []
        origins = {o.engine: o for o in profile_origins()}
    t = Table(title="Latency profiles", title_justify="left")
    cols = ("GPU", "model", "weights", "KV", "tp", "SM %", "batch", "points")
    for col in (*cols, "prefill", "decode") if origins else cols:
        t.add_column(col, overflow="fold")
    for table in tables:
        for eng in table.engines():
            pts = table.points_for(eng)
            sms = sorted({p.sm_pct for p in pts})
            batches = sorted({p.batch for p in pts})
            row = [*(str(x) for x in eng),
                   f"{sms[0]:g}-{sms[-1]:g}", f"{batches[0]}-{batches[-1]}", str(len(pts))]
            if origins:
                o = origins.get(eng)
                row += [o.prefill, o.decode] if o else ["-", "-"]
            t.add_row(*row)
    out.print(t)
    if origins:
        out.print("An engine not listed is estimated (roofline, docs/profiles.md).")


@app.command("import-fineserve")
def import_fineserve(
    source: Annotated[Path, typer.Argument(help="A FineServe cost CSV (examples/cost_files).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV or Parquet to write.")],
    gpu: Annotated[str, typer.Option(help="GPU the table was measured on.")] = "H100-SXM-80GB",
) -> None:
    """Convert a published FineServe cost table into FineServe profile points."""
    run_guarded(lambda: _import(source, output, gpu))


def _import(source: Path, output: Path, gpu: str) -> None:
    from fineserve.profiles.fineserve_import import import_fineserve_costs
    from fineserve.profiles.schema import save_profile

    table, report = import_fineserve_costs(source, gpu=gpu)
    save_profile(table, output)
    err.print(f"{report}")
    out.print(f"wrote {output}")
