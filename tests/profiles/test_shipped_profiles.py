"""Issue 5's reference set as shipped: measured entries load and back `fineserve plan`; the rest
is estimated; points whose repeats disagree are screened out."""

from __future__ import annotations

import statistics

import pytest

from fineserve.profiles.composite import (
    MEASURED,
    PUBLISHED,
    default_latency_model,
    measured_profiles,
    profile_origins,
    shipped_calibration,
    shipped_profiles,
)
from fineserve.profiles.heldout import PointError, predict, transfer
from fineserve.profiles.latency import LatencySource
from fineserve.profiles.quality import SPREAD_LIMIT, screen
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.schema import EngineKey, LatencyPoint, Phase

H100 = "H100-SXM-80GB"
# (model, precision) measured on H100 and shipped on 2026-11-26 (bench/results/h100-profile)
SHIPPED = (
    ("llama-3.1-8b", "bf16", "bf16"), ("llama-3.1-8b", "bf16", "fp8"),
    ("llama-3.1-8b", "fp8", "bf16"), ("llama-3.1-8b", "fp8", "fp8"),
    ("llama-3.1-8b", "int4-gptq", "bf16"), ("llama-3.1-8b", "int4-gptq", "fp8"),
    ("llama-3.2-3b", "bf16", "bf16"), ("qwen2.5-14b", "fp8", "bf16"),
    ("qwen2.5-32b", "int4-gptq", "bf16"), ("llama-3.1-70b", "int4-gptq", "bf16"),
)  # fmt: skip
KEYS = [EngineKey(H100, m, w, kv, 1) for m, w, kv in SHIPPED]  # type: ignore[arg-type]
LLAMA70_INT4 = EngineKey(H100, "llama-3.1-70b", "int4-gptq", "bf16", 1)  # type: ignore[arg-type]


def _point(spread: float, tokens: int = 512, sm_pct: float = 100.0) -> LatencyPoint:
    return LatencyPoint(H100, "llama-3.1-8b", "bf16", "bf16", 1, sm_pct, "prefill", 1, tokens,
                        0.01, 5, spread)  # type: ignore[arg-type]


def test_screen_keeps_points_up_to_the_limit_and_names_the_others() -> None:
    screened = screen([_point(0.05, 128, 50), _point(SPREAD_LIMIT, 512, 50),
                       _point(0.05, 128), _point(1.29, 2048)])
    assert [(p.sm_pct, p.tokens) for p in screened.kept] == [(50, 128), (50, 512)]
    # the noisy point takes its SM share's prefill turn with it: no hole inside a grid
    assert [(p.sm_pct, p.tokens) for p in screened.rejected] == [(100, 128), (100, 2048)]
    first, noisy = screened.reasons()
    assert "1 x 2048" in noisy and "129%" in noisy
    assert "same turn as 1 x 2048" in first


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{k.model}-{k.precision.name}")
def test_reference_entry_ships_both_phases_and_the_planner_reads_them(key: EngineKey) -> None:
    from fineserve.cli.common import latency_model

    model = latency_model(None)  # what `fineserve plan` builds without --profiles
    engine = key.shape()
    assert model.measured(engine)
    for phase in Phase:
        points = measured_profiles().points_for(key, phase)
        assert points and shipped_profiles().points_for(key, phase) == points
        for p in points:
            if phase is Phase.PREFILL:
                answer = model.prefill(engine, p.tokens, p.sm_pct, p.batch)
            else:
                answer = model.decode_step(engine, p.batch, p.tokens, p.sm_pct)
            assert answer.source is LatencySource.MEASURED
            # running maxima (monotone table) only raise a cell, and cells of one total merge
            assert 0.95 * p.latency_s <= answer.seconds <= 1.6 * p.latency_s


def test_no_shipped_point_the_planner_reads_has_repeats_that_disagree() -> None:
    assert max(p.rel_spread for p in measured_profiles()) <= SPREAD_LIMIT


def test_origins_say_measured_published_or_estimated() -> None:
    origins = {o.engine: o for o in profile_origins()}
    for key in KEYS:
        assert (origins[key].prefill, origins[key].decode) == (MEASURED, MEASURED)
    awq70 = EngineKey(H100, "llama-3.1-70b", "int4-awq", "bf16", 1)  # type: ignore[arg-type]
    assert (origins[awq70].prefill, origins[awq70].decode) == (PUBLISHED, PUBLISHED)
    assert default_latency_model().measured(LLAMA70_INT4.shape())  # complete since session 7


def test_the_calibration_fitted_without_the_70b_predicts_it() -> None:
    """Held out by model: fitted to every other shipped entry (the 32B shares its precision),
    the calibrated roofline predicts the 70B's prefill to 15% (the eager-fitted defaults are
    off x1.75 on int4 prefill). Its decode is the weak spot (session 7: 33% median, the fit
    overestimates the 70B's int4 dequant cost; docs/calibration.md), still far from 2x."""
    assert shipped_calibration().gpu == H100
    kept = screen(measured_profiles()).kept
    train = [p for p in kept if p.engine.model != LLAMA70_INT4.model]
    test = [p for p in kept if p.engine.model == LLAMA70_INT4.model]
    assert len(test) == 18
    calibrated = transfer(train, test)
    default = predict(AnalyticLatency(), test)  # the uncalibrated roofline

    def median(errors: tuple[PointError, ...], phase: Phase) -> float:
        return statistics.median(e.error for e in errors if e.point.phase is phase)

    assert median(calibrated, Phase.PREFILL) <= 0.15
    assert median(calibrated, Phase.DECODE) <= 0.4
    assert median(default, Phase.PREFILL) > 0.5
    other_gpu = EngineKey("A100-SXM-80GB", "llama-3.1-70b", "int4-gptq", "bf16", 1)  # type: ignore[arg-type]
    model = default_latency_model(calibrated=True)
    assert model.prefill(other_gpu.shape(), 512, 100).seconds == AnalyticLatency().prefill(
        other_gpu.shape(), 512, 100).seconds  # a calibration is for its GPU only
