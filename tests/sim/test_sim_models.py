"""Interference, pooled KV, local-scheduler admission and the Chrome trace in the simulator."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.errors import SpecError
from fineserve.metrics.kv import kv_summary
from fineserve.metrics.summary import records_frame, summarize
from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import EnginePlacement, KVMode, Plan, SolveReport
from fineserve.profiles.measure.interference_fit import InterferenceFit, SlowdownParams
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.interference import HbmShare, InterferenceParams, slowdown
from fineserve.sim.kvpool import PoolParams, SlabPools, slab_geometry
from fineserve.sim.timeslice import TimeSliceShare
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths, LogNormalLengths
from fineserve.workload.trace import ModelLoad, generate
from tests.planner.fakes import ConstLatency, FakeLatency, demand, instance

GIB = 2**30
W8B = 16 * GIB  # llama-3.1-8b bf16 weights, roughly


def shared_gpu_plan(kv_mode=KVMode.POOLED, floors=(2 * GIB, 2 * GIB), rates=(10.0, 10.0),
                    batch=64, kv_model="bf16"):
    """Two 8B engines on GPU 0 at 50% SMs each."""
    models = [demand("a", rate=rates[0]), demand("b", kv=kv_model, rate=rates[1])]
    inst = instance(models, gpus=1, kv_mode=kv_mode)
    engines = tuple(
        EnginePlacement(f"{m.name}-0", m.name, "node0", (0,), 50, batch, W8B, 3 * GIB, kv,
                        100.0, r)
        for m, kv, r in zip(models, floors, rates, strict=True))
    return Plan(inst, engines, (), SolveReport("hand", "HEURISTIC", 0.0))


def lone_plan():
    inst = instance([demand("a", rate=10)], gpus=1, kv_mode=KVMode.STATIC)
    e = EnginePlacement("a-0", "a", "node0", (0,), 100, 32, W8B, 3 * GIB, 20 * GIB, 100.0, 10)
    return Plan(inst, (e,), (), SolveReport("hand", "HEURISTIC", 0.0))


# ----------------------------------------------------------------------------- interference


@settings(max_examples=200, deadline=None)
@given(us=st.floats(0, 1), uo=st.floats(0, 8), a=st.floats(0, 3), cap=st.floats(0.3, 2.5))
def test_slowdown_is_at_least_one_and_one_when_alone(us, uo, a, cap):
    p = SlowdownParams(a=a, capacity=cap)
    f = slowdown(us, uo, p)
    assert f >= 1.0 - 1e-12
    assert slowdown(us, 0.0, p) == 1.0
    assert slowdown(us, 2 * uo + 0.1, p) >= f - 1e-12  # more neighbour demand, no less


def test_proportional_sharing_closed_form():
    fit = SlowdownParams(a=0.0, capacity=1.0)
    share = HbmShare({0: 1e12}, InterferenceParams(fit, fit))
    t1, d1 = share.begin((0,), 0.01, 8e9, True)  # 0.8 of peak alone: no slowdown
    assert t1 == 0.01 and d1 == pytest.approx(8e11)
    t2, d2 = share.begin((0,), 0.01, 8e9, True)  # 1.6 x peak wanted
    assert t2 == pytest.approx(0.016)
    share.end((0,), d1)
    share.end((0,), d2)
    assert share.active[0] == 0 and share.demand[0] == 0.0


def test_interference_never_speeds_up_and_leaves_a_lone_engine_alone():
    trace = generate([ModelLoad("a", Poisson(15), FixedLengths(300, 100)),
                      ModelLoad("b", Poisson(15), FixedLengths(300, 100))], 20, 1)
    plan = shared_gpu_plan(kv_mode=KVMode.STATIC, floors=(20 * GIB, 20 * GIB))
    tight = SlowdownParams(a=0.5, capacity=0.3)
    on = SimOptions(interference=InterferenceParams(tight, tight))
    base = records_frame(simulate(plan, trace, FakeLatency()).records)
    slow = records_frame(simulate(plan, trace, FakeLatency(), options=on).records)
    assert slow.e2e_s.mean() > base.e2e_s.mean()
    lone = lone_plan()
    tr = generate([ModelLoad("a", Poisson(10), FixedLengths(300, 100))], 20, 2)
    a = simulate(lone, tr, FakeLatency())
    b = simulate(lone, tr, FakeLatency(), options=on)
    assert [r.finished_s for r in a.records] == [r.finished_s for r in b.records]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2)), max_size=60))
def test_time_slice_stretch_is_one_plus_the_steps_in_flight(ops):
    share = TimeSliceShare([0, 1])
    open_steps: list[tuple[int, ...]] = []
    for begin, pick in ops:
        gpus = ((0,), (1,), (0, 1))[pick]
        if begin or not open_steps:
            busiest = max(sum(g in s for s in open_steps) for g in gpus)
            seconds, _ = share.begin(gpus, 2.0, 0.0, True)
            assert seconds == pytest.approx(2.0 * (1 + busiest))
            open_steps.append(gpus)
        else:
            share.end(open_steps.pop(0), 1.0)
        share.check_integrity()
    for gpus in open_steps:
        share.end(gpus, 1.0)
    assert share.active == {0: 0, 1: 0}


def test_time_slicing_slows_co_located_engines_and_leaves_a_lone_one_alone():
    trace = generate([ModelLoad("a", Poisson(15), FixedLengths(300, 100)),
                      ModelLoad("b", Poisson(15), FixedLengths(300, 100))], 20, 1)
    plan = shared_gpu_plan(kv_mode=KVMode.STATIC, floors=(20 * GIB, 20 * GIB))
    sliced = SimOptions(sharing="time-sliced")
    base = records_frame(simulate(plan, trace, FakeLatency()).records)
    slow = records_frame(simulate(plan, trace, FakeLatency(), options=sliced).records)
    assert slow.tpot_s.mean() > 1.3 * base.tpot_s.mean()
    lone = lone_plan()
    tr = generate([ModelLoad("a", Poisson(10), FixedLengths(300, 100))], 20, 2)
    a = simulate(lone, tr, FakeLatency())
    b = simulate(lone, tr, FakeLatency(), options=sliced)
    assert [r.finished_s for r in a.records] == [r.finished_s for r in b.records]
    with pytest.raises(ValueError, match="sharing"):
        simulate(lone, tr, FakeLatency(), options=SimOptions(sharing="mig"))


def test_interference_files_plain_and_profiler_fit(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"a": 0.2, "capacity": 0.9}))
    p = InterferenceParams.load(f)
    assert p.decode == p.prefill == SlowdownParams(0.2, 0.9) and p.source == str(f)
    fit = InterferenceFit("H100-SXM-80GB", SlowdownParams(0.3, 1.1, 12, 0.05),
                          SlowdownParams(0.1, 1.4, 12, 0.08))
    fit.save(tmp_path / "fit.json")
    q = InterferenceParams.load(tmp_path / "fit.json")
    assert q.decode.a == 0.3 and q.prefill.capacity == 1.4 and "H100" in q.source
    f.write_text(json.dumps({"alpha": 0.7}))
    with pytest.raises(SpecError, match="unknown key 'alpha'"):
        InterferenceParams.load(f)
    f.write_text(json.dumps({"capacity": -1}))
    with pytest.raises(SpecError, match="interference.decode.capacity"):
        InterferenceParams.load(f)


# ----------------------------------------------------------------------------- pooled KV


def test_slab_geometry_differs_by_kv_precision():
    plan = shared_gpu_plan(kv_model="fp8")
    res = simulate(plan, generate([ModelLoad("a", Poisson(1), FixedLengths(10, 2))], 2, 0),
                   ConstLatency(0.01, 0.01))
    assert res.kv_mode == "pooled"
    from fineserve.sim.engine import EngineSim

    shapes = {}
    for e in plan.engines:
        m = plan.instance.model(e.model)
        from fineserve.profiles.latency import EngineShape
        shape = EngineShape(plan.cluster.gpus[0].spec, m.spec, 1)
        shapes[e.model] = slab_geometry(EngineSim(e.engine_id, shape, 50, 8, 0, None))
    per_token_a, slab_a, tps_a = shapes["a"]
    per_token_b, slab_b, tps_b = shapes["b"]
    assert slab_a == 2 * (2 << 20) * 32  # one 2 MiB granule in K and V of 32 layers
    assert per_token_b * 2 == per_token_a and tps_a == 1024
    assert slab_a % per_token_a == 0


@settings(max_examples=15, deadline=None)
@given(ra=st.floats(1, 60), rb=st.floats(1, 60), prompt=st.integers(16, 2000),
       out=st.integers(2, 400), fa=st.integers(0, 6), fb=st.integers(0, 6),
       seed=st.integers(0, 100))
def test_pooled_kv_accounting_is_conserved(ra, rb, prompt, out, fa, fb, seed):
    """Random loads and floors: at every policy tick the pool's leases fit it and match each
    engine's usable KV, slab rounding stays under one slab per engine, and everything ends
    with every request served once and the counters at zero."""
    checks = []
    tick = SlabPools.tick

    def checked(self, now):
        self.check_integrity()
        checks.append(now)
        return tick(self, now)

    lens = LogNormalLengths(prompt, prompt / 2, out, out / 2, max_prompt=4000, max_output=500)
    trace = generate([ModelLoad("a", Poisson(ra), lens), ModelLoad("b", Poisson(rb), lens)],
                     8.0, seed)
    plan = shared_gpu_plan(floors=(fa * GIB, fb * GIB), rates=(ra, rb))
    opts = SimOptions(pool=PoolParams(interval_s=0.25))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SlabPools, "tick", checked)
        res = simulate(plan, trace, FakeLatency(), options=opts)
    df = records_frame(res.records)
    assert len(df) == len(trace) and df.ok.all() and checks
    slab = 2 * (2 << 20) * 32
    for s in res.kv_samples:
        assert 0 <= s.used_bytes and s.held_bytes <= s.capacity_bytes
        assert 0 <= s.rounding_bytes < 2 * slab  # < one slab for each of the two engines


def test_pooling_lends_idle_memory_to_the_busy_engine():
    """One hot and one idle engine with small partitions: static preempts, pooled grows."""
    trace = generate([ModelLoad("a", Poisson(40), FixedLengths(1500, 300))], 20, 3)
    common = dict(floors=(1 * GIB, 1 * GIB), rates=(40, 0.01))
    static = simulate(shared_gpu_plan(kv_mode=KVMode.STATIC, **common), trace,
                      ConstLatency(0.02, 0.01))
    pooled = simulate(shared_gpu_plan(kv_mode=KVMode.POOLED, **common), trace,
                      ConstLatency(0.02, 0.01))
    assert sum(static.preemptions.values()) > 0
    assert sum(pooled.preemptions.values()) == 0
    util = kv_summary(pooled.kv_samples)["0"]
    assert util["util_max"] > 0.02 and 0 <= util["stranded_mean"] <= 1


def test_tp_engines_of_a_pooled_plan_keep_a_static_cache():
    """Deploy keeps TP > 1 engines off the KV Slab pool: their plan KV is a static cache and
    their GPUs' pools are that much smaller; the TP = 1 engine beside them is pooled."""
    models = [demand("a", rate=20), demand("b", rate=20)]
    inst = instance(models, gpus=2, kv_mode=KVMode.POOLED)
    tp2 = EnginePlacement("a-0", "a", "node0", (0, 1), 50, 64, W8B // 2, 3 * GIB, 2 * GIB,
                          100.0, 20)
    tp1 = EnginePlacement("b-0", "b", "node0", (0,), 50, 64, W8B, 3 * GIB, 1 * GIB, 100.0, 20)
    plan = Plan(inst, (tp2, tp1), (), SolveReport("hand", "HEURISTIC", 0.0))
    lens = FixedLengths(1500, 300)
    trace = generate([ModelLoad("a", Poisson(20), lens), ModelLoad("b", Poisson(20), lens)],
                     10.0, 1)
    seen = {}
    tick = SlabPools.tick

    def spy(self, now):
        seen.update(pool_bytes=dict(self.pool_bytes), leases=set(self.leases))
        return tick(self, now)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SlabPools, "tick", spy)
        res = simulate(plan, trace, ConstLatency(0.02, 0.01))
    assert seen["leases"] == {"b-0"}
    per_rank_a = tp2.weight_bytes + tp2.overhead_bytes + tp2.kv_bytes
    usable = usable_bytes(inst.cluster.gpus[0].spec, inst.settings.memory_utilization)
    assert seen["pool_bytes"] == {0: usable - per_rank_a - tp1.weight_bytes - tp1.overhead_bytes}
    # the static cache of 'a' (2 GiB per rank) is far below its load: it preempts, 'b' grows
    assert res.preemptions["a-0"] > 0 and res.preemptions["b-0"] == 0
    per_token_a = models[0].spec.kv_bytes_per_token(2)
    by_gpu = {s.gpu: s for s in res.kv_samples if s.t == res.kv_samples[-1].t}
    assert by_gpu[1].capacity_bytes == (tp2.kv_bytes // per_token_a) * per_token_a
    assert by_gpu[0].capacity_bytes > seen["pool_bytes"][0]  # the pool plus a's static cache
    assert len(records_frame(res.records)) == len(trace)


# ----------------------------------------------------------------------------- admission


@pytest.mark.parametrize("policy", ["fcfs", "deadline", "adaptive"])
def test_scheduler_policies_drop_under_overload_and_serve_everything_else(policy):
    trace = generate([ModelLoad("a", Poisson(80), FixedLengths(400, 200))], 15, 4)
    plan = lone_plan()
    cfg = SchedulerConfig(policy=policy, max_queue=16)
    res = simulate(plan, trace, ConstLatency(0.03, 0.02), options=SimOptions(scheduler=cfg))
    df = records_frame(res.records)
    assert len(df) == len(trace) and sorted(df["index"]) == list(range(len(trace)))
    assert (df.status == 429).sum() > 0  # 4x overload: the bounded queue refuses
    assert set(df.status) <= {200, 429}
    s = summarize(res.records, {"a": plan.models[0].slo}, res.duration_s, "simulate")
    assert s["per_model"]["a"]["drops"] == (df.status == 429).sum()
    assert s["overall"]["slo_attainment"] <= (df.status == 200).mean()
    q = s["per_model"]["a"]["queue_s"]
    assert q["p50"] is not None and q["p50"] >= 0


def test_no_policy_queues_without_dropping():
    trace = generate([ModelLoad("a", Poisson(30), FixedLengths(400, 50))], 10, 5)
    res = simulate(lone_plan(), trace, ConstLatency(0.03, 0.02))
    df = records_frame(res.records)
    assert (df.status == 200).all()
    assert (df.queued_s >= 0).all() and (df.queued_s <= df.ttft_s + 1e-9).all()


# ----------------------------------------------------------------------------- chrome trace


def test_chrome_trace_is_valid_trace_event_json(tmp_path):
    trace = generate([ModelLoad("a", Poisson(5), FixedLengths(100, 20)),
                      ModelLoad("b", Poisson(5), FixedLengths(100, 20))], 5, 6)
    res = simulate(shared_gpu_plan(), trace, ConstLatency(0.01, 0.005),
                   options=SimOptions(chrome_trace=True))
    path = tmp_path / "t.json"
    res.trace.write(path)
    data = json.loads(path.read_text())
    ev = data["traceEvents"]
    steps = [e for e in ev if e["ph"] == "X"]
    assert steps and all(e["pid"] == 0 and e["dur"] >= 0 and e["ts"] >= 0 for e in steps)
    assert {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"} \
        >= {"a-0 (50% SM)", "b-0 (50% SM)"}
    begins = {e["id"] for e in ev if e["ph"] == "b"}
    ends = {e["id"] for e in ev if e["ph"] == "e"}
    assert begins == ends == set(range(len(trace)))
    assert all(math.isfinite(e["ts"]) for e in ev if "ts" in e)
