"""Calibrate the roofline estimator per precision and report its held-out error.

Fits ``RooflineParams`` (``fineserve.profiles.calibration``: the engine-wide parameters shared
by every precision, the rest per precision) to FineServe's apex table and, when given, to
measured H100 profiles (``--profiles DIR``, what ``bench/profile_h100.py`` writes; points
whose repeats disagree are left out, ``profiles.quality``). Reports the median / p90 error on
held-out points (5 random folds, each SM share held out, each model held out, and a fit to
Llama-3.1-8B alone predicting the other models, including entries measured only in part, such
as the 70B), plots throughput against SM share, and rewrites the generated part of
docs/calibration.md.

    python bench/calibrate_estimator.py [--profiles bench/results/h100-profile/H100-SXM-80GB]
    python bench/calibrate_estimator.py --profiles DIR --no-apex --no-write   # measured only
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from calibration_plots import plot, plot_by_weights, plot_versus_published, slug
from doc_section import write_section  # bench/ is on sys.path

from fineserve.profiles.calibration import CalibratedLatency, Calibration
from fineserve.profiles.composite import CALIBRATION, MEASURED, published_profiles
from fineserve.profiles.fineserve_import import import_fineserve_costs
from fineserve.profiles.heldout import (
    SPLITS,
    ErrorSummary,
    PointError,
    by_model,
    by_precision,
    held_out,
    per_precision,
    predict,
    shared,
    summarize,
    transfer,
)
from fineserve.profiles.measure.store import ResultStore, to_latency_point
from fineserve.profiles.precision import Precision
from fineserve.profiles.quality import screen
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import LatencyPoint, ProfileTable, load_profile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COSTS = REPO.parent / "shared" / "data" / "fineserve-costs"
DOC = REPO / "docs" / "calibration.md"
SHIPPED = REPO / "fineserve" / "profiles" / "data" / MEASURED
TARGET = 0.15
REFERENCE = "llama-3.1-8b"  # the model every precision was measured on
APEX = "apex (FineServe, eager vLLM)"
H100 = "H100 measured (CUDA graphs)"
_PARAMS = ("bf16_gemm_eff", "fp8_gemm_eff", "int4_gemm_eff", "gemm_half_tokens",
           "sm_saturation", "sm_compute_exponent", "prefill_overhead_s", "decode_overhead_s",
           "host_layer_s", "fp8_host_layer_s", "int4_dequant_flops_per_param",
           "tp_host_layer_s")


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _signed(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.0f}%"


def _fmt(name: str, v: float) -> str:
    return f"{v * 1e6:.0f} us" if name.endswith("_s") else f"{v:.3g}"


def _row(s: ErrorSummary, label: str) -> str:
    return (f"| {s.group} | {label} | {s.points} | {_pct(s.prefill_median)} / "
            f"{_pct(s.prefill_p90)} ({_signed(s.prefill_bias)}) | {_pct(s.decode_median)} / "
            f"{_pct(s.decode_p90)} ({_signed(s.decode_bias)}) | "
            f"{'yes' if s.meets(TARGET) else 'no'} |")


_HEAD = ["| group | held out | points | prefill median / p90 (bias) | "
         "decode median / p90 (bias) | target met |", "|---|---|---:|---|---|---|"]


def precision_table(table: ProfileTable, cal: Calibration,
                    errors: Mapping[str, Sequence[PointError]]) -> list[str]:  # fmt: skip
    """Per precision: default and calibrated in-sample error, then held out (``errors`` of
    ``held_out`` by split: folds, SM)."""
    lines = ["| precision | points | default median (pre / dec) | calibrated, in-sample | "
             "held out | prefill median / p90 | decode median / p90 | target met |",
             "|---|---:|---|---|---|---|---|---|"]  # fmt: skip
    default = {s.group: s for s in summarize(predict(AnalyticLatency(), table), by_precision)}
    fitted = {s.group: s for s in summarize(predict(CalibratedLatency(cal), table),
                                            by_precision)}
    for split, errs in errors.items():
        for s in summarize(errs, by_precision):
            d, c = default[s.group], fitted[s.group]
            lines.append(
                f"| {s.group} | {d.points} | {_pct(d.prefill_median)} / {_pct(d.decode_median)}"
                f" | {_pct(c.prefill_median)} / {_pct(c.decode_median)} | {SPLITS[split]} | "
                f"{_pct(s.prefill_median)} / {_pct(s.prefill_p90)} | {_pct(s.decode_median)} / "
                f"{_pct(s.decode_p90)} | {'yes' if s.meets(TARGET) else 'no'} |")
    return lines


def model_tables(table: ProfileTable, partial: ProfileTable, iters: int,
                 errors: Mapping[str, Sequence[PointError]]) -> list[str]:  # fmt: skip
    """Per model and precision: folds and SM shares held out (``errors``, the shared fit's);
    then models held out, and a fit to the reference model alone predicting the others (and
    ``partial``), for the per-precision and the shared fit and for the default parameters."""
    fit_shared, fit_alone = shared(iters), per_precision(iters)
    lines = ["#### Per model (shared fit)", "", *_HEAD]
    for split, errs in errors.items():
        lines += [_row(s, SPLITS[split]) for s in summarize(errs, by_model)]
    reference = [p for p in table if p.model == REFERENCE]
    others = [p for p in table if p.model != REFERENCE] + list(partial)
    lines += ["", "#### Models the fit has not seen", "",
              f"`model held out`: each model predicted by a fit to the other models of its "
              f"precision. `{REFERENCE} only`: fitted to {REFERENCE}'s points alone (every "
              "precision), predicting every other model, including the entries measured only "
              "in part (not calibrated on). `default`: the parameters fitted to apex, no fit.",
              "", *_HEAD]
    for name, fitter in (("per precision", fit_alone), ("shared", fit_shared)):
        lines += [_row(s, f"model held out, {name}")
                  for s in summarize(held_out(table, "model", fitter), by_model)]
        lines += [_row(s, f"{REFERENCE} only, {name}")
                  for s in summarize(transfer(reference, others, fitter), by_model)]
    lines += [_row(s, "default parameters")
              for s in summarize(predict(AnalyticLatency(), others), by_model)]
    return lines


def params_table(cal: Calibration) -> list[str]:
    lines = ["| precision | " + " | ".join(_PARAMS) + " |", "|---|" + "---:|" * len(_PARAMS)]
    for prec, params in [*cal.by_precision, ("(others)", cal.default)]:
        lines.append(f"| {prec} | " + " | ".join(_fmt(n, getattr(params, n)) for n in _PARAMS)
                     + " |")
    return lines


def partial_entries(folder: Path) -> ProfileTable:
    """Valid points of results with no exported CSV (an entry measured only in part)."""
    points: list[LatencyPoint] = []
    for results in sorted(folder.rglob("*.jsonl")):
        if results.with_suffix(".csv").exists():
            continue
        store = ResultStore(results.parents[2], results.parent.parent.name,
                            results.parent.name, Precision.from_name(results.stem))
        points += [to_latency_point(r) for r in store.points() if r.valid]
    return screen(points).kept


def ship_calibration(cal: Calibration, table: ProfileTable) -> None:
    """Write the measured profiles' calibration where ``default_latency_model`` reads it."""
    (gpu,) = {k.gpu for k in table.engines()}  # one GPU's profiles per calibration
    path = SHIPPED / gpu / CALIBRATION
    path.write_text(replace(cal, gpu=gpu, source=f"bench/calibrate_estimator.py: {H100}, "
                            f"{len(table)} points").to_json())
    print(f"wrote {path.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", type=Path, default=DEFAULT_COSTS)
    parser.add_argument("--profiles", type=Path, action="append", default=[],
                        help="measured profile folders (e.g. H100 runs)")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--save", type=Path, help="write the calibration(s) as JSON here")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-apex", action="store_true",
                        help="fit only the measured profiles (with --no-write: a quick check)")
    args = parser.parse_args()
    if args.no_apex and not args.no_write:
        parser.error("--no-apex: give --no-write too (the doc section holds both tables)")

    tables: dict[str, ProfileTable] = {}
    if not args.no_apex:
        tables[APEX] = import_fineserve_costs(args.costs / "apex-cost.csv")[0]
    section: list[str] = []
    partial = ProfileTable()
    if args.profiles:
        screened = screen(ProfileTable.concat(load_profile(p) for p in args.profiles))
        tables[H100] = screened.kept
        partial = ProfileTable.concat(partial_entries(p) for p in args.profiles)
        section += ["Left out of the H100 fit (`profiles.quality`):", ""]
        section += [f"- {line}" for line in screened.reasons()] + [""]
    cals = {}
    for name, table in tables.items():
        t0 = time.time()
        # apex: each precision alone (eager engines, 2,448 points: a shared fit per fold
        # would take minutes); measured: the shared fit, which carries to unseen models
        joint = name == H100
        fitter = shared(args.iters) if joint else per_precision(args.iters)
        cals[name] = cal = replace(fitter(table), source=name)
        errors = {split: held_out(table, split, fitter) for split in ("kfold", "sm")}
        section += [f"### {name}", "", *precision_table(table, cal, errors), ""]
        if joint:
            section += [*model_tables(table, partial, args.iters, errors), ""]
        section += [f"Fitted in {time.time() - t0:.0f} s. Parameters "
                    f"({'shared' if joint else 'per-precision'} fit):", "",
                    *params_table(cal), ""]
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            target = args.save.with_name(f"{args.save.stem}-{slug(name)}{args.save.suffix}")
            target.write_text(cal.to_json())
            print(f"wrote {target}")
    if not args.no_write and H100 in cals:
        ship_calibration(cals[H100], tables[H100])
    if not args.no_write:
        images = plot(tables, cals, DOC.parent)
        if H100 in tables:
            images += plot_versus_published(tables[H100], published_profiles(), DOC.parent)
            images += plot_by_weights(tables[H100], published_profiles(), DOC.parent)
        section += [f"![{i}]({i})" for i in images] + [""]
    print("\n".join(section))
    if not args.no_write:
        write_section(DOC, "bench/calibrate_estimator.py", "Estimator calibration", section)
        print(f"wrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
