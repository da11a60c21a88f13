"""One terminal table for run summaries, measured (replay) or predicted (simulate), so the
two read the same way side by side."""

from __future__ import annotations

from rich.table import Table

COLUMNS = ("model", "requests", "done", "429", "errors", "SLO met", "TTFT met", "TPOT met",
           "goodput req/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "queue p50/p99 ms", "tok/s")


def summary_table(summary: dict, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, g in [*summary["per_model"].items(), ("all", summary["overall"])]:
        t.add_row(name, str(g["requests"]), str(g["completed"]), str(g["rejected_429"]),
                  str(g["errors"]), _pct(g, "slo_attainment"), _pct(g, "ttft_attainment"),
                  _pct(g, "tpot_attainment"),
                  f"{g['goodput_rps']:.2f}" if "goodput_rps" in g else "-",
                  _ms(g, "ttft_s"), _ms(g, "tpot_s"), _ms(g, "queue_s"),
                  f"{g['output_tokens_per_s']:.0f}")
    return t


def _pct(g: dict, key: str) -> str:
    return f"{g[key]:.1%}" if key in g else "-"


def _ms(g: dict, key: str) -> str:
    v = g.get(key)
    if v is None:
        return "-"
    return "-" if v["p50"] is None else f"{v['p50'] * 1e3:.0f} / {v['p99'] * 1e3:.0f}"
