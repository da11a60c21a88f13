"""Plots of bench/calibrate_estimator.py: throughput against SM share, measured against the
calibrated estimator, against FineServe's published tables, per weight format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fineserve.profiles.calibration import CalibratedLatency, Calibration
from fineserve.profiles.heldout import predict
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable
from fineserve.profiles.table import TableLatency

DECODE_AT = (32, 1024)  # batch, context: the measured grid's heaviest decode point
PREFILL_AT = 2048  # tokens of one prompt


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(tables: dict[str, ProfileTable], cals: dict[str, Calibration], folder: Path) -> list[str]:
    """Throughput vs SM share per precision (measured dots, calibrated lines) and a scatter."""
    plt = _pyplot()

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
        path = _save(fig, folder / f"calibration-{slug(name)}-sm.png")
        written.append(path.name)

        fig, ax = plt.subplots(figsize=(5, 5))
        for phase, marker in ((Phase.PREFILL, "x"), (Phase.DECODE, ".")):
            pts = [p for p in table if p.phase is phase]
            estimates = [e.ratio * e.point.latency_s for e in predict(model, pts)]
            ax.loglog([p.latency_s for p in pts], estimates, marker,
                      alpha=0.4, label=phase.value)
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel("measured (s)")
        ax.set_ylabel("calibrated estimate (s)")
        ax.set_title(f"{name}")
        ax.legend()
        path = _save(fig, folder / f"calibration-{slug(name)}-scatter.png")
        written.append(path.name)
    return written


def plot_versus_published(measured: ProfileTable, published: ProfileTable,
                          folder: Path) -> list[str]:
    """Measured throughput against SM share per precision next to FineServe's published
    (eager vLLM) table of the same engine: decode at batch 8 and 32, context 512; prefill of
    one 512-token prompt. Both read through ``TableLatency`` (inside both grids)."""
    plt = _pyplot()
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
    path = _save(fig, folder / "profile-h100-vs-published.png")
    return [path.name]


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.split(" ")[0].lower()).strip("-")


def _family(weights: str) -> str:
    return "int4" if weights.startswith("int4") else weights


def _sel(points: tuple[LatencyPoint, ...], batch: int, tokens: int) -> list[LatencyPoint]:
    return sorted((p for p in points if p.batch == batch and p.tokens == tokens),
                  key=lambda p: p.sm_pct)


def plot_by_weights(measured: ProfileTable, published: ProfileTable, folder: Path) -> list[str]:
    """Per weight format: every measured model's decode (batch 32, context 1024) and prefill
    (one 2048-token prompt) throughput against SM share, as measured (points that passed
    ``quality.screen`` only), beside FineServe's published (eager) engines of the same format
    read through ``TableLatency`` inside their grid."""
    plt = _pyplot()
    ours = [k for k in measured.engines() if k.tp == 1]
    theirs_table = TableLatency(published)
    b, ctx = DECODE_AT
    written = []
    for family in sorted({_family(k.weights.value) for k in ours}):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for key in (k for k in ours if _family(k.weights.value) == family):
            tag = f"{key.model} {key.precision.name}"
            dec = _sel(measured.points_for(key, Phase.DECODE), b, ctx)
            line = axes[0].plot([p.sm_pct for p in dec], [b / p.latency_s for p in dec], "o-",
                                label=f"{tag}")[0]
            pre = _sel(measured.points_for(key, Phase.PREFILL), 1, PREFILL_AT)
            axes[1].plot([p.sm_pct for p in pre], [PREFILL_AT / p.latency_s for p in pre], "o-",
                         color=line.get_color(), label=f"{tag}")
        for key in published.engines():
            if key.tp != 1 or _family(key.weights.value) != family:
                continue
            shape, tag = key.shape(), f"{key.model} {key.precision.name} (FineServe)"
            sms = sorted({p.sm_pct for p in published.points_for(key)})
            axes[0].plot(sms, [b / theirs_table.decode_step(shape, b, ctx, s).seconds
                               for s in sms], "x--", alpha=0.6, label=tag)
            axes[1].plot(sms, [PREFILL_AT / theirs_table.prefill(shape, PREFILL_AT, s).seconds
                               for s in sms], "x--", alpha=0.6, label=tag)
        for ax, what in zip(axes, (f"decode tokens/s (batch {b}, context {ctx})",
                                   f"prefill tokens/s (1 x {PREFILL_AT})"), strict=True):
            ax.set_xlabel("SM share (%)")
            ax.set_ylabel(what)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(f"{family} weights on H100: measured (CUDA graphs, o) vs FineServe "
                     "published (eager, x)")
        path = _save(fig, folder / f"profile-h100-{family}-sm.png")
        written.append(path.name)
    return written
