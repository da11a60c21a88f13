"""Calibrate the roofline estimator per precision and report its held-out error.

Fits ``RooflineParams`` per precision (``fineserve.profiles.calibration``) to FineServe's apex
table and, when given, to measured H100 profiles (``--profiles DIR``, what
``bench/profile_h100.py`` writes); reports the median / p90 error on held-out points (5 random
folds, and each SM share held out in turn), plots throughput against SM share per precision
and estimate against measurement, and rewrites the generated part of docs/calibration.md.

    python bench/calibrate_estimator.py [--profiles /path/to/H100-profiles] [--save cal.json]
    python bench/calibrate_estimator.py --profiles DIR --no-apex --no-write   # measured only
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from doc_section import write_section  # bench/ is on sys.path

from fineserve.profiles.calibration import (
    CalibratedLatency,
    Calibration,
    HeldOutError,
    calibrate,
    cross_validate,
)
from fineserve.profiles.composite import published_profiles
from fineserve.profiles.fineserve_import import import_fineserve_costs
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable, load_profile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COSTS = REPO.parent / "shared" / "data" / "fineserve-costs"
DOC = REPO / "docs" / "calibration.md"
TARGET = 0.15


def _answer(model, p: LatencyPoint) -> float:  # type: ignore[no-untyped-def]
    engine = p.engine.shape()
    if p.phase is Phase.PREFILL:
        return model.prefill(engine, p.tokens, p.sm_pct, p.batch).seconds
    return model.decode_step(engine, p.batch, p.tokens, p.sm_pct).seconds


def _in_sample(model, points: Sequence[LatencyPoint]) -> dict[Phase, float]:  # type: ignore[no-untyped-def]
    out = {}
    for phase in Phase:
        errs = [abs(_answer(model, p) / p.latency_s - 1) for p in points if p.phase is phase]
        out[phase] = float(np.median(errs)) if errs else math.nan
    return out


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def report(name: str, table: ProfileTable, iters: int) -> tuple[list[str], Calibration]:
    t0 = time.time()
    cal = calibrate(table, source=name, iters=iters)
    held: list[HeldOutError] = cross_validate(table, "kfold", iters=iters)
    held += cross_validate(table, "sm", iters=iters)
    default, fitted = AnalyticLatency(), CalibratedLatency(cal)
    lines = [f"### {name}", "",
             "| precision | points | default median (pre / dec) | calibrated, in-sample | "
             "held out | prefill median / p90 | decode median / p90 | target met |",
             "|---|---:|---|---|---|---|---|---|"]  # fmt: skip
    for h in held:
        pts = [p for p in table if p.engine.precision.name == h.precision]
        d, c = _in_sample(default, pts), _in_sample(fitted, pts)
        ok = h.prefill_median <= TARGET and h.decode_median <= TARGET
        lines.append(
            f"| {h.precision} | {len(pts)} | {_pct(d[Phase.PREFILL])} / {_pct(d[Phase.DECODE])} "
            f"| {_pct(c[Phase.PREFILL])} / {_pct(c[Phase.DECODE])} | {h.split} "
            f"| {_pct(h.prefill_median)} / {_pct(h.prefill_p90)} "
            f"| {_pct(h.decode_median)} / {_pct(h.decode_p90)} | {'yes' if ok else 'no'} |")
    lines += ["", f"Fitted in {time.time() - t0:.0f} s. Parameters per precision:", "",
              "| precision | " + " | ".join(_PARAMS) + " |",
              "|---|" + "---:|" * len(_PARAMS)]  # fmt: skip
    for prec, params in cal.by_precision:
        lines.append(f"| {prec} | " + " | ".join(_fmt(n, getattr(params, n)) for n in _PARAMS)
                     + " |")
    return [*lines, ""], cal


_PARAMS = ("bf16_gemm_eff", "fp8_gemm_eff", "int4_gemm_eff", "sm_saturation",
           "sm_compute_exponent", "prefill_overhead_s", "decode_overhead_s", "host_layer_s",
           "fp8_host_layer_s", "int4_dequant_flops_per_param", "tp_host_layer_s")


def _fmt(name: str, v: float) -> str:
    return f"{v * 1e6:.0f} us" if name.endswith("_s") else f"{v:.3g}"


def plot(tables: dict[str, ProfileTable], cals: dict[str, Calibration], folder: Path) -> list[str]:
    """Throughput vs SM share per precision (measured dots, calibrated lines) and a scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, table in tables.items():
        model = CalibratedLatency(cals[name])
        engines = [e for e in table.engines() if e.tp == 1]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for engine in engines:
            pts = table.points_for(engine)
            dec = [p for p in pts if p.phase is Phase.DECODE]
            pre = [p for p in pts if p.phase is Phase.PREFILL]
            if not dec or not pre:
                continue
            b = max(p.batch for p in dec)
            c = max(p.tokens for p in dec if p.batch == b)
            sel = sorted((p for p in dec if p.batch == b and p.tokens == c), key=lambda p: p.sm_pct)
            tag = f"{engine.model} {engine.precision.name}"
            line = axes[0].plot([p.sm_pct for p in sel], [b / p.latency_s for p in sel], "o",
                                label=f"{tag} (b{b}, ctx {c})")[0]
            sms = np.linspace(min(p.sm_pct for p in sel), 100, 40)
            shape = engine.shape()
            axes[0].plot(sms, [b / model.decode_step(shape, b, c, s).seconds for s in sms], "-",
                         color=line.get_color(), alpha=0.7)
            pb = max(p.batch for p in pre)
            pt = max(p.tokens for p in pre if p.batch == pb)
            sel = sorted((p for p in pre if p.batch == pb and p.tokens == pt),
                         key=lambda p: p.sm_pct)
            line = axes[1].plot([p.sm_pct for p in sel], [pb * pt / p.latency_s for p in sel],
                                "o", label=f"{tag} (b{pb} x {pt})")[0]
            axes[1].plot(sms, [pb * pt / model.prefill(shape, pt, s, pb).seconds for s in sms],
                         "-", color=line.get_color(), alpha=0.7)
        for ax, what in zip(axes, ("decode tokens/s", "prefill tokens/s"), strict=True):
            ax.set_xlabel("SM share (%)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{name}: measured (dots) vs calibrated estimator (lines), tp=1")
        fig.tight_layout()
        path = folder / f"calibration-{_slug(name)}-sm.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        fig, ax = plt.subplots(figsize=(5, 5))
        for phase, marker in ((Phase.PREFILL, "x"), (Phase.DECODE, ".")):
            pts = [p for p in table if p.phase is phase]
            ax.loglog([p.latency_s for p in pts], [_answer(model, p) for p in pts], marker,
                      alpha=0.4, label=phase.value)
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel("measured (s)")
        ax.set_ylabel("calibrated estimate (s)")
        ax.set_title(f"{name}")
        ax.legend()
        fig.tight_layout()
        path = folder / f"calibration-{_slug(name)}-scatter.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def plot_versus_published(measured: ProfileTable, published: ProfileTable,
                          folder: Path) -> list[str]:
    """Measured throughput against SM share per precision next to FineServe's published
    (eager vLLM) table of the same engine: decode at batch 8 and 32, context 512; prefill of
    one 512-token prompt. Both read through ``TableLatency`` (inside both grids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fineserve.profiles.table import TableLatency

    engines = [k for k in measured.engines() if k.tp == 1 and published.points_for(k)]
    if not engines:
        return []
    ours, theirs = TableLatency(measured), TableLatency(published)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in engines:
        shape = key.shape()
        sms = sorted({p.sm_pct for p in measured.points_for(key)})
        pub = sorted({p.sm_pct for p in published.points_for(key)})
        for b, style in ((32, "-"), (8, ":")):
            line = axes[0].plot(sms, [b / ours.decode_step(shape, b, 512, s).seconds
                                      for s in sms], "o" + style,
                                label=f"{key.precision.name} b{b} H100 measured")[0]
            axes[0].plot(pub, [b / theirs.decode_step(shape, b, 512, s).seconds for s in pub],
                         "x" + style, color=line.get_color(), alpha=0.5,
                         label=f"{key.precision.name} b{b} FineServe published")
        line = axes[1].plot(sms, [512 / ours.prefill(shape, 512, s).seconds for s in sms], "o-",
                            label=f"{key.precision.name} H100 measured")[0]
        axes[1].plot(pub, [512 / theirs.prefill(shape, 512, s).seconds for s in pub], "x--",
                     color=line.get_color(), alpha=0.5,
                     label=f"{key.precision.name} FineServe published")
    for ax, what in zip(axes, ("decode tokens/s (context 512)", "prefill tokens/s (1 x 512)"),
                        strict=True):
        ax.set_xlabel("SM share (%)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("llama-3.1-8b on H100: measured (CUDA graphs, o) vs FineServe published "
                 "(eager, x)")
    fig.tight_layout()
    path = folder / "profile-h100-vs-published.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.split(" ")[0].lower()).strip("-")


def write_doc(section: list[str]) -> None:
    write_section(DOC, "bench/calibrate_estimator.py", "Estimator calibration", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", type=Path, default=DEFAULT_COSTS)
    parser.add_argument("--profiles", type=Path, action="append", default=[],
                        help="measured profile files or folders (e.g. H100 runs)")
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
        apex, _ = import_fineserve_costs(args.costs / "apex-cost.csv")
        tables["apex (FineServe, eager vLLM)"] = apex
    if args.profiles:
        tables["H100 measured (CUDA graphs)"] = ProfileTable.concat(
            load_profile(p) for p in args.profiles)
    section: list[str] = []
    cals = {}
    for name, table in tables.items():
        lines, cal = report(name, table, args.iters)
        section += lines
        cals[name] = cal
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            target = args.save.with_name(f"{args.save.stem}-{_slug(name)}{args.save.suffix}")
            target.write_text(cal.to_json())
            print(f"wrote {target}")
    if not args.no_write:
        images = plot(tables, cals, DOC.parent)
        if args.profiles:
            images += plot_versus_published(tables["H100 measured (CUDA graphs)"],
                                            published_profiles(), DOC.parent)
        section += [f"![{i}]({i})" for i in images] + [""]
    print("\n".join(section))
    if not args.no_write:
        write_doc(section)
        print(f"wrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
