"""bench/e2e without engines: workload, plans, time-sliced simulation, resumability and the
report (planner and simulator are the real ones; the measured files are built from
simulator summaries, so the report's arithmetic is checked against known numbers)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.e2e import run as e2e_run
from bench.e2e.deployment import DeployArgs
from bench.e2e.plans import (
    CONFIG,
    KNOBS,
    STATIC_MAX_BATCH,
    VARIANTS,
    as_deployed,
    make_config_plan,
)
from bench.e2e.predict import client_view, deployed_default, predict_all, sim_options
from bench.e2e.report import acceptance, collect
from bench.e2e.report import main as report_main
from bench.e2e.results import Deployed, Measured, ResultsDir
from bench.e2e.workload import H100_SET, PlannerKnobs, make_trace, trace_digest
from fineserve.metrics.summary import RequestRecord, summarize
from fineserve.planner.options import usable_bytes
from fineserve.planner.planfile import load_plan
from fineserve.planner.schema import KVMode
from fineserve.sim.cluster import SimOptions, simulate
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(0.5, 2.0))


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def test_rates_follow_a_power_law_and_sum_to_the_total():
    rates = list(H100_SET.rates().values())
    assert rates == sorted(rates, reverse=True)
    assert sum(rates) == pytest.approx(H100_SET.total_rate)
    assert rates[0] / rates[1] == pytest.approx(2.0)  # alpha 1: rank 1 twice rank 2


def test_trace_is_the_same_for_every_config_and_scales_with_the_rate():
    a, b = make_trace(SMALL, 1.0), make_trace(SMALL, 1.0)
    assert trace_digest(a) == trace_digest(b)
    assert trace_digest(make_trace(SMALL, 2.0)) != trace_digest(a)
    big = make_trace(replace(SMALL, duration_s=60.0), 2.0)
    small = make_trace(replace(SMALL, duration_s=60.0), 1.0)
    assert 1.6 < len(big) / len(small) < 2.4
    df = big.to_frame()
    assert df.prompt_tokens.max() <= SMALL.max_prompt
    assert df.output_tokens.max() <= SMALL.max_output
    assert set(df.model) == {m.name for m in SMALL.models}


def test_plans_place_every_model_on_one_gpu(plans):
    names = {m.name for m in SMALL.models}
    for key, plan in plans.items():
        assert {e.model for e in plan.engines} == names, key
        assert not plan.unplaced, key
        assert {g for e in plan.engines for g in e.gpus} == {0}, key
        usable = usable_bytes(plan.cluster.gpus[0].spec,
                              plan.instance.settings.memory_utilization)
        assert sum(e.memory_bytes for e in plan.engines) <= usable + 4, key
    assert all(e.sm_pct == 100 for e in plans["a"].engines)  # time-sliced: whole GPU each
    assert plans["a"].kv_mode is KVMode.STATIC and plans["b"].kv_mode is KVMode.STATIC
    assert plans["c"].kv_mode is KVMode.POOLED
    assert sum(e.sm_pct for e in plans["b"].engines) <= 100
    assert sum(e.sm_pct for e in plans["b"].engines) >= 90  # spare SMs handed out
    assert {e.max_batch for e in plans["b"].engines} == {STATIC_MAX_BATCH}
    assert sum(e.sm_pct for e in plans["c"].engines) <= 100
    assert CONFIG["a"].no_mps and not CONFIG["b"].no_mps and CONFIG["c"].kv_pool


def test_each_configuration_is_planned_with_its_own_measured_overhead_at_one_utilisation(
        tmp_path, plans, latency):
    """KNOBS (what run.py plans a results directory with): one memory utilisation for all,
    each configuration's measured engine overhead, 5% SM steps where the planner picks the
    shares; every engine is charged that overhead."""
    assert len({k.memory_utilization for k in KNOBS.values()}) == 1
    e2e_run.main(["--plan-only", "--out", str(tmp_path), "--rates", "2"])
    made = {k: load_plan(tmp_path / f"plan-{k}.yaml") for k in "abc"}
    for key, plan in made.items():
        st, knobs = plan.instance.settings, KNOBS[key]
        assert st.memory_utilization == knobs.memory_utilization, key
        assert st.engine_overhead_bytes == int(knobs.engine_overhead_gib * 2**30), key
        assert {e.overhead_bytes for e in plan.engines} == {st.engine_overhead_bytes}, key
    assert made["c"].instance.settings.sm_levels == tuple(range(5, 101, 5))
    assert all(e.sm_pct % 5 == 0 for e in made["c"].engines)
    # the planner's defaults unless told: 3 GiB per engine, 0.92 of the GPU
    assert plans["a"].instance.settings.engine_overhead_bytes == 3 * 2**30
    # less overhead charged: more KV for the same models, all else equal
    less = make_config_plan(SMALL, "a", latency,
                            knobs=replace(KNOBS["a"], engine_overhead_gib=2))
    assert sum(e.kv_bytes for e in less.engines) > sum(e.kv_bytes for e in made["a"].engines)
    with pytest.raises(ValueError, match="sm_step: 7 does not divide 100"):
        PlannerKnobs(sm_step=7)


def test_a_variant_is_planned_into_its_own_folder_and_only_with_plan_only(tmp_path, capsys):
    """run.py --plan-only --variant oversub: (c) with MPS shares up to 135%, in
    OUT/oversub/plan-c.yaml beside the workload; the main plans stay as they are."""
    out = tmp_path / "res"
    e2e_run.main(["--plan-only", "--variant", "oversub", "--out", str(out), "--rates", "3"])
    assert not (out / "plan-c.yaml").exists() and (out / "bench.json").is_file()
    plan = load_plan(out / "oversub" / "plan-c.yaml")
    v = VARIANTS["oversub"]
    assert plan.instance.settings.sm_oversubscription == v.knobs.sm_oversubscription == 1.35
    assert 100 < sum(e.sm_pct for e in plan.engines) <= 135
    assert not plan.unplaced
    assert "c (oversub): " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        e2e_run.parse_args(["--variant", "oversub"])
    assert "only with --plan-only" in capsys.readouterr().err


def test_static_split_kv_follows_rate_times_kv_bytes(plans):
    plan = plans["a"]
    kv = {e.model: e.kv_bytes for e in plan.engines}
    # bf16 KV is twice fp8's bytes per token at half the rate: the same partition
    assert kv["chat-8b"] == pytest.approx(kv["chat-8b-fp8"], rel=1e-6)
    per_demand = {m.name: kv[m.name] / (m.rate_rps * m.spec.kv_bytes_per_token(1))
                  for m in plan.models}  # same mean lengths for every model
    assert max(per_demand.values()) == pytest.approx(min(per_demand.values()), rel=1e-6)
    usable = usable_bytes(plan.cluster.gpus[0].spec, plan.instance.settings.memory_utilization)
    assert sum(e.memory_bytes for e in plan.engines) == pytest.approx(usable, abs=8)


def test_pooled_plan_without_the_pool_gets_the_whole_gpu_as_static_partitions(plans):
    c = plans["c"]
    static = as_deployed(c, kv_pool=False)
    assert as_deployed(c, kv_pool=True) is c and as_deployed(plans["b"], False) is plans["b"]
    assert static.kv_mode is KVMode.STATIC
    usable = usable_bytes(c.cluster.gpus[0].spec, c.instance.settings.memory_utilization)
    assert sum(e.memory_bytes for e in static.engines) == pytest.approx(usable, abs=8)
    floors = {e.engine_id: e.kv_bytes for e in c.engines}
    extra = {e.engine_id: e.kv_bytes - floors[e.engine_id] for e in static.engines}
    assert max(extra.values()) - min(extra.values()) <= 1  # an equal share each
    assert [e.sm_pct for e in static.engines] == [e.sm_pct for e in c.engines]


def test_time_slicing_changes_nothing_for_one_engine_and_slows_co_located_ones(plans,
                                                                             latency):
    plan, trace = plans["a"], make_trace(SMALL, 2.0)
    df = trace.to_frame()
    alone = type(trace).from_frame(df[df.model == "chat-8b-fp8"].reset_index(drop=True))
    opts = SimOptions(kv="static")
    sliced_opts = replace(opts, sharing="time-sliced")
    plain = simulate(plan, alone, latency, options=opts)
    sliced = simulate(plan, alone, latency, options=sliced_opts)
    assert [(r.first_token_s, r.finished_s) for r in plain.records] == \
        [(r.first_token_s, r.finished_s) for r in sliced.records]
    slos = {m.name: m.slo for m in plan.models}
    both_plain = summarize(simulate(plan, trace, latency, options=opts).records, slos, 6,
                           "simulate")
    both_sliced = summarize(simulate(plan, trace, latency, options=sliced_opts).records,
                            slos, 6, "simulate")
    assert both_sliced["overall"]["tpot_s"]["p50"] > both_plain["overall"]["tpot_s"]["p50"]


def test_prediction_options_time_slice_only_gpu_runs_without_mps():
    assert sim_options(Deployed(True, False, "fcfs", False)).sharing == "time-sliced"
    assert sim_options(Deployed(True, False, "fcfs", False)).interference is None
    assert sim_options(Deployed(False, True, "fcfs", False)).sharing == "mps"
    assert sim_options(Deployed(True, False, "fcfs", False, cpu=True)).sharing == "mps"


def _fake_measured(res: ResultsDir, cfg: str, scale: float, attainment_scale: float) -> None:
    """A 'measurement' equal to the prediction, with attainment and goodput scaled."""
    pred = json.loads(res.predicted_path(cfg, scale).read_text())
    summary = json.loads(json.dumps(pred["summary"]))
    for group in [summary["overall"], *summary["per_model"].values()]:
        for key in ("slo_attainment", "goodput_rps"):
            if key in group:
                group[key] *= attainment_scale
    res.save_measured(Measured(cfg, scale, pred["trace_digest"], deployed_default(cfg), summary,
                               {"x": {"mean": 0.5, "p99": 0.9, "max": 1.0, "samples": 3}}))


def test_report_judges_acceptance_and_errors(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    assert len(predict_all(res, ("a", "b", "c"), latency)) == 6
    assert predict_all(res, ("a", "b", "c"), latency) == []  # cached
    for cfg, f in (("a", 1.0), ("b", 1.0), ("c", 1.0)):
        for scale in SMALL.rate_scales:
            _fake_measured(res, cfg, scale, f)
    predict_all(res, ("a", "b", "c"), latency)  # measurements newer: recomputed, same values
    rows = collect(res)
    assert len(rows) == 6
    for r in rows:
        assert r.attainment_error_pts == pytest.approx(0.0, abs=1e-9)
        assert r.throughput_error == pytest.approx(0.0, abs=1e-9)
    acc = acceptance(rows)
    assert acc is not None
    assert acc.max_attainment_error_pts == pytest.approx(0.0, abs=1e-9)
    assert acc.max_attainment_error_rel == pytest.approx(0.0, abs=1e-9)
    # (a) measured at half its prediction: errors of 50% of (a)'s attainment show up
    for scale in SMALL.rate_scales:
        _fake_measured(res, "a", scale, 0.5)
    rows = collect(res)
    ra = [r for r in rows if r.config == "a"]
    for r in ra:
        assert r.attainment_error_pts == pytest.approx(100 * r.m("slo_attainment"), rel=1e-6)
        assert r.attainment_error_rel == pytest.approx(1.0, rel=1e-6)  # predicted 2x measured
    acc = acceptance(rows)
    assert acc.max_attainment_error_rel == pytest.approx(1.0, rel=1e-6)
    assert acc.worst_attainment_rel_at.startswith("(a) x") and not acc.passed
    c = next(r for r in rows if r.config == "c" and r.scale == acc.scale)
    a = next(r for r in ra if r.scale == acc.scale)
    assert acc.attainment_ratio == pytest.approx(c.m("slo_attainment") / a.m("slo_attainment"))
    assert acc.goodput_ratio == pytest.approx(c.m("goodput_rps") / a.m("goodput_rps"))
    assert acc.attainment_ceiling == pytest.approx(1 / a.m("slo_attainment"))
    assert acc.attainment_ratio <= acc.attainment_ceiling + 1e-9
    doc = tmp_path / "docs" / "benchmarks.md"
    report_main(["--out", str(res.root), "--doc", str(doc)])
    text = doc.read_text()
    assert "| (a) | 0.5 |" in text and "| (c) | 2 |" in text
    assert "Acceptance (" in text and "(c) / (a) SLO attainment" in text
    assert f"at most {acc.attainment_ceiling:.2f}x at this rate" in text
    assert "relative to the measured: at most **100.0%**" in text
    assert f"SLO attainment per model at rate x{acc.scale:g}" in text
    assert "| chat-8b-fp8 |" in text
    for r in (x for x in rows if x.config == "a"):  # (c) against (a) at every common rate
        c = next(x for x in rows if x.config == "c" and x.scale == r.scale)
        ratio = c.m("slo_attainment") / r.m("slo_attainment")
        assert f"| {r.scale:g} | {r.m('slo_attainment'):.1%} |" in text
        assert f"| {ratio:.2f}x |" in text
    report_main(["--out", str(res.root), "--doc", str(doc)])  # rewrites its section only
    assert doc.read_text().count("BEGIN GENERATED") == 1


def test_rates_measured_elsewhere_join_the_sweep(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    predict_all(res, ("a",), latency)
    _fake_measured(res, "a", 2.0, 1.0)
    m = res.measured("a", 2.0)
    # a GPU call with --rates 1.5 wrote a file; this machine's bench.json never heard of it
    res.save_measured(replace(m, rate_scale=1.5, trace_digest=trace_digest(
        make_trace(SMALL, 1.5))))
    assert res.scales() == (0.5, 1.5, 2.0)
    predict_all(res, ("a",), latency)
    assert res.predicted_path("a", 1.5).is_file()
    assert [r.scale for r in collect(res) if r.config == "a"] == [0.5, 1.5, 2.0]


def test_a_prediction_refuses_a_different_trace(tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    predict_all(res, ("a",), latency)
    _fake_measured(res, "a", 0.5, 1.0)
    m = res.measured("a", 0.5)
    res.save_measured(replace(m, trace_digest="0" * 16))
    with pytest.raises(ValueError, match="replayed trace"):
        predict_all(res, ("a",), latency)


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(configs="a", out=tmp_path / "res", quick=False, cpu_smoke=False,
                enforce_eager=False, no_kv_pool=False, plan_only=False, budget_s=500.0,
                request_timeout=30.0, startup_timeout=300.0, engine_python="", port=8000,
                work=str(tmp_path / "work"), only_scales=(), kv_pool_fallback=True,
                plan_latency="profiled", gpu=0, lane="")
    return argparse.Namespace(**{**base, **kw})


class _NoDeploy:
    def __init__(self, *a, **k):
        raise AssertionError("nothing should be deployed")


def test_rerun_skips_measured_rates_and_defers_what_the_budget_cannot_hold(
        tmp_path, plans, latency, monkeypatch):
    monkeypatch.setattr(e2e_run, "DeployProcess", _NoDeploy)
    res = results_dir(tmp_path, SMALL, plans)
    predict_all(res, ("a",), latency)
    for scale in SMALL.rate_scales:
        _fake_measured(res, "a", scale, 1.0)
    args = _args(tmp_path)
    e2e_run.run_config(res, SMALL, "a", args, e2e_run.Budget(500.0))  # all measured
    e2e_run.run_config(res, SMALL, "b", args, e2e_run.Budget(30.0))  # cannot start in 30 s
    assert not res.measured_path("b", 0.5).exists()


class _PoolFailsDeploy:
    """Stands in for `fineserve deploy` in run_config's unit test: fails with the pool."""

    started: list[DeployArgs] = []

    def __init__(self, args: DeployArgs, label: str) -> None:
        self.args, self.url = args, "http://127.0.0.1:1"
        _PoolFailsDeploy.started.append(args)

    def wait_serving(self, timeout_s: float) -> float:
        if self.args.kv_pool:
            raise RuntimeError("engine exited 1: KV Slab plugin failed")
        return 1.0

    def stop(self) -> None:
        pass


def test_c_falls_back_to_static_kv_when_the_pool_does_not_start(tmp_path, plans, monkeypatch):
    measured = []
    monkeypatch.setattr(e2e_run, "DeployProcess", _PoolFailsDeploy)
    monkeypatch.setattr(e2e_run, "warm_up", lambda url, models: None)
    monkeypatch.setattr(e2e_run, "measure_rate", lambda res, bench, plan, cfg, scale, dep,
                        proc, startup, args: measured.append((scale, dep.kv_pool, plan)))
    _PoolFailsDeploy.started = []
    res = results_dir(tmp_path, SMALL, plans)
    e2e_run.run_config(res, SMALL, "c", _args(tmp_path, configs="c"), e2e_run.Budget(500.0))
    assert [a.kv_pool for a in _PoolFailsDeploy.started] == [True, False]
    assert _PoolFailsDeploy.started[1].plan.name == "plan-c-static-kv.yaml"
    assert [(s, pool) for s, pool, _ in measured] == [(0.5, False), (2.0, False)]
    assert measured[0][2].kv_mode is KVMode.STATIC
    with pytest.raises(RuntimeError, match="KV Slab"):  # without the fallback: the error
        e2e_run.run_config(res, SMALL, "c", _args(tmp_path, configs="c",
                                                  kv_pool_fallback=False),
                           e2e_run.Budget(500.0))


def test_prediction_cuts_off_requests_the_client_gave_up_on():
    done = RequestRecord(0, "m", 0.0, 0.0, 10, 5, status=200, first_token_s=1.0,
                         finished_s=10.0, tokens_received=5)
    late = replace(done, index=1, finished_s=50.0)
    kept, cut = client_view([done, late], 45.0)
    assert kept is done and kept.ok
    assert not cut.ok and cut.tokens_received == 0 and "Timeout" in cut.error


def test_results_directory_keeps_one_workload_and_gains_rates(tmp_path):
    res = ResultsDir(tmp_path / "res")
    res.save_bench(SMALL)
    more = e2e_run.check_bench(res, replace(SMALL, rate_scales=(1.0,)))
    assert more.rate_scales == (0.5, 1.0, 2.0)
    assert res.load_bench().rate_scales == (0.5, 1.0, 2.0)
    with pytest.raises(SystemExit, match="different workload"):
        e2e_run.check_bench(res, replace(SMALL, cv=3.0))


def test_a_directory_made_with_another_seed_keeps_its_trace(tmp_path):
    """results-r5 was made with --seed 1; its lanes run run.py without --seed and must
    replay seed 1's trace, while asking for another seed there is refused."""
    res = ResultsDir(tmp_path / "res")
    res.save_bench(replace(SMALL, seed=1))
    assert e2e_run.check_bench(res, SMALL).seed == 1
    assert res.load_bench().seed == 1
    with pytest.raises(SystemExit, match="different workload"):
        e2e_run.check_bench(res, replace(SMALL, seed=2), seed=2)
    args = e2e_run.parse_args(["--seed", "3", "--plan-only"])
    assert e2e_run.choose_bench(args).seed == 3


def test_bad_config_and_rates_are_one_line_errors(capsys):
    with pytest.raises(SystemExit):
        e2e_run.parse_args(["--configs", "a,x"])
    assert "--configs: unknown x" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        e2e_run.parse_args(["--rates", "1,fast"])
    assert "--rates" in capsys.readouterr().err


def test_calibrated_planning_sees_slower_decode_steps(tmp_path, plans, latency):
    """--plan-latency calibrated: (b) and (c) planned on decode steps x the calibration, so
    every engine is credited with less capacity; (a) has no latency model to stretch."""
    slow = {k: make_config_plan(SMALL, k, latency, time_limit_s=5, decode_scale=1.5,
                                decode_s_per_seq=4e-5) for k in "bc"}
    for k, plan in slow.items():
        assert not plan.unplaced, k
        assert "x1.5 + 0.04 ms per sequence" in plan.report.note, k
        cap = {e.model: e.capacity_rps for e in plan.engines}
        fast = {e.model: e.capacity_rps for e in plans[k].engines}
        assert sum(cap.values()) < sum(fast.values()), k
    res = ResultsDir(tmp_path)
    assert e2e_run.plan_decode_terms(res, "profiled") == (1.0, 0.0)
    with pytest.raises(SystemExit, match="no .*calibration.json"):
        e2e_run.plan_decode_terms(res, "calibrated")
    res.calibration_path().write_text(json.dumps({"decode_scale": 2.1}))  # older file
    assert e2e_run.plan_decode_terms(res, "calibrated") == (2.1, 0.0)
    res.calibration_path().write_text(json.dumps({"decode_scale": 1.2,
                                                  "decode_s_per_seq": 4e-5}))
    assert e2e_run.plan_decode_terms(res, "calibrated") == (1.2, 4e-5)


def test_gateway_limits_are_read_from_the_gateways_own_metrics():
    """The series a run keeps: each engine's limit as the gateway renders it."""
    from bench.e2e.deployment import parse_gateway_limits
    from fineserve.runtime.gateway.metrics import GatewayMetrics

    gm = GatewayMetrics()
    gm.watch_engine("chat-0", "chat", lambda: 42, lambda: 3, lambda: 0, lambda: 1)
    gm.watch_engine("edge-0", "edge", lambda: 7, lambda: 7, lambda: 2, lambda: 1)
    assert parse_gateway_limits(gm.render()) == {"chat-0": 42.0, "edge-0": 7.0}
    assert parse_gateway_limits(b"# nothing\nother 1\n") == {}


def test_measured_keeps_the_engine_series_and_reads_files_without_it(tmp_path):
    m = Measured("c", 2.0, "d", deployed_default("c"), {"overall": {}}, {}, 30.0,
                 engine_series={"e0": [[1.0, 3, 0, 0.5, 0, 64.0]]})
    assert Measured.from_json(m.to_json()) == m
    old = json.loads(m.to_json())
    del old["engine_series"]  # result files of the 2026-11-26 run
    assert Measured.from_json(json.dumps(old)).engine_series == {}


class _EngineFailsDeploy(_PoolFailsDeploy):
    """As `fineserve deploy` when an engine dies at start-up: its log holds the root cause,
    the error quotes only the log's last line."""

    def wait_serving(self, timeout_s: float) -> float:
        logs = self.args.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "engine-chat-8b.log").write_text(
            "INFO loading\nTraceback (most recent call last):\n  File \"core.py\", line 1\n"
            "torch.OutOfMemoryError: CUDA out of memory\nRuntimeError: Engine core "
            "initialization failed. See root cause above\n")
        raise RuntimeError("engine exited 1: its log ends with: See root cause above")


def test_a_failed_engine_start_puts_the_root_cause_in_the_run_log(tmp_path, plans,
                                                                   monkeypatch, capsys):
    monkeypatch.setattr(e2e_run, "DeployProcess", _EngineFailsDeploy)
    res = results_dir(tmp_path, SMALL, plans)
    with pytest.raises(RuntimeError, match="root cause above"):
        e2e_run.run_config(res, SMALL, "a", _args(tmp_path), e2e_run.Budget(500.0))
    out = capsys.readouterr().out
    assert "a: torch.OutOfMemoryError: CUDA out of memory" in out
    assert "engine-chat-8b.log: from its first error" in out


def test_the_report_flags_engines_past_the_largest_cuda_graph(tmp_path, latency):
    from bench.e2e.predict import predict_one
    from bench.e2e.report import CUDA_GRAPH_MAX, graph_overflow_lines

    small = replace(H100_SET, duration_s=4.0, rate_scales=(1.0,))
    res = results_dir(tmp_path, small, config_plans(small, latency))
    pred = predict_one(res, "a", 1.0, latency, write=False)
    series = {"chat-8b-fp8": [[1.0, 300, 0, 0.5, 0, -1], [2.0, 700, 5, 0.9, 0, -1],
                              [3.0, 600, 0, 0.9, 0, -1]],
              "edge-3b": [[1.0, CUDA_GRAPH_MAX, 0, 0.2, 0, -1]]}  # at the limit: captured
    res.save_measured(Measured("a", 1.0, pred["trace_digest"], deployed_default("a"),
                               pred["summary"], {}, engine_series=series))
    assert graph_overflow_lines(res)[2:-1] == [
        "- (a) x1 chat-8b-fp8: up to 700 running, over 512 in 2 of 3 samples"]
    res.save_measured(Measured("a", 1.0, pred["trace_digest"], deployed_default("a"),
                               pred["summary"], {}, engine_series={"edge-3b": series["edge-3b"]}))
    assert graph_overflow_lines(res) == []


def test_calibration_source_decides_what_the_report_counts_as_held_out(tmp_path):
    """A fit read from another results directory leaves every run here held out; a file
    without the field (older fits) was fitted on its own directory."""
    from bench.e2e.calibrate import Calibration, SlicedCalibration
    from bench.e2e.report import _fitted_here
    from bench.e2e.results import ResultsDir

    res = ResultsDir(tmp_path / "r3")
    sliced = SlicedCalibration({"m": 0.6}, ("a",), (2.0,), 4, 0.02, 3, 3.5e-5, "bench/e2e/results")
    cal = Calibration(1.026, ("b",), (2.0,), 4, 0.1, 3.5e-5, sliced, "bench/e2e/results")
    path = tmp_path / "calibration.json"
    path.write_text(cal.to_json())
    assert Calibration.load(path) == cal
    assert not _fitted_here(cal.source, res) and not _fitted_here(sliced.source, res)
    assert _fitted_here("", res)
    assert _fitted_here(str(res.root), res)
