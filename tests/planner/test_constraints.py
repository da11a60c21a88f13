"""Each ILP constraint family on 1-3 models and 1-2 GPUs: feasible and infeasible cases."""

from contextlib import contextmanager

import pytest

from fineserve.planner.builder import CpSatBuilder
from fineserve.planner.constraints import (
    add_coverage,
    add_engine_limit,
    add_gpu_use,
    add_headroom,
    add_memory,
    add_replica_floor,
    add_sm_share,
    add_symmetry,
    add_traffic,
    pin_all_placed,
)
from fineserve.planner.options import EngineOption
from fineserve.planner.schema import KVMode
from fineserve.planner.variables import PlacementVars, scale
from tests.planner.fakes import demand, instance

GIB = 2**30


def opt(model, sm=50, cap=10.0, weights=20 * GIB, kv=5 * GIB, kappa=0.5 * GIB, tp=1):
    return EngineOption(model, "H100-SXM-80GB", tp, sm, 64, cap, weights, 0, kv, kappa)


@contextmanager
def model_of(models, options, gpus=1, families=(), **settings):
    inst = instance([demand(n, rate=r) for n, r in models], gpus=gpus, **settings)
    b = CpSatBuilder(num_workers=1)
    d = scale(inst, {m: tuple(o) for m, o in options.items()})
    v = PlacementVars.create(b, d)
    for family in families:
        family(b, d, v)
    yield b, d, v


def solve(b) -> str:
    return b.solve(5).status


def test_memory_fits_and_overflows():
    options = {"a": [opt("a", weights=30 * GIB, kv=0)], "b": [opt("b", weights=30 * GIB, kv=0)]}
    with model_of([("a", 1), ("b", 1)], options, families=[add_memory],
                  kv_mode=KVMode.STATIC) as (b, d, v):
        b.add(v.y[0] == 1, "on")
        b.add(v.x["a", 0, 0] + v.x["b", 0, 0] == 2, "both")
        assert solve(b) == "OPTIMAL"  # 60 GiB <= 73 GiB usable
    options = {"a": [opt("a", weights=40 * GIB, kv=0)], "b": [opt("b", weights=40 * GIB, kv=0)]}
    with model_of([("a", 1), ("b", 1)], options, families=[add_memory],
                  kv_mode=KVMode.STATIC) as (b, d, v):
        b.add(v.x["a", 0, 0] + v.x["b", 0, 0] == 2, "both")
        assert solve(b) == "INFEASIBLE"


def test_pooled_memory_grows_with_traffic():
    options = {"a": [opt("a", weights=60 * GIB, cap=20, kappa=1 * GIB)]}
    with model_of([("a", 20)], options, families=[add_traffic, add_memory, add_coverage],
                  kv_mode=KVMode.POOLED, pool_burst_margin=0.0) as (b, d, v):
        b.add(v.p["a"] >= 10_000, "ten rps")  # 10 req/s x 1 GiB = 10 GiB KV: 70 <= 73.6
        assert solve(b) == "OPTIMAL"
    with model_of([("a", 20)], options, families=[add_traffic, add_memory, add_coverage],
                  kv_mode=KVMode.POOLED, pool_burst_margin=0.0) as (b, d, v):
        b.add(v.p["a"] >= 15_000, "fifteen rps")  # 75 GiB > 73.6 usable
        assert solve(b) == "INFEASIBLE"


def test_sm_shares_sum_to_at_most_100_unless_oversubscribed():
    options = {"a": [opt("a", sm=60, weights=GIB)], "b": [opt("b", sm=60, weights=GIB)]}
    for over, expected in ((1.0, "INFEASIBLE"), (1.2, "OPTIMAL")):
        with model_of([("a", 1), ("b", 1)], options, families=[add_sm_share],
                      sm_oversubscription=over) as (b, d, v):
            b.add(v.x["a", 0, 0] + v.x["b", 0, 0] == 2, "both")
            assert solve(b) == expected


def test_engine_limit_and_one_engine_per_model_per_gpu():
    options = {"a": [opt("a", sm=10, weights=GIB), opt("a", sm=20, weights=GIB)],
               "b": [opt("b", sm=10, weights=GIB)]}
    with model_of([("a", 1), ("b", 1)], options, families=[add_engine_limit]) as (b, d, v):
        b.add(v.x["a", 0, 0] + v.x["a", 1, 0] == 2, "two of a")
        assert solve(b) == "INFEASIBLE"
    with model_of([("a", 1), ("b", 1)], options, families=[add_engine_limit],
                  max_engines_per_gpu=1) as (b, d, v):
        b.add(v.x["a", 0, 0] + v.x["b", 0, 0] == 2, "a and b")
        assert solve(b) == "INFEASIBLE"
    with model_of([("a", 1), ("b", 1)], options, families=[add_engine_limit]) as (b, d, v):
        b.add(v.x["a", 0, 0] + v.x["b", 0, 0] == 2, "a and b")
        assert solve(b) == "OPTIMAL"


def test_coverage_needs_capacity_times_min_headroom():
    options = {"a": [opt("a", cap=10)]}
    for rate, expected in ((9.0, "OPTIMAL"), (11.0, "INFEASIBLE")):
        with model_of([("a", rate)], options, families=[add_coverage, add_gpu_use,
                                                          add_replica_floor]) as (b, d, v):
            pin_all_placed(b, d, v)
            assert solve(b) == expected


def test_headroom_is_capacity_over_rate():
    options = {"a": [opt("a", cap=10)], "b": [opt("b", cap=30)]}
    with model_of([("a", 5), ("b", 10)], options, gpus=1,
                  families=[add_traffic, add_headroom, add_coverage]) as (b, d, v):
        pin_all_placed(b, d, v)
        b.minimize(v.U)
        assert solve(b) == "OPTIMAL"
        assert b.value(v.U) == 500_000  # busiest engine 5/10: headroom min(10/5, 30/10) = 2


def test_headroom_counts_only_routed_capacity():
    """Two engines of 10 req/s for 10 req/s of traffic, but the second one's GPU has KV room
    for under 1 req/s: the split is at best 9 + 1, so the headroom is 10/9, not 20/10."""
    options = {"a": [opt("a", cap=10, kappa=1.0 * GIB)]}
    with model_of([("a", 10)], options, gpus=2,
                  families=[add_traffic, add_headroom, add_gpu_use]) as (b, d, v):
        pin_all_placed(b, d, v)
        b.add(v.x["a", 0, 0] + v.x["a", 0, 1] == 2, "both")
        # 1.25 GiB of KV per req/s (with the burst margin); ~1.24 GiB free on GPU 1
        b.add(d.kappa["a", 0] * v.f["a", 0, 1] <= 1_300_000, "kv room on gpu1 (KiB)")
        b.minimize(v.U)
        assert solve(b) == "OPTIMAL"
        assert b.value(v.f["a", 0, 1]) <= 1100
        assert b.value(v.U) >= 890_000  # busiest engine carries ~9 of its 10 req/s


def test_tp_group_uses_both_gpus():
    options = {"a": [opt("a", tp=2, sm=50)]}
    with model_of([("a", 1)], options, gpus=2, families=[add_gpu_use, add_sm_share]) as (b, d, v):
        b.add(v.x["a", 0, 0] == 1, "placed")
        b.minimize(v.y[0] + v.y[1])
        assert solve(b) == "OPTIMAL" and b.value(v.y[0]) == b.value(v.y[1]) == 1


def test_symmetry_uses_gpus_in_order():
    options = {"a": [opt("a")]}
    with model_of([("a", 1)], options, gpus=2, families=[add_gpu_use, add_symmetry]) as (b, d, v):
        b.add(v.x["a", 0, 1] == 1, "second gpu only")
        b.add(v.y[0] == 0, "first unused")
        assert solve(b) == "INFEASIBLE"


@pytest.mark.parametrize("gpus", [1, 2])
def test_replica_floor_forces_an_engine_for_placed_traffic(gpus):
    options = {"a": [opt("a")]}
    with model_of([("a", 1)], options, gpus=gpus, families=[add_replica_floor]) as (b, d, v):
        b.add(v.p["a"] >= 1, "some traffic")
        for x in v.x.values():
            b.add(x == 0, "no engine")
        assert solve(b) == "INFEASIBLE"
