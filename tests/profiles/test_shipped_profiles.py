"""Issue 5's reference set as shipped: measured entries load and back `fineserve plan`; the rest
is estimated; points whose repeats disagree are screened out."""

from __future__ import annotations

import statistics
from pathlib import Path

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
from fineserve.profiles.heldout import predict
from fineserve.profiles.latency import LatencySource
from fineserve.profiles.measure.store import ResultStore, to_latency_point
from fineserve.profiles.precision import Precision
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
    ("qwen2.5-32b", "int4-gptq", "bf16"),
)  # fmt: skip
KEYS = [EngineKey(H100, m, w, kv, 1) for m, w, kv in SHIPPED]  # type: ignore[arg-type]
LLAMA70_INT4 = EngineKey(H100, "llama-3.1-70b", "int4-gptq", "bf16", 1)  # type: ignore[arg-type]


def _point(spread: float, tokens: int = 512) -> LatencyPoint:
    return LatencyPoint(H100, "llama-3.1-8b", "bf16", "bf16", 1, 100.0, "prefill", 1, tokens,
                        0.01, 5, spread)  # type: ignore[arg-type]


def test_screen_keeps_points_up_to_the_limit_and_names_the_others() -> None:
    screened = screen([_point(0.05, 128), _point(SPREAD_LIMIT, 512), _point(1.29, 2048)])
    assert [p.tokens for p in screened.kept] == [128, 512]
    assert [p.tokens for p in screened.rejected] == [2048]
    (line,) = screened.reasons()
    assert "1 x 2048" in line and "129%" in line


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
    # 3 of its points measured: not shipped, the estimator answers for it
    assert LLAMA70_INT4 not in origins
    assert not default_latency_model().measured(LLAMA70_INT4.shape())


def test_the_shipped_calibration_predicts_the_70b_it_never_saw() -> None:
    """The 70B's 6 measured points (not shipped: the entry is incomplete) against the
    calibrated roofline (fitted to the shipped entries) and the eager-fitted defaults."""
    assert shipped_calibration().gpu == H100
    results = Path(__file__).resolve().parents[2] / "bench" / "results" / "h100-profile"
    store = ResultStore(results, H100, "llama-3.1-70b", Precision.from_name("int4-gptq.kv-bf16"))
    points = [to_latency_point(r) for r in store.points() if r.valid]
    assert len(points) >= 5
    calibrated = predict(default_latency_model(calibrated=True), points)
    default = predict(default_latency_model(), points)
    assert statistics.median(e.error for e in calibrated) <= 0.15
    assert statistics.median(e.error for e in default) > 0.5  # eager-fitted: int4 prefill x1.75
    other_gpu = EngineKey("A100-SXM-80GB", "llama-3.1-70b", "int4-gptq", "bf16", 1)  # type: ignore[arg-type]
    model = default_latency_model(calibrated=True)
    assert model.prefill(other_gpu.shape(), 512, 100).seconds == AnalyticLatency().prefill(
        other_gpu.shape(), 512, 100).seconds  # a calibration is for its GPU only
