"""Time-sliced (a) calibrated apart: per-engine decode factors, fitted on its fit rates only,
recovered from 'measurements' the simulator made with known factors, kept beside the MPS fit
and named by the report (whose held-out errors then exclude (a)'s fit rates)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.e2e.calibrate import Calibration, SlicedCalibration, fit_sliced
from bench.e2e.calibrate import main as calibrate_main
from bench.e2e.predict import calibrated_sliced_terms, deployed_default, predict_all, predict_one
from bench.e2e.results import Measured, ResultsDir
from bench.e2e.workload import H100_SET
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(1.0, 2.0))
KNOWN = (("llama-3.1-8b@fp8.kv-fp8", 1.4), ("llama-3.2-3b@bf16.kv-bf16", 0.6))


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def _measure(res: ResultsDir, latency, rate: float, factors) -> None:
    pred = predict_one(res, "a", rate, latency, write=False, sliced_factors=factors)
    res.save_measured(Measured("a", rate, pred["trace_digest"], deployed_default("a"),
                               pred["summary"], {}))


def test_fit_sliced_recovers_known_per_engine_factors(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    _measure(res, latency, 2.0, KNOWN)
    ts = fit_sliced(res, latency, ("a",), (2.0,))
    assert ts.fit_rates == (2.0,) and ts.points == 4
    for key, f in KNOWN:
        assert ts.factors[key] == pytest.approx(f, rel=0.08)
    assert ts.factors["llama-3.1-8b@bf16.kv-bf16"] == pytest.approx(1.0, rel=0.08)
    with pytest.raises(ValueError, match="no measured result"):
        fit_sliced(res, latency, ("a",), (3.0,))


def test_sliced_factors_reach_time_sliced_predictions_only(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    res.calibration_path().write_text(Calibration(
        1.0, ("b",), (2.0,), 4, 0.1, 0.0,
        SlicedCalibration(dict(KNOWN), ("a",), (2.0,), 4, 0.0, 3)).to_json())
    assert calibrated_sliced_terms(res) == (tuple(sorted(KNOWN)), 0.0)
    assert len(predict_all(res, ("a", "b"), latency)) == 4
    a = json.loads(res.predicted_path("a", 2.0).read_text())
    b = json.loads(res.predicted_path("b", 2.0).read_text())
    assert a["sliced_factors"] == dict(KNOWN) and b["sliced_factors"] == {}
    plain = predict_one(res, "a", 2.0, latency, write=False, sliced_factors=())
    fp8 = "chat-8b-fp8"
    assert (a["summary"]["per_model"][fp8]["tpot_s"]["p50"]
            > 1.2 * plain["summary"]["per_model"][fp8]["tpot_s"]["p50"])
    assert Calibration.load(res.calibration_path()).time_sliced.factors == dict(KNOWN)


def test_the_cli_keeps_the_mps_fit_and_the_report_excludes_a_fitted_rate(
        tmp_path, plans, latency, capsys):
    from bench.e2e.report import calibration_lines, collect

    res = results_dir(tmp_path, SMALL, plans)
    with pytest.raises(SystemExit, match="fit the MPS runs first"):
        calibrate_main(["--out", str(res.root), "--time-sliced", "--fit-rates", "2"])
    mps = Calibration(1.3, ("b",), (2.0,), 4, 0.1, 2e-5)
    res.calibration_path().write_text(mps.to_json())
    for rate in SMALL.rate_scales:
        _measure(res, latency, rate, KNOWN)
    calibrate_main(["--out", str(res.root), "--time-sliced", "--fit-rates", "2"])
    cal = Calibration.load(res.calibration_path())
    assert (cal.decode_scale, cal.decode_s_per_seq) == (1.3, 2e-5)  # the MPS fit kept
    assert cal.time_sliced is not None and cal.time_sliced.fit_rates == (2.0,)
    predict_all(res, ("a",), latency)
    text = " ".join(calibration_lines(res, collect(res)))
    assert "time-sliced decode steps per engine" in text
    assert "not fitted (1:" in text  # (a) x1 only: x2 was fitted
