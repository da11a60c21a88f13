"""How far the roofline estimator (and the anchored extrapolation) is from FineServe's data.

For every point of FineServe's published cost tables, compare ``AnalyticLatency`` with the
measurement: median and p90 of |estimate / measured - 1|, by model, precision and TP, for
prefill and decode; the apex file (the fit's data) and the aws file (other hardware) apart.
Then hold parts of the apex grid out of a table and measure ``ProfiledLatency`` there.
Prints the tables and rewrites the generated section of docs/estimator-accuracy.md.

    python bench/estimator_vs_fineserve.py [--costs ../shared/data/fineserve-costs]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from doc_section import write_section  # bench/ is on sys.path

from fineserve.profiles.composite import ProfiledLatency
from fineserve.profiles.fineserve_import import import_fineserve_costs
from fineserve.profiles.latency import LatencyModel
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable
from fineserve.profiles.table import TableLatency

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COSTS = REPO.parent / "shared" / "data" / "fineserve-costs"
DOC = REPO / "docs" / "estimator-accuracy.md"
HOLDOUTS: list[tuple[str, Callable[[LatencyPoint], bool]]] = [
    ("batch 1-8 measured, 16-32 extrapolated", lambda p: p.batch <= 8),
    ("SM 40-100% measured, 20% extrapolated", lambda p: p.sm_pct >= 40),
    ("SM 60-100% measured, 20-50% extrapolated", lambda p: p.sm_pct >= 60),
    ("input 256 measured, 512 extrapolated", lambda p: p.tokens in (256, 384)),
]


def _answer(model: LatencyModel, p: LatencyPoint) -> float:
    engine = p.engine.shape()
    if p.phase is Phase.PREFILL:
        return model.prefill(engine, p.tokens, p.sm_pct, p.batch).seconds
    return model.decode_step(engine, p.batch, p.tokens, p.sm_pct).seconds


def _stats(errors: Iterable[float]) -> str:
    e = np.asarray(list(errors))
    if not len(e):
        return "| - | - "
    return f"| {100 * np.median(e):.1f}% | {100 * np.percentile(e, 90):.1f}% "


def _errors(model: LatencyModel, points: Iterable[LatencyPoint]) -> dict[Phase, list[float]]:
    out: dict[Phase, list[float]] = {Phase.PREFILL: [], Phase.DECODE: []}
    for p in points:
        out[p.phase].append(abs(_answer(model, p) / p.latency_s - 1))
    return out


def accuracy_table(table: ProfileTable, title: str) -> list[str]:
    estimator = AnalyticLatency()
    lines = [
        f"### {title}", "",
        "| engine | points | prefill median | prefill p90 | decode median | decode p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for key in table.engines():
        err = _errors(estimator, table.points_for(key))
        name = f"{key.model} {key.precision.name} tp{key.tp}"
        lines.append(f"| {name} | {len(table.points_for(key))} "
                     f"{_stats(err[Phase.PREFILL])}{_stats(err[Phase.DECODE])}|")
    err = _errors(estimator, table)
    lines.append(f"| **all** | {len(table)} {_stats(err[Phase.PREFILL])}"
                 f"{_stats(err[Phase.DECODE])}|")
    return [*lines, ""]


def holdout_table(apex: ProfileTable) -> list[str]:
    estimator = AnalyticLatency()
    lines = [
        "### Anchored extrapolation (`ProfiledLatency`) on held-out apex points", "",
        "A table is built from part of the apex grid; the rest is asked of `ProfiledLatency`"
        " (anchored estimate) and, for comparison, of the table alone (clamped edge value)"
        " and of the estimator alone.", "",
        "| held out | model | prefill median | prefill p90 | decode median | decode p90 |",
        "|---|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for title, keep in HOLDOUTS:
        table = TableLatency(ProfileTable(p for p in apex if keep(p)))
        held = [p for p in apex if not keep(p)]
        models: list[tuple[str, LatencyModel]] = [
            ("anchored", ProfiledLatency(table, estimator)),
            ("table, clamped", table),
            ("estimator", estimator),
        ]
        for name, model in models:
            err = _errors(model, held)
            lines.append(f"| {title} | {name} {_stats(err[Phase.PREFILL])}"
                         f"{_stats(err[Phase.DECODE])}|")
    return [*lines, ""]


def write_doc(section: list[str]) -> None:
    write_section(DOC, "bench/estimator_vs_fineserve.py", "Estimator accuracy", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", type=Path, default=DEFAULT_COSTS,
                        help="folder holding apex-cost.csv and aws-cost.csv")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    apex, apex_report = import_fineserve_costs(args.costs / "apex-cost.csv")
    aws, aws_report = import_fineserve_costs(args.costs / "aws-cost.csv")
    apex_summary = apex_report.summary().replace("\n  ", "; ")
    aws_summary = aws_report.summary().replace("\n  ", "; ")
    section = [
        "Absolute relative error |estimate / measured - 1| of `AnalyticLatency()` (default"
        " `RooflineParams`). Prefill points: whole-batch prefill time; decode points: time"
        " per output token at the mean context.", "",
        f"apex-cost.csv: {apex_summary}.",
        f"aws-cost.csv: {aws_summary}.", "",
        *accuracy_table(apex, "apex-cost.csv (the data the constants were fitted to)"),
        *accuracy_table(aws, "aws-cost.csv (not fitted: other hardware or settings, all at"
                        " 100% SMs; decode ~1.8x slower than apex)"),
        *holdout_table(apex),
    ]  # fmt: skip
    print("\n".join(section))
    if not args.no_write:
        write_doc(section)
        print(f"wrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
