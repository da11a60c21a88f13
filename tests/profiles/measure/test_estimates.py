"""Session-estimate latencies: profiles where they cover an engine, the calibrated roofline
elsewhere, parameters shared between precisions of one weight format."""

from __future__ import annotations

from pathlib import Path

from fineserve.profiles.calibration import Calibration
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.composite import default_latency_model
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.measure.estimates import EstimateLatency, same_weights
from fineserve.profiles.precision import Precision
from fineserve.profiles.roofline import AnalyticLatency, RooflineParams

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "h100-profile"


def shape(model: str, precision: str) -> EngineShape:
    spec = ModelSpec(resolve_arch(model), Precision.from_name(precision))
    return EngineShape(gpu_spec("H100-SXM-80GB"), spec, 1)


def test_a_precision_without_a_fit_borrows_one_of_its_weight_format():
    fp8 = RooflineParams(fp8_gemm_eff=0.5)
    cal = same_weights(Calibration((("fp8.kv-fp8", fp8),)))
    assert cal.params_for("fp8.kv-bf16") is fp8
    assert cal.params_for("bf16.kv-bf16") == RooflineParams()  # nothing to borrow from


def test_profiles_answer_where_measured_the_calibrated_roofline_elsewhere():
    model = EstimateLatency(RESULTS)
    measured = shape("llama-3.1-8b", "int4-gptq.kv-bf16")
    expected = default_latency_model([RESULTS]).decode_step(measured, 8, 512, 50.0).seconds
    assert model.decode_step(measured, 8, 512, 50.0).seconds == expected
    big = shape("llama-3.1-70b", "int4-gptq.kv-bf16")
    default = AnalyticLatency().prefill(big, 2048, 50.0).seconds
    calibrated = model.prefill(big, 2048, 50.0).seconds
    assert calibrated < 0.9 * default  # the eager-fitted default overstates real int4


def test_results_cut_short_fall_back_to_the_default_model(tmp_path):
    source = RESULTS / "H100-SXM-80GB" / "llama-3.1-8b" / "int4-gptq.kv-fp8.csv"
    header, *rows = source.read_text().splitlines()
    cut = tmp_path / "H100-SXM-80GB" / "qwen2.5-14b" / "fp8.kv-bf16.csv"
    cut.parent.mkdir(parents=True)
    cut.write_text("\n".join([header] + [
        r.replace("llama-3.1-8b", "qwen2.5-14b").replace("int4-gptq,fp8", "fp8,bf16")
        for r in rows if ",decode," in r]) + "\n")  # decode points only: killed mid-engine
    model = EstimateLatency(tmp_path)
    assert "no prefill points" in model.note
    engine = shape("qwen2.5-14b", "fp8.kv-bf16")
    expected = default_latency_model([]).prefill(engine, 512, 100.0).seconds
    assert model.prefill(engine, 512, 100.0).seconds == expected
    assert EstimateLatency(RESULTS).note == ""
