"""Measured latency tables: piecewise-linear interpolation over a monotone rectilinear grid.

Prefill is looked up over (sm_pct, batch x prompt tokens), decode over (sm_pct, batch, context).
Each engine's grids are built once: repeats merged, missing cells filled, monotonicity enforced.
A lookup is then a few bisects and a multilinear blend in plain Python (a few microseconds,
no numpy or pandas), because the planner asks ~1e6 times.

Rules:
- On a grid point the answer is MEASURED; between points INTERPOLATED (linear on each axis).
- Outside the measured range on any axis the answer is the value at the nearest edge, CLAMPED.
  The table never extrapolates; ``ProfiledLatency`` does, anchored to the edge.
- The grid is the product of the values measured on each axis. A missing cell is filled by
  linear interpolation along the tokens axis (prefill) or batch axis (decode) between measured
  neighbours, and then answers INTERPOLATED; a missing cell with no measured neighbour on one
  side of that axis raises ProfileError naming it.
- Latency is made non-decreasing in tokens, batch and context and non-increasing in sm_pct by
  running maxima over the grid (the smallest monotone grid above the data), so noise cannot
  produce a non-monotone answer. Multilinear blends of a monotone grid stay monotone.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fineserve.errors import ProfileError
from fineserve.profiles.latency import EngineShape, Latency, LatencySource
from fineserve.profiles.schema import EngineKey, LatencyPoint, Phase, ProfileTable, check_query

_ON, _BETWEEN, _OUT = 0, 1, 2  # where a query lies on one axis
_MEASURED, _INTERPOLATED, _CLAMPED = (
    LatencySource.MEASURED, LatencySource.INTERPOLATED, LatencySource.CLAMPED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EngineDomain:
    """The measured box of one engine; ``TableLatency`` answers CLAMPED outside it."""

    prefill_min_sm: float
    prefill_max_sm: float
    decode_min_sm: float
    decode_max_sm: float
    min_prefill_tokens: int  # batch x prompt tokens of one prefill
    max_prefill_tokens: int
    max_prompt_tokens: int  # longest prompt measured: attention beyond it is not in the table
    min_batch: int  # decode batch
    max_batch: int
    min_context: float  # decode mean context
    max_context: float

    @property
    def min_sm(self) -> float:
        """Lowest SM share at which both phases are measured."""
        return max(self.prefill_min_sm, self.decode_min_sm)

    @property
    def max_sm(self) -> float:
        return min(self.prefill_max_sm, self.decode_max_sm)


@dataclass(frozen=True, slots=True)
class MonotoneGrid:
    """Latencies on a rectilinear grid, blended multilinearly; 2 or 3 axes, axis 0 sm_pct.

    Built by ``build``, which makes the values non-increasing along axis 0 and non-decreasing
    along the others. Lookups outside the axes answer the nearest edge's value, CLAMPED.
    """

    axes: tuple[tuple[float, ...], ...]  # ascending
    values: list  # type: ignore[type-arg]  # nested lists: values[i][j] or values[i][j][k]
    measured: frozenset[tuple[int, ...]]  # cells holding data (not fills): MEASURED there

    @classmethod
    def build(
        cls,
        axes: Sequence[Sequence[float]],
        values: np.ndarray,
        measured: frozenset[tuple[int, ...]] = frozenset(),
    ) -> MonotoneGrid:
        """Raise ``values`` to the smallest grid above them that is monotone as stated."""
        grid = np.flip(np.maximum.accumulate(np.flip(values, 0), axis=0), 0)  # fewer SMs: slower
        for axis in range(1, grid.ndim):
            grid = np.maximum.accumulate(grid, axis=axis)
        return cls(tuple(tuple(float(v) for v in a) for a in axes), grid.tolist(), measured)

    def at2(self, x0: float, x1: float) -> Latency:
        i, wi, si = _locate(self.axes[0], x0)
        j, wj, sj = _locate(self.axes[1], x1)
        seconds = _blend2(self.values, i, wi, j, wj)
        if si == _OUT or sj == _OUT:
            return Latency(seconds, _CLAMPED)
        exact = si == _ON and sj == _ON and (i, j) in self.measured
        return Latency(seconds, _MEASURED if exact else _INTERPOLATED)

    def at3(self, x0: float, x1: float, x2: float) -> Latency:
        i, wi, si = _locate(self.axes[0], x0)
        j, wj, sj = _locate(self.axes[1], x1)
        k, wk, sk = _locate(self.axes[2], x2)
        values = self.values
        seconds = _blend2(values[i], j, wj, k, wk)
        if wi:
            seconds = _lerp(seconds, _blend2(values[i + 1], j, wj, k, wk), wi)
        if si == _OUT or sj == _OUT or sk == _OUT:
            return Latency(seconds, _CLAMPED)
        exact = si == _ON and sj == _ON and sk == _ON and (i, j, k) in self.measured
        return Latency(seconds, _MEASURED if exact else _INTERPOLATED)


@dataclass(frozen=True, slots=True)
class _EngineGrids:
    prefill: MonotoneGrid  # axes (sm_pct, batch x prompt tokens)
    decode: MonotoneGrid  # axes (sm_pct, batch, context)
    domain: EngineDomain


class TableLatency:
    """A ``LatencyModel`` over measured profiles; covers exactly the table's engines.

    Raises:
        ProfileError: at construction, if an engine lacks a phase or has an unfillable hole.
    """

    __slots__ = ("_engines", "_last", "table")

    def __init__(self, table: ProfileTable) -> None:
        self.table = table
        self._engines = {key.key: _build_engine(key, table) for key in table.engines()}
        # The planner asks about one engine many times in a row: remember the last one by
        # identity (held here, so its id cannot be reused) and skip building its key string.
        self._last: tuple[EngineShape | None, _EngineGrids | None] = (None, None)

    def engines(self) -> tuple[EngineKey, ...]:
        return self.table.engines()

    def covers(self, engine: EngineShape) -> bool:
        return engine.key in self._engines

    def domain(self, engine: EngineShape) -> EngineDomain:
        return self._grids(engine).domain

    def grid_axes(self, engine: EngineShape, phase: Phase) -> tuple[tuple[float, ...], ...]:
        """The measured values on each axis: (sm_pct, batch x prompt tokens) for prefill,
        (sm_pct, batch, context) for decode."""
        grids = self._grids(engine)
        return (grids.prefill if phase is Phase.PREFILL else grids.decode).axes

    def prefill(
        self, engine: EngineShape, prompt_tokens: float, sm_pct: float, batch: float = 1
    ) -> Latency:
        check_query(sm_pct, batch, prompt_tokens)
        return self._grids(engine).prefill.at2(sm_pct, prompt_tokens * batch)

    def decode_step(
        self, engine: EngineShape, batch: float, context_tokens: float, sm_pct: float
    ) -> Latency:
        check_query(sm_pct, batch, context_tokens)
        return self._grids(engine).decode.at3(sm_pct, batch, context_tokens)

    def _grids(self, engine: EngineShape) -> _EngineGrids:
        last, grids = self._last
        if last is engine and grids is not None:
            return grids
        grids = self._engines.get(engine.key)
        if grids is None:
            raise ProfileError(
                f"no latency profile for engine {engine.key}",
                hint="check covers() first, or use ProfiledLatency to estimate it",
            )
        self._last = (engine, grids)
        return grids


# ---- lookup ----------------------------------------------------------------------------


def _locate(axis: tuple[float, ...], x: float) -> tuple[int, float, int]:
    """(i, w, where): x lies at fraction w from axis[i] towards axis[i + 1]."""
    if x <= axis[0]:
        return 0, 0.0, _ON if x == axis[0] else _OUT
    last = len(axis) - 1
    if x >= axis[last]:
        return last, 0.0, _ON if x == axis[last] else _OUT
    i = bisect_right(axis, x) - 1
    lo = axis[i]
    if x == lo:
        return i, 0.0, _ON
    return i, (x - lo) / (axis[i + 1] - lo), _BETWEEN


def _lerp(a: float, b: float, w: float) -> float:
    # a + w (b - a) is monotone in w; the min/max keeps rounding from overshooting b.
    v = a + w * (b - a)
    return min(v, b) if a <= b else max(v, b)


def _blend2(values: Sequence[Sequence[float]], i: int, wi: float, j: int, wj: float) -> float:
    row = values[i]
    a = _lerp(row[j], row[j + 1], wj) if wj else row[j]
    if not wi:
        return a
    row = values[i + 1]
    b = _lerp(row[j], row[j + 1], wj) if wj else row[j]
    return _lerp(a, b, wi)


# ---- building --------------------------------------------------------------------------


def _build_engine(key: EngineKey, table: ProfileTable) -> _EngineGrids:
    phases = {}
    for phase in Phase:
        points = table.points_for(key, phase)
        if not points:
            raise ProfileError(
                f"profile {key.key}: no {phase} points",
                hint="profile both phases of every engine, or drop this engine's points",
            )
        phases[phase] = points
    prefill = _build_grid(
        [(p.sm_pct, p.batch * p.tokens) for p in phases[Phase.PREFILL]],
        phases[Phase.PREFILL],
        fill_axis=1,
        describe=lambda c: f"prefill point sm_pct={c[0]:g}, batch x tokens={c[1]:g}",
        key=key,
    )
    decode = _build_grid(
        [(p.sm_pct, p.batch, p.tokens) for p in phases[Phase.DECODE]],
        phases[Phase.DECODE],
        fill_axis=1,
        describe=lambda c: f"decode point sm_pct={c[0]:g}, batch={c[1]:g}, tokens={c[2]:g}",
        key=key,
    )
    pa, da = prefill.axes, decode.axes
    longest = max(p.tokens for p in phases[Phase.PREFILL])
    domain = EngineDomain(
        pa[0][0], pa[0][-1], da[0][0], da[0][-1], int(pa[1][0]), int(pa[1][-1]), longest,
        int(da[1][0]), int(da[1][-1]), da[2][0], da[2][-1],
    )  # fmt: skip
    return _EngineGrids(prefill, decode, domain)


def _build_grid(
    coords: list[tuple[float, ...]],
    points: Sequence[LatencyPoint],
    *,
    fill_axis: int,
    describe: Callable[[tuple[float, ...]], str],
    key: EngineKey,
) -> MonotoneGrid:
    """The rectilinear grid over the measured axis values, filled and made monotone."""
    axes = [sorted({c[a] for c in coords}) for a in range(len(coords[0]))]
    index = [{v: i for i, v in enumerate(axis)} for axis in axes]
    cells: dict[tuple[int, ...], list[float]] = {}
    for c, point in zip(coords, points, strict=True):
        cell = tuple(index[a][v] for a, v in enumerate(c))
        cells.setdefault(cell, []).append(point.latency_s)
    grid = np.full([len(a) for a in axes], np.nan)
    for cell, latencies in cells.items():
        grid[cell] = statistics.median(latencies)  # e.g. 2 x 256 and 1 x 512 prefill tokens
    _fill(grid, axes, fill_axis, lambda cell: f"profile {key.key}: no {describe(cell)}")
    return MonotoneGrid.build(axes, grid, frozenset(cells))


def _fill(
    grid: np.ndarray,
    axes: list[list[float]],
    axis: int,
    missing: Callable[[tuple[float, ...]], str],
) -> None:
    """Fill holes in place along ``axis`` from measured neighbours on both sides."""
    lines = np.moveaxis(grid, axis, -1)  # a view: writes go to grid
    along = np.asarray(axes[axis])
    for idx in np.ndindex(lines.shape[:-1]):
        line = lines[idx]
        holes = np.isnan(line)
        if not holes.any():
            continue
        known = np.flatnonzero(~holes)
        for h in np.flatnonzero(holes):
            if not len(known) or h < known[0] or h > known[-1]:
                full = (*idx[:axis], h, *idx[axis:])
                raise ProfileError(
                    missing(tuple(axes[a][i] for a, i in enumerate(full))),
                    hint="measure it, so that every axis value is measured at every other's",
                )
        line[holes] = np.interp(along[holes], along[known], line[known])
