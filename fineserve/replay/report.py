"""Write a replay's results: per-request log, JSON summary, latency plots."""

from __future__ import annotations

import json
from pathlib import Path

from fineserve.metrics.summary import RequestRecord, records_frame, summarize
from fineserve.planner.schema import Slo


def write_results(out_dir: Path, records: list[RequestRecord], slos: dict[str, Slo],
                  duration_s: float) -> dict:
    """requests.csv, summary.json and (with matplotlib) latency.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = records_frame(records)
    df.to_csv(out_dir / "requests.csv", index=False)
    summary = summarize(records, slos, duration_s, source="replay")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        _plot(df, out_dir / "latency.png")
    except ImportError:  # plots are optional: pip install 'fineserve[plots]'
        pass
    return summary


def _plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = df[df.ok]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, col, label in ((axes[0], "ttft_s", "TTFT (s)"), (axes[1], "tpot_s", "TPOT (s)")):
        for model, g in ok.groupby("model"):
            v = np.sort(g[col].to_numpy())
            ax.plot(v, np.arange(1, v.size + 1) / v.size, label=str(model))
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
