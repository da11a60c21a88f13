"""Calibration: refits recover a known estimator, per-precision answers, held-out errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fineserve.errors import SpecError
from fineserve.profiles.calibration import (
    CalibratedLatency,
    Calibration,
    calibrate,
    fit_params,
    nelder_mead,
)
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.heldout import by_precision, held_out, per_precision, summarize
from fineserve.profiles.latency import EngineShape, LatencySource
from fineserve.profiles.roofline import AnalyticLatency, RooflineParams
from fineserve.profiles.schema import LatencyPoint

H100 = "H100-SXM-80GB"
# What CUDA graphs change: a far lower host floor, other overheads and efficiencies.
TRUTH = replace(RooflineParams(), host_layer_s=20e-6, decode_overhead_s=1.2e-3,
                prefill_overhead_s=3e-3, bf16_gemm_eff=0.6, sm_saturation=0.4)


def synthetic(params: RooflineParams, weights: str = "bf16", kv: str = "bf16",
              sms=(100, 70, 50, 30)) -> list[LatencyPoint]:  # fmt: skip
    est = AnalyticLatency(params)
    shape = EngineShape(gpu_spec(H100), model_spec("llama-3.1-8b", weights, kv), 1)
    pts = []
    for sm in sms:
        for b in (1, 4):
            for t in (128, 512, 2048):
                pts.append(LatencyPoint(H100, "llama-3.1-8b", weights, kv, 1, sm, "prefill", b, t,
                                        est.prefill_s(shape, t, sm, b)))
        for b in (1, 8, 32, 64):
            for c in (512, 2048):
                pts.append(LatencyPoint(H100, "llama-3.1-8b", weights, kv, 1, sm, "decode", b, c,
                                        est.decode_step_s(shape, b, c, sm)))
    return pts


def test_nelder_mead_finds_a_quadratic_minimum():
    x = nelder_mead(lambda v: float(((v - np.array([1.0, -2.0])) ** 2).sum()), np.zeros(2))
    assert x == pytest.approx([1.0, -2.0], abs=1e-3)


def test_fit_recovers_an_estimator_it_can_express():
    points = synthetic(TRUTH)
    fitted = fit_params(points, iters=600)
    shape = points[0].engine.shape()
    est = AnalyticLatency(fitted)
    for p in points:
        t = (est.prefill_s(shape, p.tokens, p.sm_pct, p.batch) if p.phase.value == "prefill"
             else est.decode_step_s(shape, p.batch, p.tokens, p.sm_pct))
        assert t == pytest.approx(p.latency_s, rel=0.05)
    assert fitted.bf16_gemm_eff == pytest.approx(TRUTH.bf16_gemm_eff, abs=0.02)  # prefill-bound


def test_calibration_is_per_precision_and_round_trips(tmp_path):
    fp8_truth = replace(TRUTH, fp8_gemm_eff=0.4)
    cal = calibrate(synthetic(TRUTH) + synthetic(fp8_truth, "fp8", "fp8"), "synthetic", iters=300)
    assert [name for name, _ in cal.by_precision] == ["bf16.kv-bf16", "fp8.kv-fp8"]
    (tmp_path / "c.json").write_text(cal.to_json())
    assert Calibration.load(tmp_path / "c.json") == cal
    model = CalibratedLatency(cal)
    engine = EngineShape(gpu_spec(H100), model_spec("llama-3.1-8b", "fp8", "fp8"), 1)
    answer = model.decode_step(engine, 8, 512, 50)
    expected = AnalyticLatency(cal.params_for("fp8.kv-fp8")).decode_step_s(engine, 8, 512, 50)
    assert answer.seconds == expected and answer.source is LatencySource.ESTIMATED
    other = EngineShape(gpu_spec(H100), model_spec("llama-3.1-8b", "int4-awq"), 1)
    assert model.prefill(other, 512, 100).seconds == AnalyticLatency().prefill_s(other, 512, 100)


def test_held_out_sm_shares_are_predicted():
    errors = held_out(synthetic(TRUTH), "sm", per_precision(300))
    (report,) = summarize(errors, by_precision)
    assert report.points == len(synthetic(TRUTH))
    assert report.prefill_median < 0.05 and report.decode_median < 0.05


def test_bad_input_is_named():
    with pytest.raises(SpecError, match="no points"):
        fit_params([])
    with pytest.raises(SpecError, match="one precision"):
        fit_params(synthetic(TRUTH, sms=(100,)) + synthetic(TRUTH, "fp8", "fp8", sms=(100,)))
    with pytest.raises(SpecError, match="split"):
        held_out([], "random", per_precision(10))
    with pytest.raises(SpecError, match="unknown parameter"):
        Calibration.from_json('{"by_precision": {"bf16.kv-bf16": {"warp_speed": 1}}}')


def test_a_simplex_step_far_outside_the_bounds_lands_on_the_bound():
    """Nelder-Mead may expand far out in the unit space; exp(-z) overflowed for z < -709
    (session 8's recalibration on the re-measured profiles)."""
    from fineserve.profiles.calibration import BOUNDS, _from_unit

    name = next(iter(BOUNDS))
    lo, hi = BOUNDS[name]
    assert _from_unit(name, -1e6) == lo
    assert _from_unit(name, 1e6) == hi
