"""Measured against predicted: a replay's summary beside the simulator's on the same plan and
trace, with the error of each figure, so a deployment can be checked against its plan and the
simulator against reality (the same summary format on both sides)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

# (label, path into a per-model summary, relative error makes sense)
FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SLO met", ("slo_attainment",)),
    ("goodput req/s", ("goodput_rps",)),
    ("tok/s", ("output_tokens_per_s",)),
    ("TTFT p50 ms", ("ttft_s", "p50")),
    ("TTFT p99 ms", ("ttft_s", "p99")),
    ("TPOT p50 ms", ("tpot_s", "p50")),
    ("TPOT p99 ms", ("tpot_s", "p99")),
)


@dataclass(frozen=True, slots=True)
class FigurePair:
    model: str
    figure: str
    measured: float | None
    predicted: float | None

    @property
    def error(self) -> float | None:
        """Predicted minus measured; relative for rates and latencies, absolute (points) for
        attainment, which is already a fraction."""
        if self.measured is None or self.predicted is None:
            return None
        if self.figure == "SLO met":
            return self.predicted - self.measured
        if self.measured == 0:
            return None
        return (self.predicted - self.measured) / self.measured


def _get(group: dict, path: tuple[str, ...]) -> float | None:
    v: object = group
    for key in path:
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    if not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)


def pair_summaries(measured: dict, predicted: dict) -> list[FigurePair]:
    """Every figure of every model present in either summary, plus the overall row."""
    rows = []
    models = sorted(set(measured.get("per_model", {})) | set(predicted.get("per_model", {})))
    for model in [*models, "all"]:
        m = measured["overall"] if model == "all" else measured["per_model"].get(model, {})
        p = predicted["overall"] if model == "all" else predicted["per_model"].get(model, {})
        for label, path in FIGURES:
            scale = 1e3 if label.endswith("ms") else 1.0
            mv, pv = _get(m, path), _get(p, path)
            rows.append(FigurePair(model, label, None if mv is None else mv * scale,
                                   None if pv is None else pv * scale))
    return rows


def versus_table(pairs: list[FigurePair], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("model", "figure", "measured", "predicted", "error"):
        t.add_column(col, justify="left" if col in ("model", "figure") else "right")
    for p in pairs:
        if p.measured is None and p.predicted is None:
            continue
        t.add_row(p.model, p.figure, _fmt(p.figure, p.measured), _fmt(p.figure, p.predicted),
                  _err(p))
    return t


def _fmt(figure: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if figure == "SLO met" else f"{v:.2f}" if "req/s" in figure else f"{v:.0f}"


def _err(p: FigurePair) -> str:
    e = p.error
    if e is None:
        return "-"
    return f"{100 * e:+.1f} pt" if p.figure == "SLO met" else f"{e:+.1%}"
