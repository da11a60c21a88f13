"""The simulator's pool (fineserve/sim/kvpool.py) grows under the ledger's grant rule: an
engine borrows only memory no other engine is targeted for."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape
from fineserve.runtime.kvslab.policy import KvTargets
from fineserve.sim.engine import EngineSim
from fineserve.sim.kvpool import PoolParams, SlabPools, slab_geometry
from tests.planner.fakes import ConstLatency

MIB = 2**20


def _engine(name: str) -> EngineSim:
    shape = EngineShape(gpu_spec("H100-SXM-80GB"), model_spec("llama-3.1-8b", "bf16", "bf16"))
    return EngineSim(name, shape, 50, 256, 0.0, ConstLatency(0.01, 0.01))


def _pools(slabs: int, floors: tuple[int, int] = (1, 1)) -> tuple[SlabPools, int, int]:
    a, b = _engine("a"), _engine("b")
    _, slab, tps = slab_geometry(a)
    pools = SlabPools({0: slabs * slab}, PoolParams())
    pools.attach(a, (0,), floors[0] * slab)
    pools.attach(b, (0,), floors[1] * slab)
    return pools, slab, tps


def test_an_engine_does_not_take_memory_targeted_to_another():
    pools, _, tps = _pools(10)
    a, b = pools.leases["a"], pools.leases["b"]
    pools.previous[0] = KvTargets({"a": 2, "b": 6}, {})  # b is targeted 6, holds 1
    pools.grow_now(a.eng, 20 * tps)  # a wants 20 slabs' worth now
    assert (a.held, b.held) == (4, 1)  # 10 - 6 claimed by b: a may hold 4, not 9
    pools.grow_now(b.eng, 5 * tps)
    assert b.held == 6 and pools.free(0) == 0
    pools.check_integrity()


def test_before_any_tick_free_memory_is_anyones():
    pools, _, tps = _pools(10)
    a = pools.leases["a"]
    assert pools.previous[0] is None
    pools.grow_now(a.eng, 20 * tps)
    assert a.held == 9  # everything but b's floor


@settings(max_examples=60, deadline=None)
@given(n=st.integers(4, 40), ta=st.integers(0, 40), tb=st.integers(0, 40),
       wants=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=12))
def test_grows_never_overdraw_the_pool_nor_enter_anothers_target(n, ta, tb, wants):
    pools, _, tps = _pools(n)
    a, b = pools.leases["a"], pools.leases["b"]
    ta, tb = max(1, min(ta, n - 1)), max(1, min(tb, n - 1))
    pools.previous[0] = KvTargets({"a": ta, "b": tb}, {})
    for is_a, k in wants:
        me, other = (a, b) if is_a else (b, a)
        before = me.held
        pools.grow_now(me.eng, k * tps)
        target_other = tb if is_a else ta
        grew = me.held - before
        assert grew == 0 or me.reserved + max(other.reserved, target_other) <= n
        assert pools.free(0) >= 0
    pools.check_integrity()


def test_the_room_is_zero_for_a_full_pool():
    pools, _, tps = _pools(2)
    assert pools.room(pools.leases["a"]) == pools.room(pools.leases["b"]) == 0
    assert pools.grow_now(pools.leases["a"].eng, 3 * tps) == 0.0
    assert pools.leases["a"].held == 1 and pools.free(0) == 0
