"""Per-model MPS decode factors over the common fit (``calibrate.py --per-model``), the
per-sequence term by engine size, and a fit on more than one results directory (``--also``):
what the r4 pre-registration is made with."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.e2e.calibrate import fit_runs, fit_sliced
from bench.e2e.calibrate import main as calibrate_main
from bench.e2e.predict import deployed_default, predict_one
from bench.e2e.predict import main as predict_main
from bench.e2e.results import Calibration, Measured, ResultsDir
from bench.e2e.workload import H100_SET
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(1.0, 2.0))
BASE = Calibration(1.1, ("b",), (2.0,), 4, 0.1, 3e-5, per_seq_by_size=True)
KNOWN = (("llama-3.1-8b@fp8.kv-fp8", 1.3), ("llama-3.2-3b@bf16.kv-bf16", 0.8))


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def _measure(res: ResultsDir, latency, cfg: str, rate: float) -> None:
    """A 'measurement' made by the simulator with the known per-model factors."""
    pred = predict_one(res, cfg, rate, latency, write=False, decode_scale=BASE.decode_scale,
                       decode_s_per_seq=BASE.decode_s_per_seq, per_seq_by_size=True,
                       mps_factors=KNOWN)
    res.save_measured(Measured(cfg, rate, pred["trace_digest"], deployed_default(cfg),
                               pred["summary"], {}))


def test_calibration_round_trips_the_new_terms(tmp_path):
    cal = replace(BASE, mps_factors=dict(KNOWN), mps_factors_fit="somewhere: b at x2")
    p = tmp_path / "calibration.json"
    p.write_text(cal.to_json())
    assert Calibration.load(p) == cal
    old = {"decode_scale": 1.2}  # a file from before: one step model, unscaled term
    p.write_text(json.dumps(old))
    got = Calibration.load(p)
    assert got is not None and not got.per_seq_by_size and got.mps_factors == {}


def test_mps_factors_slow_only_their_model(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    kw = dict(write=False, decode_scale=1.1, decode_s_per_seq=3e-5, per_seq_by_size=True)
    plain = predict_one(res, "c", 2.0, latency, mps_factors=(), **kw)
    slow = predict_one(res, "c", 2.0, latency,
                       mps_factors=(("llama-3.1-8b@fp8.kv-fp8", 2.0),), **kw)
    tpot = {k: {m: g["tpot_s"]["p50"] for m, g in p["summary"]["per_model"].items()}
            for k, p in (("plain", plain), ("slow", slow))}
    assert tpot["slow"]["chat-8b-fp8"] > 1.5 * tpot["plain"]["chat-8b-fp8"]
    assert slow["mps_factors"] == {"llama-3.1-8b@fp8.kv-fp8": 2.0}
    assert slow["token_budget"] == 8192  # vLLM's H100 default, as the r3 engines logged
    sliced = predict_one(res, "a", 2.0, latency, mps_factors=(("x", 2.0),), **kw)
    assert sliced["mps_factors"] == {}  # time slicing has factors of its own


def test_per_model_fit_recovers_known_factors_from_two_directories(tmp_path, plans, latency):
    one = results_dir(tmp_path / "one", SMALL, plans)
    two = results_dir(tmp_path / "two", SMALL, plans)
    _measure(one, latency, "c", 2.0)
    _measure(two, latency, "c", 1.0)
    assert len(fit_runs((one, two), ("c",), (1.0, 2.0))) == 2
    pm = fit_sliced((one, two), latency, ("c",), (1.0, 2.0), mps=BASE)
    for key, f in KNOWN:
        assert pm.factors[key] == pytest.approx(f, rel=0.08)
    with pytest.raises(ValueError, match="no measured result"):
        fit_runs((one,), ("b",), (2.0,))


def test_calibrate_cli_fits_on_two_directories_and_predict_uses_it(tmp_path, plans, latency):
    one = results_dir(tmp_path / "one", SMALL, plans)
    two = results_dir(tmp_path / "two", SMALL, plans)
    for res in (one, two):
        _measure(res, latency, "b", 2.0)
    dest = tmp_path / "cal.json"
    calibrate_main(["--out", str(one.root), "--also", str(two.root), "--configs", "b",
                    "--fit-rates", "2", "--per-seq-by-size", "--per-model",
                    "--write", str(dest)])
    cal = Calibration.load(dest)
    assert cal is not None and cal.per_seq_by_size and cal.mps_factors
    assert cal.source == f"{one.root.resolve()} + {two.root.resolve()}"  # both named
    assert cal.mps_factors_fit.startswith(cal.source)
    out = tmp_path / "pred"
    predict_main(["--out", str(two.root), "--configs", "b", "--calibration", str(dest),
                  "--pred-dir", str(out)])
    p = json.loads((out / "pred-b-r2.00.json").read_text())
    assert p["per_seq_by_size"] and p["mps_factors"] == cal.mps_factors


def _tpots(summary: dict) -> dict[str, float]:
    return {m: g["tpot_s"]["p50"] for m, g in summary["per_model"].items()}


def test_sm_contention_slows_only_an_oversubscribed_plan(tmp_path, plans, latency):
    from bench.e2e.workload import make_trace
    from fineserve.metrics.summary import summarize
    from fineserve.sim.cluster import SimOptions, simulate

    trace = make_trace(SMALL, 2.0)
    plan = plans["c"]
    over = replace(plan, engines=tuple(replace(e, sm_pct=min(100, e.sm_pct * 2))
                                       for e in plan.engines))
    slos = {m.name: m.slo for m in plan.models}

    def run(p, on: bool) -> dict[str, float]:
        r = simulate(p, trace, latency, options=SimOptions(sm_contention=on))
        return _tpots(summarize(r.records, slos, trace.duration_s, "simulate"))

    assert run(plan, True) == run(plan, False)  # within 100% per GPU: untouched
    free, shared = run(over, False), run(over, True)
    assert all(shared[m] >= free[m] * 0.999 for m in free)
    assert any(shared[m] > free[m] * 1.02 for m in free)


def test_predict_reads_a_variant_directory_with_its_parents_workload(tmp_path, plans, latency):
    from fineserve.planner.planfile import save_plan

    res = results_dir(tmp_path, SMALL, plans)
    res.calibration_path().write_text(BASE.to_json())
    sub = res.root / "oversub"
    sub.mkdir()
    save_plan(plans["c"], ResultsDir(sub).plan_path("c"))
    out = tmp_path / "pred"
    predict_main(["--out", str(sub), "--pred-dir", str(out)])
    got = sorted(p.name for p in out.glob("pred-*.json"))
    assert got == ["pred-c-r1.00.json", "pred-c-r2.00.json"]  # only the variant's plan
    p = json.loads((out / "pred-c-r2.00.json").read_text())
    assert p["decode_scale"] == BASE.decode_scale and p["per_seq_by_size"]
    assert not (sub / "bench.json").exists()  # nothing written into the variant's folder


def test_preregister_fits_elsewhere_and_predicts_plans_and_variants(tmp_path, plans, latency):
    from bench.e2e.predict import preregister
    from fineserve.planner.planfile import save_plan

    fit_res = results_dir(tmp_path / "fit", SMALL, plans)
    fit_res.calibration_path().write_text(BASE.to_json())
    for cfg in "abc":
        _measure(fit_res, latency, cfg, 2.0)
    new = results_dir(tmp_path / "new", SMALL, plans)
    (new.root / "oversub").mkdir()
    save_plan(plans["c"], ResultsDir(new.root / "oversub").plan_path("c"))
    preregister(new.root, [fit_res.root], ("a", "b", "c"), latency)
    cal = Calibration.load(new.calibration_path())
    assert cal is not None and cal.source == str(fit_res.root.resolve())
    assert cal.per_seq_by_size and cal.mps_factors and cal.time_sliced is not None
    assert Calibration.load(new.root / "prerun" / "calibration.json") == cal
    names = sorted(p.name for p in (new.root / "prerun").glob("pred-*.json"))
    assert len(names) == 6 and not list(new.root.glob("pred-*.json"))
    assert len(list((new.root / "prerun" / "oversub").glob("pred-c-*.json"))) == 2
    _measure(new, latency, "c", 1.0)
    with pytest.raises(SystemExit, match="already holds measurements"):
        preregister(new.root, [fit_res.root], ("c",), latency)


def test_report_names_the_new_terms_and_counts_a_fit_on_two_directories(tmp_path):
    from bench.e2e.report import _fitted_here, calibration_lines

    res = ResultsDir(tmp_path / "r3")
    res.root.mkdir()
    other = tmp_path / "r0"
    assert _fitted_here(f"{other} + {res.root}", res)
    assert not _fitted_here(f"{other} + {tmp_path / 'r4'}", res)
    cal = replace(BASE, mps_factors=dict(KNOWN), source=f"{other} + {tmp_path / 'r4'}")
    res.calibration_path().write_text(cal.to_json())
    text = " ".join(calibration_lines(res, []))
    assert "scaled by each engine's linear parameters" in text
    assert "llama-3.1-8b@fp8.kv-fp8 x1.3" in text


def test_the_planner_plans_on_the_model_the_simulator_judges(tmp_path, plans, latency):
    """``run.py --plan-latency calibrated`` and ``whatif --replan``: the calibration's size
    scaling and per-model factors reach the planner's latency model, as in ``predict_one``."""
    from bench.e2e.plans import planning_latency
    from bench.e2e.predict import calibrated_mps_terms
    from fineserve.profiles.schema import EngineKey

    res = results_dir(tmp_path, SMALL, plans)
    assert calibrated_mps_terms(res) == (False, ())  # no calibration: nothing applied
    res.calibration_path().write_text(replace(BASE, mps_factors=dict(KNOWN)).to_json())
    by_size, factors = calibrated_mps_terms(res)
    assert by_size and factors == KNOWN
    small = EngineKey("H100-SXM-80GB", "llama-3.2-3b", "bf16", "bf16", 1).shape()  # type: ignore[arg-type]
    fp8 = EngineKey("H100-SXM-80GB", "llama-3.1-8b", "fp8", "fp8", 1).shape()  # type: ignore[arg-type]
    flat = planning_latency(latency, 1.1, 3e-5)
    sized = planning_latency(latency, 1.1, 3e-5, by_size)
    full = planning_latency(latency, 1.1, 3e-5, by_size, factors)
    step = lambda model, shape: model.decode_step(shape, 256, 512, 40).seconds  # noqa: E731
    assert step(sized, small) < step(flat, small)  # a 3B pays less than an 8B's term
    assert step(full, fp8) == pytest.approx(1.3 * step(sized, fp8))
    assert step(full, small) == pytest.approx(0.8 * step(sized, small))
