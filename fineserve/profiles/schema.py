"""Latency profile schema: one measured point per row, read from CSV or Parquet and validated.

A row says: on this GPU, this model at this precision and TP degree, under this MPS SM share,
one prefill (or one decode step) of this batch took this long. Loading accepts any file layout;
shipped data uses ``data/{gpu}/{model}/{precision.name}.csv``. Every malformed cell is reported
with its file, spreadsheet row (the header is row 1) and column.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from fineserve.errors import ProfileError, SpecError
from fineserve.profiles.catalog import ModelSpec, builtin_models, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.precision import (
    KVFormat,
    Precision,
    WeightFormat,
    parse_kv_format,
    parse_weight_format,
)


class Phase(StrEnum):
    PREFILL = "prefill"  # latency_s: the whole batch's prefill; tokens: each prompt's length
    DECODE = "decode"  # latency_s: one step; tokens: mean context length during the step


COLUMNS = (
    "gpu", "model", "weights", "kv", "tp", "sm_pct", "phase",
    "batch", "tokens", "latency_s", "repeats", "rel_spread",
)  # fmt: skip
OPTIONAL_COLUMNS = {"repeats": 1, "rel_spread": 0.0}  # column -> value when the column is absent
SUFFIXES = (".csv", ".parquet")
_INT_COLUMNS = frozenset({"tp", "batch", "tokens", "repeats"})

# column -> (low, high, low excluded): the one statement of each numeric column's range.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "tp": (1, math.inf, False),
    "sm_pct": (1, 100, False),
    "batch": (1, math.inf, False),
    "tokens": (1, math.inf, False),
    "latency_s": (0, math.inf, True),
    "repeats": (1, math.inf, False),
    "rel_spread": (0, math.inf, False),
}


def _range_text(column: str) -> str:
    lo, hi, open_lo = _RANGES[column]
    if hi < math.inf:
        return f"is outside {lo:g}..{hi:g}"
    return f"must be {'>' if open_lo else '>='} {lo:g}"


def _in_range(column: str, value: Any) -> Any:
    """Whether ``value`` (a number or an array) lies in the column's range."""
    lo, hi, open_lo = _RANGES[column]
    return ((value > lo) if open_lo else (value >= lo)) & (value <= hi)


def _checked_number(column: str, value: Any) -> tuple[float, str | None]:
    """``value`` as the column's type (int or float), or why it cannot be."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0, "is not a number"
    if not math.isfinite(number):
        return 0.0, "is not a number"
    if column in _INT_COLUMNS:
        if not number.is_integer():
            return 0.0, "is not an integer"
        number = int(number)
    return number, None if _in_range(column, number) else _range_text(column)


@cache
def _canonical_model(name: str) -> str:
    """The built-in name for a built-in alias; any other name as written (a custom arch)."""
    builtin = {arch.name for arch in builtin_models()}
    if name in builtin:
        return name
    try:
        arch = resolve_arch(name)
    except SpecError:
        return name
    return arch.name if arch.name in builtin else name


class EngineKey(NamedTuple):
    """A profiled engine: what a latency depends on besides SM share, batch and tokens.
    A NamedTuple so that it sorts, hashes and unpacks like the row fields it names."""

    gpu: str
    model: str
    weights: WeightFormat
    kv: KVFormat
    tp: int

    @classmethod
    def of(cls, engine: EngineShape) -> EngineKey:
        p = engine.model.precision
        return cls(engine.gpu.name, engine.model.arch.name, p.weights, p.kv, engine.tp)

    @property
    def precision(self) -> Precision:
        return Precision(parse_weight_format(self.weights), parse_kv_format(self.kv))

    @property
    def key(self) -> str:
        """Equals ``EngineShape.key`` of the same engine, so either can index a cache."""
        return f"{self.gpu}/{self.model}@{self.precision.name}/tp{self.tp}"

    def shape(self) -> EngineShape:
        """The engine as the catalog describes it (UnknownModelError for a model it lacks)."""
        model = ModelSpec(resolve_arch(self.model), self.precision)
        return EngineShape(gpu_spec(self.gpu), model, self.tp)


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    """One measured point. Names are canonicalized (``h100`` -> ``H100-SXM-80GB``)."""

    gpu: str
    model: str
    weights: WeightFormat
    kv: KVFormat
    tp: int
    sm_pct: float
    phase: Phase
    batch: int
    tokens: int
    latency_s: float
    repeats: int = 1
    rel_spread: float = 0.0  # (max - min) / median over the repeats

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "gpu", gpu_spec(self.gpu).name)
        set_(self, "model", _canonical_model(self.model))
        if not isinstance(self.weights, WeightFormat):
            set_(self, "weights", parse_weight_format(self.weights))
        if not isinstance(self.kv, KVFormat):
            set_(self, "kv", parse_kv_format(self.kv))
        if not isinstance(self.phase, Phase):
            set_(self, "phase", _parse_phase(self.phase))
        for column in _RANGES:
            value = getattr(self, column)
            number, problem = _checked_number(column, value)
            if problem:
                raise ProfileError(f"latency point {self.gpu}/{self.model}, column {column}: "
                                   f"{value} {problem}")
            set_(self, column, number)

    @property
    def engine(self) -> EngineKey:
        return EngineKey(self.gpu, self.model, self.weights, self.kv, self.tp)

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the measured configuration: points sharing it are repeats."""
        return (self.engine, self.phase, self.sm_pct, self.batch, self.tokens)


def check_query(sm_pct: float, batch: float, tokens: float) -> None:
    """Reject a latency query no engine can run (written to also catch NaN)."""
    if not 0 < sm_pct <= 100:
        raise SpecError(f"sm_pct {sm_pct} is outside (0, 100]", hint="give an MPS share in %")
    if not batch >= 1:
        raise SpecError(f"batch {batch} must be >= 1")
    if not tokens > 0:
        raise SpecError(f"tokens {tokens} must be > 0")


class ProfileTable:
    """An immutable set of latency points, repeats merged, indexed by engine.

    Points that share a ``LatencyPoint.key`` are merged into one: the median latency, the sum
    of their repeats, and the larger of their spreads and their own (max - min) / median.
    """

    __slots__ = ("_by_engine", "_points")

    def __init__(self, points: Iterable[LatencyPoint] = ()) -> None:
        by_engine: dict[EngineKey, list[LatencyPoint]] = {}
        for point in sorted(_merge_repeats(points), key=lambda p: p.key):
            by_engine.setdefault(point.engine, []).append(point)
        self._by_engine = {key: tuple(pts) for key, pts in by_engine.items()}
        self._points = tuple(p for pts in self._by_engine.values() for p in pts)

    @classmethod
    def concat(cls, tables: Iterable[ProfileTable]) -> ProfileTable:
        return cls(p for table in tables for p in table)

    @property
    def points(self) -> tuple[LatencyPoint, ...]:
        return self._points

    def __len__(self) -> int:
        return len(self._points)

    def __iter__(self) -> Iterator[LatencyPoint]:
        return iter(self._points)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProfileTable) and self._points == other._points

    __hash__ = None  # type: ignore[assignment]

    def engines(self) -> tuple[EngineKey, ...]:
        """Distinct (gpu, model, weights, kv, tp), sorted."""
        return tuple(self._by_engine)

    def points_for(
        self, engine: EngineKey | EngineShape | tuple[Any, ...], phase: Phase | None = None
    ) -> tuple[LatencyPoint, ...]:
        """The engine's points (of one phase if given), sorted by (phase, sm_pct, batch, tokens).
        ``engine`` is an ``EngineKey`` (or a plain tuple of its five fields) or an
        ``EngineShape``; an engine without points gives an empty tuple."""
        key = EngineKey.of(engine) if isinstance(engine, EngineShape) else EngineKey(*engine)
        points = self._by_engine.get(key, ())
        return points if phase is None else tuple(p for p in points if p.phase is phase)

    def without(self, engines: Iterable[EngineKey]) -> ProfileTable:
        """This table less every point of ``engines``."""
        drop = set(engines)
        return ProfileTable(p for p in self._points if p.engine not in drop)

    def to_frame(self) -> pd.DataFrame:
        rows = [[str(getattr(p, c)) if c in _LABELS else getattr(p, c) for c in COLUMNS]
                for p in self._points]
        return pd.DataFrame(rows, columns=list(COLUMNS))


def _merge_repeats(points: Iterable[LatencyPoint]) -> list[LatencyPoint]:
    groups: dict[tuple[Any, ...], list[LatencyPoint]] = {}
    for point in points:
        groups.setdefault(point.key, []).append(point)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        latencies = [p.latency_s for p in group]
        median = statistics.median(latencies)
        spread = max((max(latencies) - min(latencies)) / median, *(p.rel_spread for p in group))
        repeats = sum(p.repeats for p in group)
        merged.append(replace(group[0], latency_s=median, repeats=repeats, rel_spread=spread))
    return merged


# ---- reading and writing files -----------------------------------------------------------

def _parse_phase(text: str) -> Phase:
    try:
        return Phase(text.lower())
    except ValueError:
        raise SpecError(f"unknown phase {text!r}", hint="write prefill or decode") from None


# text column -> (what it names, parser raising SpecError)
_LABELS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "gpu": ("GPU", lambda s: gpu_spec(s).name),
    "model": ("model", _canonical_model),
    "weights": ("weight precision", parse_weight_format),
    "kv": ("KV-cache precision", parse_kv_format),
    "phase": ("phase", _parse_phase),
}


def load_profile(path: str | Path) -> ProfileTable:
    """Read one profile file, or every .csv / .parquet file under a directory (recursively).

    Raises:
        ProfileError: naming the file, row and column of the first malformed cell.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise ProfileError(f"profile {root}: no .csv or .parquet files under it")
    elif root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise ProfileError(f"profile {root}: not a .csv or .parquet file")
        files = [root]
    else:
        raise ProfileError(f"profile {root}: no such file or directory")
    return ProfileTable(p for file in files for p in read_points(file))


def read_points(path: Path) -> list[LatencyPoint]:
    """Every row of one profile file as a validated point."""
    frame = read_frame(path)
    source = str(path)
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = columns
    for column in columns:
        if column not in COLUMNS:
            raise ProfileError(
                f"profile {source} row 1, column {column}: not a profile column",
                hint=f"use exactly these columns: {', '.join(COLUMNS)}",
            )
    for column in COLUMNS:
        if column not in columns and column not in OPTIONAL_COLUMNS:
            raise ProfileError(f"profile {source} row 1, column {column}: missing from the header")
    values: dict[str, Sequence[Any]] = {}
    for column in COLUMNS:
        if column not in columns:
            values[column] = [OPTIONAL_COLUMNS[column]] * len(frame)
        elif column in _LABELS:
            values[column] = read_labels(frame, column, source)
        else:
            numbers = read_numbers(
                frame, column, source, integer=column in _INT_COLUMNS, within=column
            )
            integral = column in _INT_COLUMNS
            values[column] = (numbers.astype(int) if integral else numbers).tolist()
    return [LatencyPoint(*row) for row in zip(*(values[c] for c in COLUMNS), strict=True)]


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV (every cell as text) or Parquet file as a frame; unreadable -> ProfileError."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"profile {path}: cannot read it: {exc}") from None


def read_numbers(
    frame: pd.DataFrame, column: str, source: str, *, integer: bool, within: str | None = None
) -> np.ndarray:
    """A column as floats. The first empty, non-numeric, fractional (if ``integer``) or
    out-of-range cell (outside the range of schema column ``within``) raises ProfileError
    naming its row."""
    numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    _raise_at(frame, column, source, ~np.isfinite(numbers), "is not a number")
    if integer:
        _raise_at(frame, column, source, numbers != np.round(numbers), "is not an integer")
    if within is not None:
        _raise_at(frame, column, source, ~_in_range(within, numbers), _range_text(within))
    return numbers


def read_labels(frame: pd.DataFrame, column: str, source: str) -> list[Any]:
    """A text column parsed by its ``_LABELS`` parser, each distinct value once."""
    what, parse = _LABELS[column]
    raw = frame[column].astype(str).str.strip()
    parsed: dict[str, Any] = {}
    for text in raw.unique():
        rows = (raw == text).to_numpy()
        if not text:
            _raise_at(frame, column, source, rows, "is empty")
        try:
            parsed[text] = parse(text)
        except SpecError as exc:
            _raise_at(frame, column, source, rows, f"is not a known {what}", exc.hint)
    return [parsed[text] for text in raw]


def _raise_at(
    frame: pd.DataFrame, column: str, source: str, bad: np.ndarray, problem: str,
    hint: str | None = None,
) -> None:  # fmt: skip
    """Raise ProfileError for the first row flagged in ``bad``, quoting its cell."""
    if not bad.any():
        return
    i = int(np.argmax(bad))
    text = str(frame[column].iloc[i]).strip()
    what = f"{text} {problem}" if text else "is empty"
    raise ProfileError(f"profile {source} row {i + 2}, column {column}: {what}", hint=hint)


def save_profile(table: ProfileTable, path: str | Path) -> Path:
    """Write ``table`` as CSV or Parquet, chosen by the suffix; parent folders are created."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        raise ProfileError(f"profile {target}: cannot write {suffix or 'no suffix'}",
                           hint="name the file .csv or .parquet")
    target.parent.mkdir(parents=True, exist_ok=True)
    frame = table.to_frame()
    if suffix == ".csv":
        frame.to_csv(target, index=False)
    else:
        frame.to_parquet(target, index=False)
    return target
