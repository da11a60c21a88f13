"""The latency model the planner uses: measured where measured, estimated elsewhere.

Inside an engine's measured box the table answers (MEASURED or INTERPOLATED). Outside it the
answer is the table's value at the nearest edge, scaled by how much the roofline estimate
changes from that edge to the query (ESTIMATED):

    t(x) = table(edge(x)) * estimate(x) / estimate(edge(x))

so a batch of 64 on a table that stops at 32 grows as the roofline says, anchored to what was
measured, never along an unbounded straight line. Engines nobody profiled get the estimate.

Evaluated point by point, that formula is not always monotone: the table's and the estimate's
shapes along the *other* axes differ (e.g. the table slows down at low SM shares faster than
the estimate), and the ratio carries that difference across the edge. So the formula is
evaluated once per engine on an extended grid (the table's nodes plus nodes down to 1% SMs,
batch 1..8192, context 1..2M tokens, prefill 1..16M tokens), made monotone the same way the
table is, and interpolated. Inside the box that grid equals the table. Past the extended grid
the formula applies again from its edge (monotone along the axis that left it).

Prefill tables are indexed by batch x prompt tokens and so cannot see that attention grows with
the square of the prompt. For prompts longer than any measured, the estimate's extra attention
time (over the longest measured prompt) is added and the answer is ESTIMATED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from fineserve.errors import ProfileError
from fineserve.profiles.calibration import CalibratedLatency, Calibration
from fineserve.profiles.latency import EngineShape, Latency, LatencySource
from fineserve.profiles.quality import screen
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import EngineKey, Phase, ProfileTable, load_profile, read_points
from fineserve.profiles.table import EngineDomain, MonotoneGrid, TableLatency

_CLAMPED, _ESTIMATED = LatencySource.CLAMPED, LatencySource.ESTIMATED
_SM_NODES = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 14.0, 20.0, 28.0, 40.0, 57.0, 80.0, 100.0)
_MAX_BATCH = 8192.0
_MAX_CONTEXT = float(1 << 21)
_MAX_PREFILL_TOKENS = float(1 << 24)


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _nodes(axis: tuple[float, ...], lowest: float, top: float, step: float = 2.0) -> list[float]:
    """The table's axis plus geometric nodes (x ``step``) from ``lowest`` below it and up
    to ``top`` above it."""
    below, x = [], lowest
    while x < axis[0]:
        below.append(x)
        x *= step
    above, x = [], axis[-1] * step
    while x < top:
        above.append(x)
        x *= step
    return below + list(axis) + above + ([top] if axis[-1] < top else [])


def _sm_nodes(axis: tuple[float, ...]) -> list[float]:
    return [v for v in _SM_NODES if v < axis[0]] + list(axis) + [
        v for v in _SM_NODES if v > axis[-1]
    ]


@dataclass(frozen=True, slots=True)
class _Extended:
    prefill: MonotoneGrid  # (sm_pct, batch x prompt tokens), prompts split canonically
    decode: MonotoneGrid  # (sm_pct, batch, context)


class ProfiledLatency:
    """A ``LatencyModel`` for every engine: table inside its box, anchored estimate outside."""

    __slots__ = ("_extended", "estimator", "table")

    def __init__(self, table: TableLatency | None,
                 estimator: AnalyticLatency | CalibratedLatency) -> None:  # fmt: skip
        self.table = table
        self.estimator = estimator
        self._extended: dict[str, _Extended] = {}  # engine key -> grids, built on first use

    def estimator_for(self, engine: EngineShape) -> AnalyticLatency:
        """The roofline that answers (or anchors the table) for ``engine``."""
        return self.estimator.estimator(engine)

    def covers(self, engine: EngineShape) -> bool:
        return True

    def measured(self, engine: EngineShape) -> bool:
        """Whether a profile backs this engine (else every answer is a pure estimate)."""
        return self.table is not None and self.table.covers(engine)

    def domain(self, engine: EngineShape) -> EngineDomain | None:
        """The engine's measured box, None if nobody profiled it."""
        table = self.table
        return table.domain(engine) if table is not None and table.covers(engine) else None

    def prefill(
        self, engine: EngineShape, prompt_tokens: float, sm_pct: float, batch: float = 1
    ) -> Latency:
        table = self.table
        if table is None or not table.covers(engine):
            return self.estimator.prefill(engine, prompt_tokens, sm_pct, batch)
        answer = table.prefill(engine, prompt_tokens, sm_pct, batch)
        longest = table.domain(engine).max_prompt_tokens
        extra = 0.0
        if prompt_tokens > longest:
            attention = self.estimator_for(engine).prefill_attention_s
            extra = attention(engine, prompt_tokens, sm_pct, batch)
            extra -= attention(engine, longest, sm_pct, batch)
        if answer.source is not _CLAMPED:
            return answer if not extra else Latency(answer.seconds + extra, _ESTIMATED)
        grid = self._grids(table, engine).prefill
        estimate = _prefill_estimate(self.estimator_for(engine), engine, table.domain(engine))
        seconds = _past_grid(grid, (sm_pct, prompt_tokens * batch), estimate)
        return Latency(seconds + extra, _ESTIMATED)

    def decode_step(
        self, engine: EngineShape, batch: float, context_tokens: float, sm_pct: float
    ) -> Latency:
        table = self.table
        if table is None or not table.covers(engine):
            return self.estimator.decode_step(engine, batch, context_tokens, sm_pct)
        answer = table.decode_step(engine, batch, context_tokens, sm_pct)
        if answer.source is not _CLAMPED:
            return answer
        grid = self._grids(table, engine).decode
        estimate = self.estimator_for(engine).decode_step_s
        seconds = _past_grid(
            grid,
            (sm_pct, batch, context_tokens),
            lambda sm, b, context: estimate(engine, b, context, sm),
        )
        return Latency(seconds, _ESTIMATED)

    def _grids(self, table: TableLatency, engine: EngineShape) -> _Extended:
        grids = self._extended.get(engine.key)
        if grids is None:
            grids = self._extended[engine.key] = _build(table, self.estimator_for(engine), engine)
        return grids


def _prefill_estimate(
    estimator: AnalyticLatency, engine: EngineShape, domain: EngineDomain
) -> Callable[[float, float], float]:
    """Estimated prefill of ``tokens`` split as the table's data was: prompts of the longest
    measured length (attention past that length is added separately)."""
    longest, estimate = domain.max_prompt_tokens, estimator.prefill_s

    def at(sm_pct: float, tokens: float) -> float:
        prompt = min(tokens, longest)
        return estimate(engine, prompt, sm_pct, tokens / prompt)

    return at


def _build(table: TableLatency, estimator: AnalyticLatency, engine: EngineShape) -> _Extended:
    """Evaluate the anchored formula on the extended nodes and make it monotone."""
    d = table.domain(engine)
    prefill_est = _prefill_estimate(estimator, engine, d)
    decode_est = estimator.decode_step_s

    def prefill_at(sm: float, tokens: float) -> float:
        sm_e = _clip(sm, d.prefill_min_sm, d.prefill_max_sm)
        tokens_e = _clip(tokens, d.min_prefill_tokens, d.max_prefill_tokens)
        measured = table.prefill(engine, tokens_e, sm_e).seconds
        return measured * prefill_est(sm, tokens) / prefill_est(sm_e, tokens_e)

    def decode_at(sm: float, batch: float, context: float) -> float:
        sm_e = _clip(sm, d.decode_min_sm, d.decode_max_sm)
        batch_e = _clip(batch, d.min_batch, d.max_batch)
        context_e = _clip(context, d.min_context, d.max_context)
        measured = table.decode_step(engine, batch_e, context_e, sm_e).seconds
        here = decode_est(engine, batch, context, sm)
        return measured * here / decode_est(engine, batch_e, context_e, sm_e)

    pa, da = table.grid_axes(engine, Phase.PREFILL), table.grid_axes(engine, Phase.DECODE)
    prefill_axes = [_sm_nodes(pa[0]), _nodes(pa[1], 1.0, _MAX_PREFILL_TOKENS, 4.0)]
    decode_axes = [
        _sm_nodes(da[0]), _nodes(da[1], 1.0, _MAX_BATCH), _nodes(da[2], 1.0, _MAX_CONTEXT, 4.0),
    ]  # fmt: skip
    return _Extended(_evaluate(prefill_axes, prefill_at), _evaluate(decode_axes, decode_at))


def _evaluate(axes: list[list[float]], at: Callable[..., float]) -> MonotoneGrid:
    values = np.empty([len(a) for a in axes])
    for index in np.ndindex(values.shape):
        values[index] = at(*(axes[a][i] for a, i in enumerate(index)))
    return MonotoneGrid.build(axes, values)


def _past_grid(
    grid: MonotoneGrid, x: tuple[float, ...], estimate: Callable[..., float]
) -> float:
    """The grid's value at ``x``; past the grid, anchored to its edge like the table is."""
    answer = grid.at2(*x) if len(x) == 2 else grid.at3(*x)
    if answer.source is not _CLAMPED:
        return answer.seconds
    edge = tuple(_clip(v, axis[0], axis[-1]) for v, axis in zip(x, grid.axes, strict=True))
    return answer.seconds * estimate(*x) / estimate(*edge)


MEASURED = "measured"  # data/measured/{gpu}/{model}/: profiles measured by `fineserve profile`


def _data_files(measured: bool) -> list[Path]:
    root = resources.files("fineserve.profiles").joinpath("data")
    with resources.as_file(root) as path:
        files = sorted(f for f in Path(path).rglob("*.csv") if f.is_file())
        return [f for f in files if (f.relative_to(path).parts[0] == MEASURED) == measured]


@cache
def published_profiles() -> ProfileTable:
    """FineServe's published cost tables, converted (data/NOTICE.md)."""
    return ProfileTable(p for f in _data_files(measured=False) for p in read_points(f))


@cache
def measured_profiles() -> ProfileTable:
    """Profiles measured with this package's profiler and shipped (data/measured/, see
    docs/profiles.md), less points whose repeats disagree (``quality.screen``); an engine
    may hold only one phase when the other was not valid."""
    return screen(p for f in _data_files(measured=True) for p in read_points(f)).kept


def overlay(base: ProfileTable, top: ProfileTable) -> ProfileTable:
    """``base`` with each engine of ``top`` replaced, phase by phase.

    A phase that ``top`` measures for an engine replaces that phase of ``base``; a phase it
    lacks is kept from ``base``. An engine left with one phase (``top`` has one, ``base``
    none) is dropped: ``TableLatency`` needs both, and the estimator answers for it.
    """
    kept = list(base.without(top.engines()))
    for key in top.engines():
        phases = {phase: top.points_for(key, phase) or base.points_for(key, phase)
                  for phase in Phase}
        if all(phases.values()):
            kept += [p for points in phases.values() for p in points]
    return ProfileTable(kept)


@dataclass(frozen=True, slots=True)
class ProfileOrigin:
    """Where the default latency model's answers for one engine come from, per phase."""

    engine: EngineKey
    prefill: str  # MEASURED (data/measured), PUBLISHED (FineServe's tables)
    decode: str


PUBLISHED = "published"  # data/{gpu}/: FineServe's cost tables (data/NOTICE.md)


def profile_origins() -> tuple[ProfileOrigin, ...]:
    """Each engine of ``shipped_profiles`` with the source of each phase; an engine not
    listed is estimated (``AnalyticLatency``) for both phases."""
    measured = measured_profiles()
    shipped = shipped_profiles()

    def source(key: EngineKey, phase: Phase) -> str:
        return MEASURED if measured.points_for(key, phase) else PUBLISHED

    return tuple(ProfileOrigin(k, source(k, Phase.PREFILL), source(k, Phase.DECODE))
                 for k in shipped.engines())


@cache
def shipped_profiles() -> ProfileTable:
    """The planner's default data: measured H100 profiles where shipped, FineServe's
    published tables elsewhere and for phases the measurements lack."""
    return overlay(published_profiles(), measured_profiles())


CALIBRATION = "calibration.json"  # data/measured/{gpu}/: the roofline fitted to its profiles


@cache
def shipped_calibration() -> Calibration:
    """The roofline calibrated to the shipped measured profiles (``calibrate_shared``, written
    by bench/calibrate_estimator.py); the defaults where none is shipped. One GPU's: a
    calibration is per GPU (``Calibration.gpu``), and merging two is not built yet."""
    root = resources.files("fineserve.profiles").joinpath("data", MEASURED)
    with resources.as_file(root) as path:
        files = sorted(Path(path).glob(f"*/{CALIBRATION}"))
        if len(files) > 1:
            raise ProfileError(f"shipped calibrations for {len(files)} GPUs "
                               f"({', '.join(f.parent.name for f in files)}): one is supported")
        return Calibration.load(files[0]) if files else Calibration(())


def default_latency_model(extra_profiles: Iterable[str | Path] = (), *,
                          calibrated: bool = False) -> ProfiledLatency:  # fmt: skip
    """Shipped profiles plus ``extra_profiles`` (files or folders), with the roofline behind:
    with ``calibrated``, the roofline fitted to the measured profiles (``shipped_calibration``,
    on their GPU; docs/calibration.md), else the defaults fitted to FineServe's eager tables.

    An engine that an extra profile measures takes its points from the extra profiles only:
    your own measurements replace the shipped ones rather than being averaged with them.

    Raises:
        ProfileError: an extra profile is malformed.
    """
    extra = ProfileTable.concat(load_profile(p) for p in extra_profiles)
    table = ProfileTable.concat([shipped_profiles().without(extra.engines()), extra])
    estimator = CalibratedLatency(shipped_calibration()) if calibrated else AnalyticLatency()
    return ProfiledLatency(TableLatency(table), estimator)
