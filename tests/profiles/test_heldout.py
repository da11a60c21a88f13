"""Held-out errors by folds, SM shares and models; the shared fit carries to an unseen model
where a per-precision fit of one model cannot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.calibration import calibrate_shared, shared_fields
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.heldout import (
    PointError,
    by_model,
    held_out,
    per_precision,
    predict,
    shared,
    summarize,
    transfer,
)
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.roofline import AnalyticLatency, RooflineParams
from fineserve.profiles.schema import LatencyPoint, Phase

H100 = "H100-SXM-80GB"
# A CUDA-graph-like engine: no per-layer launch floor, a fixed step overhead, small prefills
# tiling the tensor cores poorly.
TRUTH = replace(RooflineParams(), host_layer_s=5e-6, decode_overhead_s=1.5e-3,
                prefill_overhead_s=2.5e-3, bf16_gemm_eff=0.7, fp8_gemm_eff=0.5,
                sm_saturation=0.4, gemm_half_tokens=40.0)


def points(model: str, weights: str, params: RooflineParams = TRUTH,
           sms=(100, 50, 30)) -> list[LatencyPoint]:  # fmt: skip
    est = AnalyticLatency(params)
    shape = EngineShape(gpu_spec(H100), model_spec(model, weights, "bf16"), 1)
    out = []
    for sm in sms:
        for t in (128, 512, 2048):
            out.append(LatencyPoint(H100, model, weights, "bf16", 1, sm, "prefill", 1, t,
                                    est.prefill_s(shape, t, sm)))
        for b in (1, 8, 32):
            for c in (256, 1024):
                out.append(LatencyPoint(H100, model, weights, "bf16", 1, sm, "decode", b, c,
                                        est.decode_step_s(shape, b, c, sm)))
    return out


def test_gemm_half_tokens_slows_small_prefills_only() -> None:
    shape = EngineShape(gpu_spec(H100), model_spec("llama-3.1-8b"), 1)
    plain = AnalyticLatency(replace(TRUTH, gemm_half_tokens=0.0))
    tiled = AnalyticLatency(replace(TRUTH, gemm_half_tokens=128.0))
    # 512 tokens are compute-bound (10 ms of GEMMs at 70%, 6 ms of weight reads): 80% there
    assert tiled.prefill_s(shape, 512, 100) > 1.15 * plain.prefill_s(shape, 512, 100)
    assert tiled.prefill_s(shape, 16384, 100) < 1.01 * plain.prefill_s(shape, 16384, 100)
    assert tiled.decode_step_s(shape, 8, 512, 100) == plain.decode_step_s(shape, 8, 512, 100)


def test_summary_keeps_the_sign_and_splits_phases() -> None:
    p = points("llama-3.1-8b", "bf16", sms=(100,))
    errors = [PointError(x, 1.2 if x.phase is Phase.PREFILL else 0.9) for x in p]
    (s,) = summarize(errors, by_model)
    assert s.group == "llama-3.1-8b bf16.kv-bf16" and s.points == len(p)
    assert s.prefill_bias == pytest.approx(0.2) and s.decode_bias == pytest.approx(-0.1)
    assert s.prefill_median == pytest.approx(0.2) and not s.meets(0.15) and s.meets(0.2)


def test_predict_of_the_generating_model_is_exact() -> None:
    errs = predict(AnalyticLatency(TRUTH), points("llama-3.2-3b", "bf16"))
    assert max(e.error for e in errs) < 1e-9


def test_shared_fit_carries_to_a_model_it_has_not_seen() -> None:
    # 8B in two formats tells fixed overhead from bytes; one format alone cannot
    eight = points("llama-3.1-8b", "bf16") + points("llama-3.1-8b", "fp8")
    three = points("llama-3.2-3b", "bf16")
    (s,) = summarize(transfer(eight, three, shared(300)), by_model)
    assert s.decode_median < 0.05 and s.prefill_median < 0.1


def test_shared_fit_has_one_set_of_engine_wide_parameters() -> None:
    cal = calibrate_shared(points("llama-3.1-8b", "bf16") + points("llama-3.1-8b", "fp8"),
                           iters=200)
    (_, bf16), (_, fp8) = cal.by_precision
    for name in shared_fields(multi_gpu=False):
        assert getattr(bf16, name) == getattr(fp8, name) == getattr(cal.default, name)
    assert cal.default.fp8_gemm_eff == RooflineParams().fp8_gemm_eff  # not a shared field


def test_model_split_predicts_each_model_from_the_others_of_its_precision() -> None:
    table = points("llama-3.1-8b", "bf16") + points("llama-3.2-3b", "bf16") + points(
        "llama-3.1-8b", "fp8")  # fp8 has one model: nothing to predict it from
    errors = held_out(table, "model", per_precision(150))
    assert {e.point.model for e in errors} == {"llama-3.1-8b", "llama-3.2-3b"}
    assert all(e.point.weights.value == "bf16" for e in errors)
    assert len(errors) == 2 * len(points("llama-3.1-8b", "bf16"))


def test_bad_input_is_named() -> None:
    with pytest.raises(SpecError, match="split"):
        held_out([], split="random")
    with pytest.raises(SpecError, match="precision fp8"):
        transfer(points("llama-3.1-8b", "bf16"), points("llama-3.1-8b", "fp8"))
    with pytest.raises(SpecError, match="no points"):
        calibrate_shared([])
