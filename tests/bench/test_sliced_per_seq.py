"""The time-sliced fit with the MPS per-sequence term under its factors, written to another
file (fit on one results directory, predict another: a held-out test), and predictions
written apart (``--pred-dir``) with the client's timeout aborting requests."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.e2e.calibrate import Calibration, SlicedCalibration, fit_sliced
from bench.e2e.calibrate import main as calibrate_main
from bench.e2e.predict import calibrated_sliced_terms, deployed_default, predict_one
from bench.e2e.predict import main as predict_main
from bench.e2e.results import Measured, ResultsDir
from bench.e2e.workload import H100_SET
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(1.0, 2.0))
KNOWN = (("llama-3.1-8b@fp8.kv-fp8", 0.7), ("llama-3.2-3b@bf16.kv-bf16", 0.6))
PER_SEQ = 4e-5


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def _measure(res: ResultsDir, latency, rate: float) -> None:
    pred = predict_one(res, "a", rate, latency, write=False, sliced_factors=KNOWN,
                       sliced_per_seq=PER_SEQ)
    res.save_measured(Measured("a", rate, pred["trace_digest"], deployed_default("a"),
                               pred["summary"], {}))


def test_the_per_sequence_term_lengthens_time_sliced_steps(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    flat = predict_one(res, "a", 2.0, latency, write=False, sliced_factors=KNOWN,
                       sliced_per_seq=0.0)
    grown = predict_one(res, "a", 2.0, latency, write=False, sliced_factors=KNOWN,
                        sliced_per_seq=PER_SEQ)
    assert grown["sliced_s_per_seq"] == PER_SEQ and grown["client_aborts"]
    fp8 = "chat-8b-fp8"
    assert (grown["summary"]["per_model"][fp8]["tpot_s"]["p50"]
            > flat["summary"]["per_model"][fp8]["tpot_s"]["p50"])


def test_fit_sliced_recovers_factors_over_a_given_per_sequence_term(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    _measure(res, latency, 2.0)
    ts = fit_sliced(res, latency, ("a",), (2.0,), per_seq=PER_SEQ)
    assert ts.decode_s_per_seq == PER_SEQ
    for key, f in KNOWN:
        assert ts.factors[key] == pytest.approx(f, rel=0.08)


def test_fit_on_one_directory_predict_another_into_a_folder_of_its_own(
        tmp_path, plans, latency, capsys):
    fit_res = results_dir(tmp_path / "fit", SMALL, plans)
    test_res = results_dir(tmp_path / "test", SMALL, plans)
    mps = Calibration(1.1, ("b",), (2.0,), 4, 0.1, PER_SEQ)
    fit_res.calibration_path().write_text(mps.to_json())
    _measure(fit_res, latency, 2.0)
    dest = tmp_path / "test" / "res" / "postrun" / "calibration.json"
    calibrate_main(["--out", str(fit_res.root), "--time-sliced", "--fit-rates", "2",
                    "--write", str(dest)])
    assert Calibration.load(fit_res.calibration_path()) == mps  # the fit directory untouched
    cal = Calibration.load(dest)
    assert (cal.decode_scale, cal.decode_s_per_seq) == (1.1, PER_SEQ)  # MPS fit carried over
    assert cal.time_sliced is not None and cal.time_sliced.decode_s_per_seq == PER_SEQ
    factors, per_seq = calibrated_sliced_terms(test_res, dest)
    assert per_seq == PER_SEQ and dict(factors) == cal.time_sliced.factors
    out = dest.parent
    predict_main(["--out", str(test_res.root), "--configs", "a,b", "--calibration", str(dest),
                  "--pred-dir", str(out)])
    assert not list(test_res.root.glob("pred-*.json"))  # nothing beside the measurements
    a = json.loads((out / "pred-a-r2.00.json").read_text())
    b = json.loads((out / "pred-b-r2.00.json").read_text())
    assert a["sliced_factors"] == cal.time_sliced.factors and a["sliced_s_per_seq"] == PER_SEQ
    assert b["decode_scale"] == 1.1 and b["sliced_factors"] == {}
    assert a["client_aborts"] and b["client_aborts"]
    with pytest.raises(SystemExit, match="no file"):
        predict_main(["--out", str(test_res.root), "--calibration", str(tmp_path / "none")])


def test_old_time_sliced_fits_keep_no_per_sequence_term(tmp_path, plans):
    res = results_dir(tmp_path, SMALL, plans)
    old = Calibration(1.0, ("b",), (2.0,), 4, 0.1, 3e-5,
                      SlicedCalibration(dict(KNOWN), ("a",), (2.0,), 4, 0.0, 3))
    d = json.loads(old.to_json())
    del d["time_sliced"]["decode_s_per_seq"]  # a file written before the term existed
    res.calibration_path().write_text(json.dumps(d))
    assert Calibration.load(res.calibration_path()).time_sliced.decode_s_per_seq == 0.0
    assert calibrated_sliced_terms(res) == (tuple(sorted(KNOWN)), 0.0)
