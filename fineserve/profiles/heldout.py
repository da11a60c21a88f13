"""Held-out error of the per-precision calibration: each point predicted by a fit that did not
see it, then summarised per precision or per model.

Splits: ``kfold`` (random folds), ``sm`` (each SM share predicted from the others: the
planner's extrapolation in SM share) and ``model`` (each model predicted from the other models
of its precision: what an unprofiled model, e.g. the 70B, relies on). ``transfer`` fits on one
set and predicts another (fit on Llama-3.1-8B, predict the 70B's few measured points).
Errors keep their sign (``ratio`` = estimate / measured), so a summary shows a systematic
offset (``bias``) apart from scatter.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fineserve.errors import SpecError
from fineserve.profiles.calibration import (
    CalibratedLatency,
    Calibration,
    calibrate,
    calibrate_shared,
)
from fineserve.profiles.latency import LatencyModel
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable

FOLDS = 5  # held_out's default; the "kfold" label below names it
SPLITS = {"kfold": f"{FOLDS}-fold", "sm": "SM held out", "model": "model held out"}


@dataclass(frozen=True, slots=True)
class PointError:
    """One point and what a fit that did not see it predicted, as estimate / measured."""

    point: LatencyPoint
    ratio: float

    @property
    def error(self) -> float:
        return abs(self.ratio - 1)


def predict(model: LatencyModel | AnalyticLatency,
            points: Iterable[LatencyPoint]) -> tuple[PointError, ...]:  # fmt: skip
    """``model``'s answer for each point, as a ratio to the measurement."""
    out = []
    for p in points:
        engine = p.engine.shape()
        if p.phase is Phase.PREFILL:
            t = model.prefill(engine, p.tokens, p.sm_pct, p.batch).seconds
        else:
            t = model.decode_step(engine, p.batch, p.tokens, p.sm_pct).seconds
        out.append(PointError(p, t / p.latency_s))
    return tuple(out)


Fitter = Callable[[Sequence[LatencyPoint]], Calibration]


def per_precision(iters: int = 400) -> Fitter:
    """Each precision fitted alone (``calibrate``)."""
    return lambda points: calibrate(points, iters=iters)


def shared(iters: int = 400) -> Fitter:
    """Engine-wide parameters fitted on every precision at once (``calibrate_shared``)."""
    return lambda points: calibrate_shared(points, iters=iters)


def _fold_of(points: Sequence[LatencyPoint], split: str, folds: int, seed: int) -> list[int]:
    if split == "sm":
        keys: list[object] = sorted({p.sm_pct for p in points})
        return [keys.index(p.sm_pct) for p in points]
    if split == "model":
        keys = sorted({p.model for p in points})
        return [keys.index(p.model) for p in points]
    rng = random.Random(seed)
    return [rng.randrange(folds) for _ in points]


def held_out(table: ProfileTable | Iterable[LatencyPoint], split: str = "kfold",
             fitter: Fitter | None = None, folds: int = FOLDS,
             seed: int = 0) -> tuple[PointError, ...]:  # fmt: skip
    """Every point of ``table`` predicted by ``fitter`` (default ``per_precision()``) fitted
    to the points outside its fold: random folds, SM shares or models, across precisions. A
    point whose precision has no training points left (its only model held out) is not
    predicted: the defaults would answer, and they are not what is under test.

    Raises:
        SpecError: ``split`` is not one of ``SPLITS``.
    """
    if split not in SPLITS:
        raise SpecError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    fit = fitter or per_precision()
    points = list(table)
    assign = _fold_of(points, split, folds, seed)
    out: list[PointError] = []
    for fold in sorted(set(assign)):
        train = [p for p, a in zip(points, assign, strict=True) if a != fold]
        trained = {p.engine.precision for p in train}
        test = [p for p, a in zip(points, assign, strict=True)
                if a == fold and p.engine.precision in trained]
        if train and test:
            out += predict(CalibratedLatency(fit(train)), test)
    return tuple(out)


def transfer(train: Iterable[LatencyPoint], test: Iterable[LatencyPoint],
             fitter: Fitter | None = None) -> tuple[PointError, ...]:  # fmt: skip
    """``test`` predicted by ``fitter`` fitted to ``train``.

    Raises:
        SpecError: a precision of ``test`` has no points in ``train``.
    """
    train, test = list(train), list(test)
    missing = {p.engine.precision.name for p in test} - {p.engine.precision.name for p in train}
    if missing:
        raise SpecError(f"transfer: no training points of precision {sorted(missing)[0]}")
    return predict(CalibratedLatency((fitter or per_precision())(train)), test)


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """Median / p90 of |estimate / measured - 1| and the median signed error, per phase."""

    group: str
    prefill_median: float
    prefill_p90: float
    prefill_bias: float  # median of estimate / measured - 1: > 0 overstates
    decode_median: float
    decode_p90: float
    decode_bias: float
    points: int

    def meets(self, target: float) -> bool:
        """Both medians at most ``target`` (a phase without points does not count)."""
        return all(math.isnan(m) or m <= target
                   for m in (self.prefill_median, self.decode_median))


def summarize(errors: Iterable[PointError],
              key: Callable[[LatencyPoint], str]) -> list[ErrorSummary]:  # fmt: skip
    """One summary per ``key(point)``, sorted by key."""
    groups: dict[str, list[PointError]] = {}
    for e in errors:
        groups.setdefault(key(e.point), []).append(e)
    out = []
    for group, errs in sorted(groups.items()):
        stats = []
        for phase in Phase:
            ratios = np.array([e.ratio for e in errs if e.point.phase is phase])
            if not len(ratios):
                stats += [math.nan] * 3
                continue
            absolute = np.abs(ratios - 1)
            stats += [float(np.median(absolute)), float(np.percentile(absolute, 90)),
                      float(np.median(ratios - 1))]
        out.append(ErrorSummary(group, *stats, len(errs)))
    return out


def by_precision(p: LatencyPoint) -> str:
    return p.engine.precision.name


def by_model(p: LatencyPoint) -> str:
    return f"{p.model} {p.engine.precision.name}"
