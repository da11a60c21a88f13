"""KV memory over time per GPU (simulate): summary, terminal table and plot.

Utilisation is the share of the GPU's KV memory (pool, or the sum of static partitions)
holding tokens of running requests; stranded is the share held by an engine without a token
in it (unused static partitions, slabs kept ahead of demand); slab rounding is the part of
stranded due to whole-slab granularity (at most one slab per engine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from fineserve.sim.kvpool import KvSample


def kv_summary(samples: tuple[KvSample, ...] | list[KvSample]) -> dict:
    """Per GPU (JSON-ready): mean / p99 / max utilisation, mean stranded and slab rounding,
    and the time series (t, utilisation, stranded)."""
    by_gpu: dict[int, list[KvSample]] = {}
    for s in samples:
        by_gpu.setdefault(s.gpu, []).append(s)
    out = {}
    for g in sorted(by_gpu):
        xs = by_gpu[g]
        util = np.array([s.utilisation for s in xs])
        stranded = np.array([s.stranded for s in xs])
        rounding = np.array([s.rounding_bytes / s.capacity_bytes if s.capacity_bytes else 0.0
                             for s in xs])
        out[str(g)] = {
            "capacity_gib": xs[0].capacity_bytes / 2**30,
            "util_mean": float(util.mean()), "util_p99": float(np.percentile(util, 99)),
            "util_max": float(util.max()), "stranded_mean": float(stranded.mean()),
            "slab_rounding_mean": float(rounding.mean()),
            "series": {"t": [round(s.t, 3) for s in xs], "util": util.round(4).tolist(),
                       "stranded": stranded.round(4).tolist()},
        }
    return out


def kv_table(summary: dict, mode: str) -> Table:
    t = Table(title=f"KV memory per GPU ({mode})", title_justify="left")
    for col in ("GPU", "KV GiB", "util mean", "util p99", "util max", "stranded",
                "slab rounding"):
        t.add_column(col, justify="right")
    for g, v in summary.items():
        t.add_row(g, f"{v['capacity_gib']:.1f}", f"{v['util_mean']:.1%}", f"{v['util_p99']:.1%}",
                  f"{v['util_max']:.1%}", f"{v['stranded_mean']:.1%}",
                  f"{v['slab_rounding_mean']:.2%}")
    return t


def kv_plot(summary: dict, path: Path, title: str) -> None:
    """Utilisation and stranded memory over time, one line per GPU (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for g, v in summary.items():
        ts = v["series"]["t"]
        a.plot(ts, [100 * u for u in v["series"]["util"]], lw=0.8, label=f"GPU {g}")
        b.plot(ts, [100 * u for u in v["series"]["stranded"]], lw=0.8)
    a.set_ylabel("KV utilisation (%)")
    b.set_ylabel("stranded (%)")
    b.set_xlabel("simulated time (s)")
    a.set_title(title)
    if len(summary) <= 12:
        a.legend(fontsize=7, ncol=4)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
