"""The simulator fixes from the H100 end-to-end run: a decode-step factor calibrated on held-out
rates, the KV Slab pool growing lazily as the runtime does, and the prediction applying the
factor to MPS deployments only."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.e2e.calibrate import Calibration, fit, tpot_log_ratios
from bench.e2e.predict import (
    calibrated_scale,
    deployed_default,
    engine_kv_usage,
    predict_all,
    predict_one,
)
from bench.e2e.results import Measured, ResultsDir
from bench.e2e.workload import H100_SET, make_trace
from fineserve.errors import SpecError
from fineserve.profiles.latency import EngineShape
from fineserve.scheduler import SchedulerConfig
from fineserve.scheduler.adaptive import AdaptivePolicy
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.kvpool import KvSample, PoolParams
from fineserve.sim.stepscale import ScaledLatency
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(1.0, 2.0))


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def _shape(plan) -> EngineShape:
    e = plan.engines[0]
    spec = next(m.spec for m in plan.models if m.name == e.model)
    return EngineShape(plan.cluster.gpus[e.gpus[0]].spec, spec, e.tp)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1.0, 6.0), batch=st.integers(1, 256), sm=st.sampled_from([10, 40, 100]))
def test_scaled_latency_stretches_decode_only(plans, latency, scale, batch, sm):
    shape = _shape(plans["c"])
    s = ScaledLatency(latency, decode_scale=scale)
    base = latency.decode_step(shape, batch, 300.0, sm)
    assert s.decode_step(shape, batch, 300.0, sm).seconds == pytest.approx(base.seconds * scale)
    assert s.decode_step(shape, batch, 300.0, sm).source == base.source
    assert s.prefill(shape, 512, sm).seconds == latency.prefill(shape, 512, sm).seconds
    assert s.covers(shape) == latency.covers(shape)


@settings(max_examples=30, deadline=None)
@given(per_seq=st.floats(0.0, 1e-4), batch=st.integers(1, 256),
       sm=st.sampled_from([10, 25, 40, 100]))
def test_per_sequence_term_grows_with_the_batch_and_falls_with_the_sm_share(
        plans, latency, per_seq, batch, sm):
    shape = _shape(plans["c"])
    s = ScaledLatency(latency, decode_scale=1.5, decode_s_per_seq=per_seq)
    base = latency.decode_step(shape, batch, 300.0, sm).seconds
    got = s.decode_step(shape, batch, 300.0, sm).seconds
    assert got == pytest.approx(1.5 * base + per_seq * batch * 100 / sm)
    assert s.prefill(shape, 512, sm).seconds == latency.prefill(shape, 512, sm).seconds


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, math.nan, math.inf])
def test_scaled_latency_refuses_factors_below_one(latency, bad):
    with pytest.raises(SpecError, match="decode_scale"):
        ScaledLatency(latency, decode_scale=bad)
    with pytest.raises(SpecError, match="decode_s_per_seq"):  # -0.5, -1, -2, nan, inf
        ScaledLatency(latency, decode_s_per_seq=bad - 1.0)


def test_pool_params_refuse_a_negative_grow_ahead():
    with pytest.raises(ValueError, match="grow_ahead_slabs"):
        PoolParams(grow_ahead_slabs=-1.0)


def _usage_seen(plan, latency, grow_ahead, monkeypatch) -> list[float]:
    """vLLM's KV usage gauge as the adaptive scheduler reads it on every tick."""
    seen: list[float] = []
    orig = AdaptivePolicy.on_engine_state

    def spy(self, snap, in_flight):
        seen.append(snap.kv_usage)
        orig(self, snap, in_flight)

    monkeypatch.setattr(AdaptivePolicy, "on_engine_state", spy)
    opts = SimOptions(kv="pooled", pool=PoolParams(grow_ahead_slabs=grow_ahead),
                      scheduler=SchedulerConfig(policy="adaptive"))
    trace = make_trace(replace(SMALL, duration_s=20.0), 3.0)
    result = simulate(plan, trace, latency, options=opts)
    for x in result.kv_samples:
        assert x.used_bytes <= x.held_bytes <= x.capacity_bytes
    return [u for u in seen if u > 0]


def test_lazy_pool_reports_the_usage_the_runtime_reports(plans, latency, monkeypatch):
    """The runtime maps a slab only when less than one slab is free, so vLLM's usage gauge
    runs near full (the H100 run: p99 0.94-0.98); the eager model maps up to the policy's
    target at once and reports far less - the adaptive scheduler's KV cut never fires."""
    from bench.e2e.workload import instance
    from fineserve.planner.api import make_plan
    from fineserve.planner.schema import KVMode

    # (c) at the planner's default batch caps (<= 256), the plan of the H100 run it describes
    plan = make_plan(instance(SMALL, KVMode.POOLED, 5), latency, method="ilp")
    lazy = sorted(_usage_seen(plan, latency, 1.0, monkeypatch))
    eager = sorted(_usage_seen(plan, latency, None, monkeypatch))
    def q(xs, f):
        return xs[int(f * (len(xs) - 1))]

    assert q(lazy, 0.5) > q(eager, 0.5) + 0.05
    assert q(lazy, 0.9) > q(eager, 0.9) + 0.15
    assert q(lazy, 0.99) >= 0.95 > q(eager, 0.99)  # the KV cut's threshold


def _measured_from_prediction(res: ResultsDir, cfg: str, rate: float, pred: dict) -> None:
    res.save_measured(Measured(cfg, rate, pred["trace_digest"], deployed_default(cfg),
                               pred["summary"], {}))


def test_decode_scale_applies_to_mps_deployments_only(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    a1 = predict_one(res, "a", 1.0, latency, decode_scale=1.0, write=False)
    a2 = predict_one(res, "a", 1.0, latency, decode_scale=2.0, write=False)
    assert a2["decode_scale"] == 1.0 and a2["decode_scale_asked"] == 2.0
    assert a2["summary"]["overall"] == a1["summary"]["overall"]
    b1 = predict_one(res, "b", 1.0, latency, decode_scale=1.0, write=False)
    b2 = predict_one(res, "b", 1.0, latency, decode_scale=2.0, write=False)
    assert b2["decode_scale"] == 2.0
    # less than 2x: prefill chunks and interference in the steps are not scaled (with the
    # session-6 profiles, 1.15x at this load)
    assert (b2["summary"]["overall"]["tpot_s"]["p50"]
            > 1.1 * b1["summary"]["overall"]["tpot_s"]["p50"])


def test_predictions_follow_the_calibration_file(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    assert calibrated_scale(res) == 1.0
    assert len(predict_all(res, ("b",), latency)) == 2
    assert predict_all(res, ("b",), latency) == []  # cached
    res.calibration_path().write_text(
        Calibration(1.7, ("b",), (1.0,), 4, 0.1).to_json())
    assert len(predict_all(res, ("b",), latency)) == 2  # another scale: recomputed
    assert json.loads(res.predicted_path("b", 2.0).read_text())["decode_scale"] == 1.7


def test_tpot_log_ratios_compare_medians_per_model():
    m = {"per_model": {"x": {"tpot_s": {"p50": 0.02}}, "y": {"tpot_s": {"p50": 0.03}},
                       "z": {"tpot_s": {}}}}
    p = {"per_model": {"x": {"tpot_s": {"p50": 0.01}}, "y": {"tpot_s": {"p50": 0.03}}}}
    assert tpot_log_ratios(m, p) == pytest.approx([math.log(2.0), 0.0])


def test_fit_recovers_a_known_step_factor_from_its_fit_rates(tmp_path, plans, latency):
    """'Measurements' made by the simulator at decode x1.6 on x1 only: the fit, which sees
    the fit rates only, finds about 1.6."""
    res = results_dir(tmp_path, SMALL, plans)
    for cfg in ("b", "c"):
        _measured_from_prediction(res, cfg, 1.0,
                                  predict_one(res, cfg, 1.0, latency, 1.6, write=False))
    cal = fit(res, latency, ("b", "c"), (1.0,))
    assert cal.fit_rates == (1.0,) and cal.points == 8
    assert cal.decode_scale == pytest.approx(1.6, rel=0.08)
    assert cal.decode_s_per_seq <= 5e-6  # no per-sequence term in these 'measurements'
    with pytest.raises(ValueError, match="no measured result"):
        fit(res, latency, ("b",), (3.0,))


def test_engine_kv_usage_is_used_over_held_like_the_vllm_gauge():
    samples = [KvSample(0.0, 0, 100, 40, 30, 0), KvSample(1.0, 0, 100, 50, 50, 0),
               KvSample(2.0, 0, 100, 0, 0, 0)]  # nothing held: no reading
    assert engine_kv_usage(samples) == pytest.approx((0.75 + 1.0) / 2)
    assert engine_kv_usage([]) is None


def test_fit_recovers_a_known_per_sequence_term(tmp_path, plans, latency):
    """'Measurements' at decode x1.2 + 0.03 ms per sequence at 100% SMs (x2: batches large
    enough for the term to matter): the fit finds both, and the factor alone fits worse."""
    res = results_dir(tmp_path, SMALL, plans)
    for cfg in ("b", "c"):
        _measured_from_prediction(res, cfg, 2.0, predict_one(
            res, cfg, 2.0, latency, 1.2, write=False, decode_s_per_seq=3e-5))
    cal = fit(res, latency, ("b", "c"), (2.0,), steps=8)
    assert cal.decode_s_per_seq == pytest.approx(3e-5, abs=6e-6)
    assert cal.decode_scale == pytest.approx(1.2, rel=0.1)
    alone = fit(res, latency, ("b", "c"), (2.0,), steps=8, per_seq_grid=(0.0,))
    assert alone.decode_s_per_seq == 0.0 and alone.residual_log_sd > cal.residual_log_sd
    path = tmp_path / "cal.json"
    path.write_text(cal.to_json())
    assert Calibration.load(path) == cal


def test_predictions_follow_the_per_sequence_term(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    assert len(predict_all(res, ("b",), latency)) == 2
    res.calibration_path().write_text(json.dumps({"decode_scale": 1.0,
                                                  "decode_s_per_seq": 3e-5}))
    assert len(predict_all(res, ("b",), latency)) == 2  # another term: recomputed
    pred = json.loads(res.predicted_path("b", 2.0).read_text())
    assert pred["decode_s_per_seq"] == 3e-5
    a = predict_one(res, "a", 1.0, latency, decode_s_per_seq=3e-5, write=False)
    assert a["decode_s_per_seq"] == 0.0 and a["decode_s_per_seq_asked"] == 3e-5


def test_report_names_both_terms_and_judges_only_runs_not_fitted(tmp_path, plans, latency):
    from bench.e2e.report import calibration_lines, collect

    res = results_dir(tmp_path, SMALL, plans)
    for cfg in ("a", "b"):
        for rate in SMALL.rate_scales:
            pred = predict_one(res, cfg, rate, latency, write=True)
            if (cfg, rate) != ("a", 2.0):  # (a) x2 measured off the prediction
                _measured_from_prediction(res, cfg, rate, pred)
            else:
                worse = json.loads(json.dumps(pred))
                worse["summary"]["overall"]["slo_attainment"] -= 0.25
                _measured_from_prediction(res, cfg, rate, worse)
    res.calibration_path().write_text(Calibration(1.2, ("b",), (1.0, 2.0), 8, 0.1, 4e-5)
                                      .to_json())
    text = " ".join(calibration_lines(res, collect(res)))
    assert "x1.2 + 0.04 ms per decoding sequence at 100% SMs" in text
    assert "not fitted (2:" in text  # (a) x1 and x2; (b) was fitted
    assert "at most **25.0 pt**" in text
