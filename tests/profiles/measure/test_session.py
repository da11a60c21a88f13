"""Session planning: engine waves that fit the GPU, compile-group leaders, time estimates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.catalog import model_spec
from fineserve.profiles.composite import default_latency_model
from fineserve.profiles.measure.grid import GridSpec
from fineserve.profiles.measure.records import PointSpec
from fineserve.profiles.measure.session import (
    GIB,
    EngineCost,
    engine_cost,
    estimate_session,
    plan_waves,
    point_seconds,
    shard,
    start_seconds,
)
from fineserve.profiles.schema import EngineKey


def cost(key: str, gib: float, group: str = "g", start: float = 40.0, compile_s: float = 45.0,
         measure: float = 60.0, model: str = "m") -> EngineCost:
    return EngineCost(key, model, group, int(gib * GIB), start, compile_s, measure)


def test_engines_share_a_wave_while_their_memory_fits():
    engines = [cost("a", 23), cost("b", 23), cost("c", 23), cost("d", 23)]
    waves = plan_waves(engines, 72 * GIB)
    assert [[e.key for e in w.engines] for w in waves] == [["a", "b", "c"], ["d"]]
    assert [[e.key for e in w.engines] for w in plan_waves(engines, 72 * GIB, parallel=False)] \
        == [["a"], ["b"], ["c"], ["d"]]
    # too big for any wave: alone, still planned (whether it fits the GPU is vLLM's to say)
    assert [len(w.engines) for w in plan_waves([cost("x", 90), cost("y", 5)], 72 * GIB)] == [1, 1]


def test_the_first_engine_of_a_compile_group_starts_first_and_alone_pays_the_compile():
    engines = [cost("bf16-100", 20, "bf16"), cost("bf16-50", 20, "bf16"),
               cost("fp8-100", 12, "fp8", start=30.0), cost("fp8-50", 12, "fp8")]
    (wave,) = plan_waves(engines, 72 * GIB)
    assert wave.leaders == ("bf16-100", "fp8-100")
    assert wave.start_s == pytest.approx(max(40 + 45, 30 + 45) + 40)  # leaders, then the rest
    assert wave.total_s == pytest.approx(wave.start_s + 4 * 60)
    # a group compiled in an earlier wave (or warm from before) has no leader again
    first, second = plan_waves([cost("a", 50, "g"), cost("b", 50, "g")], 72 * GIB)
    assert first.leaders == ("a",) and second.leaders == () and second.start_s == 40
    (warm,) = plan_waves([cost("a", 20, "g")], 72 * GIB, warm=frozenset({"g"}))
    assert warm.leaders == () and warm.start_s == 40


def test_waves_beat_one_by_one_and_split_per_model():
    engines = [cost(f"8b-{s}", 22, "8b", model="8b") for s in (100, 50, 30)] + \
        [cost(f"70b-{s}", 52, "70b", model="70b", measure=300) for s in (100, 50)]
    session = estimate_session(engines, 72 * GIB)
    assert [len(w.engines) for w in session.waves] == [3, 1, 1]
    assert session.total_s < session.sequential_s
    # one by one: every start is paid in full; the first of each group compiles
    assert session.sequential_s == pytest.approx(5 * 40 + 2 * 45 + 3 * 60 + 2 * 300)
    by_model = dict(session.by_model())
    assert list(by_model) == ["8b", "70b"]
    assert sum(by_model.values()) == pytest.approx(session.total_s)


@given(st.lists(st.tuples(st.floats(1, 80), st.sampled_from("abc")), min_size=1, max_size=12),
       st.floats(20, 80))
def test_waves_keep_order_fit_and_lead_each_group_once(specs, capacity_gib):
    engines = [cost(str(i), gib, group) for i, (gib, group) in enumerate(specs)]
    waves = plan_waves(engines, capacity_gib * GIB)
    assert [e for w in waves for e in w.engines] == engines  # order kept, nothing lost
    for w in waves:
        assert len(w.engines) == 1 or sum(e.memory_bytes for e in w.engines) \
            <= capacity_gib * GIB
    leaders = [k for w in waves for k in w.leaders]
    assert sorted(engines[int(k)].compile_group for k in leaders) == sorted({g for _, g in specs})


def test_point_costs_follow_the_method_run_counts():
    latency = default_latency_model()
    shape = EngineKey("H100-SXM-80GB", "llama-3.1-8b", "bf16", "bf16", 1).shape()  # type: ignore[arg-type]
    one = PointSpec("prefill", 4, 2048, repeats=5, samples=1)
    three = PointSpec("prefill", 4, 2048, repeats=5, samples=3)
    t1 = point_seconds(one, latency, shape, 100, blocker_tokens=8192, decode_tokens=128)
    t3 = point_seconds(three, latency, shape, 100, blocker_tokens=8192, decode_tokens=128)
    assert t3 / t1 == pytest.approx(18 / 8)  # 2 settling + 1 untimed + 5 x 3 runs vs 2 + 1 + 5
    slow = point_seconds(one, latency, shape, 30, blocker_tokens=8192, decode_tokens=128)
    assert slow > t1  # fewer SMs, longer steps
    dec = PointSpec("decode", 32, 1024, repeats=5)
    assert point_seconds(dec, latency, shape, 100, blocker_tokens=8192, decode_tokens=256) > \
        point_seconds(dec, latency, shape, 100, blocker_tokens=8192, decode_tokens=128)


def test_engine_cost_holds_weights_kv_and_overhead():
    spec = model_spec("llama-3.1-70b", "int4-gptq")
    grid = GridSpec(sm_pcts=(100.0,), prefill_batches=(1,))
    shape = EngineKey("H100-SXM-80GB", "llama-3.1-70b", "int4-gptq", "bf16", 1).shape()  # type: ignore[arg-type]
    e = engine_cost(spec, 1, 100.0, "k", grid.points(), default_latency_model(), shape,
                    kv_cache_bytes=10 * GIB, blocker_tokens=2048, decode_tokens=128)
    assert e.memory_bytes == spec.weight_bytes(1) + 12 * GIB
    assert e.compile_group == "llama-3.1-70b@int4-gptq.kv-bf16/tp1"
    assert (e.start_s, e.compile_s) == start_seconds(80)
    assert start_seconds(80)[0] > start_seconds(32)[0]  # more layers: longer compile, capture


def test_shards_balance_the_estimated_time_and_keep_order():
    items = [("8b-bf16", 280.0), ("8b-fp8", 250.0), ("3b", 280.0), ("14b", 550.0),
             ("32b", 610.0), ("70b", 1010.0)]
    parts = shard(items, 3)
    assert sorted(x for p in parts for x in p) == sorted(n for n, _ in items)
    assert ("70b",) in parts  # the longest job alone: nothing joins it
    assert parts[1:] == (("3b", "32b"), ("8b-bf16", "8b-fp8", "14b"))
    order = [n for n, _ in items]
    assert all(list(p) == sorted(p, key=order.index) for p in parts)
    assert shard(items, 1) == (tuple(order),)
    with pytest.raises(ValueError):
        shard(items, 0)


@given(st.lists(st.floats(1, 1000), min_size=1, max_size=15), st.integers(1, 8))
def test_shard_makespan_is_within_the_greedy_bound(seconds, n):
    items = [(str(i), s) for i, s in enumerate(seconds)]
    loads = [sum(seconds[int(x)] for x in p) for p in shard(items, n)]
    # least-loaded-first never ends later than the average plus one job (Graham)
    assert max(loads) <= sum(seconds) / n + max(seconds) * (1 - 1 / n) + 1e-6


def test_an_engine_is_sized_by_what_it_held_when_it_started_before():
    from fineserve.profiles.measure.records import EngineLabel, EngineRecord
    from fineserve.profiles.measure.session import CONTEXT_BYTES, OVERHEAD_BYTES, measured_memory

    label = EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "int4-awq", "bf16", 1, 100.0)
    # 2026-11-26: the int4 engines reserved 21.4 GB in torch (planned ~12.6 GB)
    held = EngineRecord(label, 50.0, True, weight_bytes=16_110_920_192,
                        kv_cache_bytes=5_089_787_904, torch_reserved_bytes=21_493_710_848)
    failed = EngineRecord(label, 20.0, True, error="OOM")
    assert measured_memory([held, failed], 1) == max(
        21_493_710_848 + CONTEXT_BYTES, 16_110_920_192 + 5_089_787_904 + OVERHEAD_BYTES)
    assert measured_memory([failed], 1) is None
    assert measured_memory([held], 2) is None  # another TP: not this engine
    with_nvml = EngineRecord(label, 50.0, True, footprint_bytes=30 * GIB,
                             torch_reserved_bytes=20 * GIB)
    assert measured_memory([with_nvml], 1) == 30 * GIB
    gptq = EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "int4-gptq", "bf16", 1, 100.0)
    stale = EngineRecord(gptq, 50.0, True, torch_reserved_bytes=20 * GIB, engine_rev=1)
    assert measured_memory([stale], 1) is None  # the unquantized engine says nothing now


def test_six_engines_that_held_21_gib_each_no_longer_share_one_wave():
    planned = [cost(f"e{i}", 12.6) for i in range(6)]
    assert [len(w.engines) for w in plan_waves(planned, 72 * GIB)] == [5, 1]  # as planned
    held = [cost(f"e{i}", 21.4 + 1) for i in range(6)]
    waves = plan_waves(held, 72 * GIB)
    assert all(sum(e.memory_bytes for e in w.engines) <= 72 * GIB for w in waves)
    assert max(len(w.engines) for w in waves) == 3


def test_an_engine_started_before_is_estimated_by_its_recorded_starts():
    from fineserve.profiles.measure.records import EngineLabel, EngineRecord
    from fineserve.profiles.measure.session import PROCESS_S, SHUTDOWN_S, measured_starts

    label = EngineLabel("H100-SXM-80GB", "llama-3.1-70b", "int4-gptq", "bf16", 1, 50.0)
    # session 6: three cold starts and one on a warm compile cache
    records = [EngineRecord(label, s, True) for s in (74.5, 73.6, 32.6, 73.1)]
    records.append(EngineRecord(label, 1.0, True, error="not enough free device memory"))
    warm, cold_extra = measured_starts(records, 1)
    assert warm == pytest.approx(PROCESS_S + 32.6 + SHUTDOWN_S)
    assert cold_extra == pytest.approx(74.5 - 32.6)
    assert warm + cold_extra < sum(start_seconds(80))  # the layer-scaled guess: 202 s
    assert measured_starts(records, 2) is None and measured_starts([], 1) is None
