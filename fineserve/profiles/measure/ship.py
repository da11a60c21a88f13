"""Turn measured results into shipped package data, phase by phase.

A phase of an SM share ships once every point of it that the grid plans is measured with a
method not known to be wrong (``records.STALE_METHODS``); the other phase can be missing, and
``composite.overlay`` then keeps the published table's points for it. Written beside the
CSV: ``{precision}.meta.json`` saying what shipped, how it was measured and its spreads.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from fineserve.profiles.measure.grid import GridSpec
from fineserve.profiles.measure.records import DECODE, PREFILL, EngineLabel, PointRecord
from fineserve.profiles.measure.store import (
    SPREAD_TARGET,
    ResultStore,
    common_prefill_totals,
    to_latency_point,
    with_extra_prefill,
)
from fineserve.profiles.schema import LatencyPoint, ProfileTable, save_profile


@dataclass(frozen=True, slots=True)
class ShipSummary:
    csv: Path | None  # None: nothing complete to ship
    sm_pcts: dict[str, tuple[float, ...]]  # phase -> SM shares shipped
    points: int
    over_target: int  # shipped points whose rel_spread exceeds 5%


def ship(store: ResultStore, grid: GridSpec, dest_root: Path, *, note: str = "") -> ShipSummary:
    """Write ``dest_root/{gpu}/{model}/{precision}.csv`` (+ meta) from ``store``'s records."""
    by_label: dict[EngineLabel, dict[tuple[str, int, int], PointRecord]] = {}
    for record in store.points():
        by_label.setdefault(record.label, {})[record.key] = record
    stale = sorted({f"{r.phase}: {r.method}: {r.stale}" for r in _all_points(store) if r.stale})
    plan = grid.points()
    rows: list[LatencyPoint] = []
    shipped: dict[str, list[float]] = {PREFILL: [], DECODE: []}
    methods: dict[str, set[str]] = {PREFILL: set(), DECODE: set()}
    superseded: set[str] = set()
    labels = sorted((lb for lb in by_label if lb.sm_pct in grid.sm_pcts), key=lambda lb: -lb.sm_pct)
    complete = {phase: [lb for lb in labels if all(
        p.key in by_label[lb] for p in plan if p.phase == phase)] for phase in (PREFILL, DECODE)}
    totals = common_prefill_totals(by_label[lb] for lb in complete[PREFILL])
    for phase in (PREFILL, DECODE):
        wanted = [p for p in plan if p.phase == phase]
        for label in complete[phase]:
            records = with_extra_prefill(by_label[label], wanted, totals if phase == PREFILL
                                         else set())
            rows += [to_latency_point(r) for r in records]
            shipped[phase].append(label.sm_pct)
            methods[phase] |= {r.method for r in records}
            superseded |= {f"{phase}: {r.method}: {r.superseded}" for r in records
                           if r.superseded}
    folder = dest_root / store.gpu / store.model
    csv = folder / f"{store.precision.name}.csv"
    meta = csv.with_name(f"{store.precision.name}.meta.json")
    spreads = [p.rel_spread for p in rows]
    if not rows:
        return ShipSummary(None, {}, 0, 0)
    save_profile(ProfileTable(rows), csv)
    engines = [e for e in store.engines() if e.error is None and e.stale is None]
    meta.write_text(json.dumps({
        "source": "fineserve profile (docs/profiler.md)",
        "note": note,
        "gpu": store.gpu, "model": store.model, "precision": store.precision.name,
        "device_name": sorted({e.device_name for e in engines if e.device_name}),
        "vllm_version": sorted({e.vllm_version for e in engines}),
        "torch_version": sorted({e.torch_version for e in engines}),
        "cuda_graphs": sorted({e.cuda_graphs for e in engines}),
        "async_scheduling": sorted({str(e.async_scheduling) for e in engines}),
        "dates": sorted({e.date[:10] for e in engines}),
        "phases": {ph: {"sm_pcts": sorted(v), "methods": sorted(methods[ph])}
                   for ph, v in shipped.items()},
        "not_shipped_stale": stale,
        "retried": store.retried(),
        "shipped_superseded": sorted(superseded),
        "rel_spread": {"definition": "(max - min) / median over the timed repeats (a "
                       "repeat of method 'medN' is the median of N runs)",
                       "median": statistics.median(spreads), "max": max(spreads),
                       "over_5pct": sum(s > SPREAD_TARGET for s in spreads),
                       "points": len(spreads)},
    }, indent=1, sort_keys=True) + "\n")
    return ShipSummary(csv, {ph: tuple(sorted(v)) for ph, v in shipped.items()}, len(rows),
                       sum(s > SPREAD_TARGET for s in spreads))


def _all_points(store: ResultStore) -> list[PointRecord]:
    from fineserve.profiles.measure.records import read_records

    return [r for r in read_records(store.results) if isinstance(r, PointRecord)]
