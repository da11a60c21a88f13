"""``Calibration.estimator``: terms fitted over the roofline calibrated to the measured H100
profiles (``default_latency_model(calibrated=True)``), for all the profiles lack ("h100") or
for the engines nobody profiled ("h100-unprofiled"), are predicted over it; every calibration
file without the field predicts exactly as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.e2e.predict import predict_one, with_estimator
from bench.e2e.results import Calibration, ResultsDir
from bench.e2e.workload import H100_SET
from fineserve.profiles.calibration import CalibratedLatency
from fineserve.profiles.composite import ProfiledLatency
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.roofline import AnalyticLatency
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(1.0, 2.0))
BASE = Calibration(1.1, ("b",), (2.0,), 4, 0.1, 3e-5, per_seq_by_size=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def _shapes(plan) -> dict[str, EngineShape]:
    gpu = plan.cluster.gpus[0].spec
    return {m.name: EngineShape(gpu, m.spec, 1) for m in plan.models}


def test_the_field_round_trips_and_defaults_off(tmp_path):
    p = tmp_path / "calibration.json"
    for est in ("h100", "h100-unprofiled"):
        on = replace(BASE, estimator=est)
        p.write_text(on.to_json())
        assert Calibration.load(p) == on
    p.write_text(json.dumps({"decode_scale": 1.2}))  # a file from before the field
    assert Calibration.load(p).estimator == ""
    committed = Calibration.load(ROOT / "bench/e2e/results-r6/prerun/calibration.json")
    assert committed is not None and committed.estimator == ""
    with pytest.raises(ValueError):
        replace(BASE, estimator="h200")


def test_with_estimator_swaps_only_where_the_calibration_says(latency):
    assert isinstance(latency.estimator, AnalyticLatency)
    assert with_estimator(latency, None) is latency
    assert with_estimator(latency, BASE) is latency
    on = with_estimator(latency, replace(BASE, estimator="h100"))
    assert isinstance(on, ProfiledLatency) and isinstance(on.estimator, CalibratedLatency)
    assert on.table is latency.table  # the same profiles: only what they lack changes
    assert with_estimator(on, replace(BASE, estimator="h100")) is on  # once


def test_calibrated_int4_runs_at_marlin_speed(latency, plans):
    """The int4 7B nobody profiled: the default roofline's AWQ efficiency makes its prefill
    ~1.8x a bf16 8B's at the same share; calibrated to the measured GPTQ-Marlin profiles it
    is about the 8B's, and its decode step grows about half as fast with the batch."""
    shapes = _shapes(plans["b"])
    int4, bf16 = shapes["assist-7b-int4"], shapes["chat-8b"]
    for est in ("h100", "h100-unprofiled"):
        on = with_estimator(latency, replace(BASE, estimator=est))
        for lat, lo, hi in ((latency, 1.5, 2.2), (on, 0.8, 1.2)):
            ratio = lat.prefill(int4, 1024, 20).seconds / lat.prefill(bf16, 1024, 20).seconds
            assert lo < ratio < hi
        slope = [lat.decode_step(int4, 128, 450, 20).seconds
                 - lat.decode_step(int4, 64, 450, 20).seconds for lat in (latency, on)]
        assert slope[1] < 0.7 * slope[0]


def test_unprofiled_leaves_the_profiled_engines_alone(latency, plans):
    """"h100-unprofiled" changes the int4 7B only: the profiled engines are extended beyond
    their box (here batch 350, 10% SMs) as before; "h100" extends them with its roofline."""
    shapes = _shapes(plans["b"])
    only = with_estimator(latency, replace(BASE, estimator="h100-unprofiled"))
    every = with_estimator(latency, replace(BASE, estimator="h100"))
    for name in ("chat-8b-fp8", "chat-8b", "edge-3b"):
        for b, sm in ((350, 40), (64, 10)):
            t = latency.decode_step(shapes[name], b, 450, sm).seconds
            assert only.decode_step(shapes[name], b, 450, sm).seconds == t
    fp8 = shapes["chat-8b-fp8"]
    assert every.decode_step(fp8, 350, 450, 40).seconds != latency.decode_step(
        fp8, 350, 450, 40).seconds


def test_predictions_change_only_with_the_field(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    off, on = tmp_path / "off.json", tmp_path / "on.json"
    base = replace(BASE, per_seq_by_size=False)  # as with no calibration file at all
    off.write_text(base.to_json())
    on.write_text(replace(base, estimator="h100-unprofiled").to_json())
    kw = dict(write=False, decode_scale=1.1, decode_s_per_seq=3e-5)
    p_off = predict_one(ResultsDir(res.root), "b", 2.0, latency, calibration=off, **kw)
    p_plain = predict_one(ResultsDir(res.root), "b", 2.0, latency, **kw)
    p_on = predict_one(ResultsDir(res.root), "b", 2.0, latency, calibration=on, **kw)
    assert "estimator" not in p_off and p_on["estimator"] == "h100-unprofiled"
    assert p_off["summary"] == p_plain["summary"]
    tpot = {k: p["summary"]["per_model"]["assist-7b-int4"]["tpot_s"]["p50"]
            for k, p in (("off", p_off), ("on", p_on))}
    assert tpot["on"] < tpot["off"]
