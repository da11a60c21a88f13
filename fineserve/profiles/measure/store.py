"""Where one (GPU, model, precision) profile lives, what of it is done, and its export.

Layout under the output root, the same as the shipped profiles (``data/{gpu}/{model}/``):

    {gpu}/{model}/{precision}.jsonl       every record as measured (the source of truth)
    {gpu}/{model}/{precision}.csv         the profile schema (what ``fineserve plan`` loads)
    {gpu}/{model}/{precision}.meta.json   GPU, driver, versions, dates, memory, spreads
    {gpu}/{model}/{precision}.log         the engine workers' output

The CSV is rewritten from the JSONL after every engine, so it never holds half a grid: an SM
share goes in once every planned point of it is measured (``TableLatency`` refuses holes).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from fineserve.profiles.measure.records import (
    PREFILL,
    EngineLabel,
    EngineRecord,
    PointRecord,
    PointSpec,
    read_records,
    same_method,
)
from fineserve.profiles.measure.stats import SPREAD_TARGET, median, rel_spread
from fineserve.profiles.precision import Precision
from fineserve.profiles.quality import SPREAD_LIMIT, screen
from fineserve.profiles.schema import LatencyPoint, ProfileTable, save_profile


@dataclass(frozen=True, slots=True)
class ExportSummary:
    csv: Path | None  # None when no SM share is complete yet
    points: int
    complete: tuple[float, ...]  # SM shares written
    incomplete: tuple[float, ...]  # SM shares with planned points still missing
    max_spread: float
    over_target: int  # points whose rel_spread exceeds SPREAD_TARGET


class ResultStore:
    """Files of one (GPU, model, precision) profile under ``root``."""

    def __init__(self, root: Path, gpu: str, model: str, precision: Precision) -> None:
        self.folder = root / gpu / model
        self.gpu, self.model, self.precision = gpu, model, precision
        stem = precision.name
        self.results = self.folder / f"{stem}.jsonl"
        self.csv = self.folder / f"{stem}.csv"
        self.meta = self.folder / f"{stem}.meta.json"
        self.log = self.folder / f"{stem}.log"

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def points(self) -> list[PointRecord]:
        """Valid point records, in the order measured, one per run of a point: the attempt
        whose repeats spread least (``attempt_runs``)."""
        return [kept(run) for run in self.runs()]

    def runs(self) -> list[tuple[PointRecord, ...]]:
        """Valid point records grouped into runs (``attempt_runs``)."""
        records = read_records(self.results)
        return attempt_runs(r for r in records if isinstance(r, PointRecord) and r.valid)

    def retried(self) -> list[str]:
        """One line per point whose standing run took more than one attempt (for metadata:
        the CSV has no column for it)."""
        standing = {(run[0].label, run[0].key): run for run in self.runs()}
        return [_retry_line(run) for run in standing.values() if len(run) > 1]

    def engines(self) -> list[EngineRecord]:
        return [r for r in read_records(self.results) if isinstance(r, EngineRecord)]

    def done(self, label: EngineLabel, *, redo_noisy: bool = False,
             current: dict[tuple[str, int, int], str] | None = None,
             ) -> set[tuple[str, int, int]]:  # fmt: skip
        """Keys of the points already measured on ``label``'s engine with a current method.
        Superseded records still ship (``points``) but are measured again.

        With ``redo_noisy``, also not those whose latest record fails a check: its repeats
        spread over the 5% target, or ``quality.screen`` leaves it out of the latency model
        (slower than at a smaller SM share: the engine ran slow for its turn). A record of
        an older method than today's (``current``: key -> the method the worker uses now)
        is measured again with today's. One of today's method gets one more run, once:
        a second run of today's method that fails the same check stands, reported as it is
        (a spread is not re-drawn until a run passes); session 7's four rows over 5% and the
        3B's slow SM-100 turn are such first runs. And a grid cell into which a measured
        point off the grid ships as a repeat (``with_extra_prefill``: same total, same
        method) with a spread over the target is measured again when the cell's method is
        not today's: the new record's method then leaves the extra out (the first grid's
        4 x 512 beside a 1 x 2048 cell)."""
        current = current or {}
        points = self.points()  # the JSONL read once for every check below
        every = _latest(points)
        latest = every.get(label, {})
        if not redo_noisy:
            return {k for k, p in latest.items() if p.superseded is None}
        runs: Counter[tuple[str, int, int]] = Counter()  # today's method: all runs
        noisy_runs: Counter[tuple[str, int, int]] = Counter()  # ... over the spread target
        for p in points:
            if p.label == label and same_method(current.get(p.key, ""), p.method):
                runs[p.key] += 1
                noisy_runs[p.key] += rel_spread(p.latencies) > SPREAD_TARGET
        noisy_cells = _cells_with_noisy_extras(latest, current)
        implausible = _screened_out(every).get(label, set())

        def again(p: PointRecord) -> bool:
            if p.key in noisy_cells:
                return True
            noisy = rel_spread(p.latencies) > SPREAD_TARGET
            if not noisy and p.key not in implausible:
                return False
            if not same_method(current.get(p.key, ""), p.method):
                return True  # an older method's record: measure with today's
            return (noisy_runs if noisy else runs)[p.key] < 2

        return {k for k, p in latest.items() if p.superseded is None and not again(p)}

    def latest(self) -> dict[EngineLabel, dict[tuple[str, int, int], PointRecord]]:
        """The record that stands for each point of each engine: the latest valid one."""
        return _latest(self.points())

    def screened_out(self) -> dict[EngineLabel, set[tuple[str, int, int]]]:
        """Keys of the latest points that ``quality.screen`` leaves out of the latency model
        as implausibly slow (``_screened_out``)."""
        return _screened_out(self.latest())

    def start_times(self) -> list[float]:
        return [e.start_s for e in self.engines() if e.error is None]

    def export(self, planned: dict[EngineLabel, tuple[PointSpec, ...]]) -> ExportSummary:
        """Rewrite the CSV and the metadata from the JSONL; see the module docstring."""
        by_label = self.latest()  # a rerun's repeat wins
        rows: list[LatencyPoint] = []
        complete, incomplete = set(), set()
        full = {label: by_label.get(label, {}) for label, points in planned.items()
                if all(p.key in by_label.get(label, {}) for p in points)}
        totals = common_prefill_totals(full.values())
        for label, points in planned.items():
            if label not in full:
                incomplete.add(label.sm_pct)
                continue
            complete.add(label.sm_pct)
            rows += [to_latency_point(r) for r in with_extra_prefill(full[label], points, totals)]
        spreads = [p.rel_spread for p in rows]
        written = None
        if rows:
            written = save_profile(ProfileTable(rows), self.csv)
        else:  # nothing complete (any more: e.g. its points turned stale): no CSV to load
            self.csv.unlink(missing_ok=True)
        summary = ExportSummary(
            written, len(rows), tuple(sorted(complete)), tuple(sorted(incomplete - complete)),
            max(spreads, default=0.0), sum(s > SPREAD_TARGET for s in spreads),
        )  # fmt: skip
        self._write_meta(summary, rows)
        return summary

    def _write_meta(self, summary: ExportSummary, rows: Iterable[LatencyPoint]) -> None:
        engines = self.engines()
        ok = [e for e in engines if e.error is None]
        spreads = [p.rel_spread for p in rows]
        meta = {
            "gpu": self.gpu,
            "model": self.model,
            "precision": self.precision.name,
            "device_name": _common(e.device_name for e in ok),
            "driver": _common(e.driver for e in ok),
            "vllm_version": _common(e.vllm_version for e in ok),
            "torch_version": _common(e.torch_version for e in ok),
            "dates": sorted({e.date[:10] for e in ok}),
            "cuda_graphs": _common(str(e.cuda_graphs).lower() for e in ok),
            "complete_sm_pcts": list(summary.complete),
            "incomplete_sm_pcts": list(summary.incomplete),
            "points": summary.points,
            "rel_spread": {
                "median": statistics.median(spreads) if spreads else None,
                "max": summary.max_spread if spreads else None,
                "over_5pct": summary.over_target,
            },
            "retried": self.retried(),
            "engines": [asdict(e) for e in engines],
        }
        self.meta.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _latest(points: Iterable[PointRecord],
            ) -> dict[EngineLabel, dict[tuple[str, int, int], PointRecord]]:  # fmt: skip
    by_label: dict[EngineLabel, dict[tuple[str, int, int], PointRecord]] = {}
    for record in points:
        by_label.setdefault(record.label, {})[record.key] = record
    return by_label


def _screened_out(latest: dict[EngineLabel, dict[tuple[str, int, int], PointRecord]],
                  ) -> dict[EngineLabel, set[tuple[str, int, int]]]:  # fmt: skip
    """Judged against every SM share of the profile; a spread over the limit is the noisy
    rule's to judge (its turn-mates are not redone for it), and only points whose repeats
    agree can be the smaller share's reference."""
    points = (to_latency_point(r) for done in latest.values() for r in done.values())
    rejected = screen((p for p in points if p.rel_spread <= SPREAD_LIMIT),
                      limit=float("inf")).rejected
    out: dict[EngineLabel, set[tuple[str, int, int]]] = {}
    for label, done in latest.items():
        gone = {(p.phase.value, p.batch, p.tokens) for p in rejected
                if p.sm_pct == label.sm_pct and p.tp == label.tp}
        if gone & done.keys():
            out[label] = gone & done.keys()
    return out


def attempt_runs(records: Iterable[PointRecord]) -> list[tuple[PointRecord, ...]]:
    """Records grouped into runs of a point, in order: a retry (``attempt`` > 1, taken at
    once by the worker) joins the run of the record before it of the same engine and point;
    any other record starts a run (a later session's measurement replaces, not joins)."""
    runs: list[list[PointRecord]] = []
    last: dict[tuple[EngineLabel, tuple[str, int, int]], int] = {}
    for r in records:
        k = (r.label, r.key)
        if r.attempt > 1 and k in last:
            runs[last[k]].append(r)
        else:
            last[k] = len(runs)
            runs.append([r])
    return [tuple(run) for run in runs]


def kept(run: tuple[PointRecord, ...]) -> PointRecord:
    """The attempt that stands for a run: the one whose repeats spread least (the first on
    a tie). Its spread is reported whole; the others stay in the JSONL."""
    return min(run, key=lambda r: rel_spread(r.latencies))


def _retry_line(run: tuple[PointRecord, ...]) -> str:
    r = run[0]
    spreads = " / ".join(f"{rel_spread(a.latencies):.1%}" for a in run)
    clocks = " / ".join(f"{a.telemetry.sm_mhz_min}-{a.telemetry.sm_mhz_max} MHz"
                        if a.telemetry is not None else "-" for a in run)
    return (f"SM {r.label.sm_pct:g} {r.phase} {r.batch} x {r.tokens}: {len(run)} attempts, "
            f"spreads {spreads}, SM clock {clocks}, kept attempt {kept(run).attempt}")


def _cells_with_noisy_extras(
    latest: dict[tuple[str, int, int], PointRecord], current: dict[tuple[str, int, int], str],
) -> set[tuple[str, int, int]]:  # fmt: skip
    """Grid prefill cells (keys of ``current``) of an older method than today's into which a
    measured off-grid point over the spread target ships as a repeat (same total and method,
    ``with_extra_prefill``)."""
    cells = {k[1] * k[2]: k for k in current if k[0] == PREFILL}
    out = set()
    for key, extra in latest.items():
        cell = cells.get(extra.batch * extra.tokens)
        if key in current or extra.phase != PREFILL or cell is None or cell not in latest:
            continue
        mine = latest[cell]
        if (mine.method == extra.method and not same_method(current[cell], mine.method)
                and rel_spread(extra.latencies) > SPREAD_TARGET):
            out.add(cell)
    return out


def _common(values: Iterable[str]) -> str:
    """The one value all engines agree on, or all distinct values joined."""
    distinct = sorted({v for v in values if v})
    return " | ".join(distinct)


def common_prefill_totals(complete: Iterable[dict[tuple[str, int, int], PointRecord]]) -> set[int]:
    """Prefill totals (batch x tokens) measured on every one of the ``complete`` engines."""
    sets = [{r.batch * r.tokens for r in done.values() if r.phase == PREFILL} for done in complete]
    return set.intersection(*sets) if sets else set()


def with_extra_prefill(
    done: dict[tuple[str, int, int], PointRecord], wanted: Iterable[PointSpec], totals: set[int]
) -> list[PointRecord]:  # fmt: skip
    """The wanted points' records, plus measured prefill points off the grid whose total
    (batch x tokens) is in ``totals`` (``common_prefill_totals`` of the SM shares shipped).
    ``TableLatency`` indexes prefill by that total: a total the grid has merges as a repeat
    of its cell (``GridSpec.pruned``) unless the cell's own record was taken with another
    method (today's: the extra is an older, noisier draw of the same cell, e.g. the
    first grid's 4 x 512 single-run ``step-ts/2`` beside a ``step-ts/3 med3`` 1 x 2048); one
    measured at every SM share adds a full column (the 4 x 2048 points of earlier grids);
    one missing somewhere would leave a hole."""
    wanted = list(wanted)
    keys = {p.key for p in wanted}
    cells = {done[p.key].batch * done[p.key].tokens: done[p.key].method for p in wanted
             if p.phase == PREFILL and p.key in done}
    extra = [r for k, r in done.items() if k not in keys and r.phase == PREFILL
             and r.batch * r.tokens in totals
             and cells.get(r.batch * r.tokens, r.method) == r.method]
    return [done[p.key] for p in wanted] + extra


def to_latency_point(record: PointRecord) -> LatencyPoint:
    """A measured point in the profile schema: median latency, repeat count, spread."""
    label = record.label
    return LatencyPoint(
        label.gpu, label.model, label.weights, label.kv, label.tp, label.sm_pct, record.phase,
        record.batch, record.tokens, median(record.latencies), len(record.latencies),
        rel_spread(record.latencies),
    )  # fmt: skip
