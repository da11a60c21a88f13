"""Pool sizing, demand statistics and the manager tick over a ledger."""

import pytest

from fineserve.runtime.kvslab.errors import KvSlabError
from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
from fineserve.runtime.kvslab.pool import GRANULE, ManagerConfig, PoolManager, pool_bytes
from fineserve.runtime.kvslab.stats import DemandStats

GIB = 1 << 30
MIB = 1 << 20


def test_pool_is_memory_minus_footprints_minus_headroom_in_granules():
    assert pool_bytes(80 * GIB, [17 * GIB, 9 * GIB], 2 * GIB) == 52 * GIB
    assert pool_bytes(80 * GIB, [GIB + 1], 0) % GRANULE == 0
    with pytest.raises(KvSlabError, match="no memory left"):
        pool_bytes(80 * GIB, [70 * GIB, 9 * GIB], 2 * GIB)


def test_demand_stats_track_mean_and_spread():
    s = DemandStats(tau_s=10.0)
    for i in range(2000):
        s.update(i * 0.1, 1000 if i % 2 else 3000)
    assert s.mean == pytest.approx(2000, rel=0.02)
    assert s.std == pytest.approx(1000, rel=0.05)
    c = DemandStats(tau_s=10.0)
    for i in range(100):
        c.update(float(i), 500)
    assert (c.mean, c.std) == (500.0, 0.0)


def test_manager_ticks_once_per_interval_and_moves_memory_to_demand(tmp_path):
    led = Ledger.create(str(tmp_path / "p.json"), 20 * 64 * MIB, alive=lambda pid, _: True)
    for eid, pid in (("busy", 1), ("idle", 2)):
        led.register(EngineRegistration(eid, pid, 128 * 1024, 64 * MIB, 2, 20), 0.0)
    led.publish("busy", 0.0, used_tokens=0, demand_tokens=10**6)
    mgr = PoolManager(led, ManagerConfig(tick_s=1.0))
    t = mgr.maybe_tick(5.0)
    assert t == {"busy": 18, "idle": 2}
    assert mgr.maybe_tick(5.5) is None  # within the interval: another caller's tick stands
    assert PoolManager(led, ManagerConfig(tick_s=1.0)).maybe_tick(5.9) is None
    assert led.snapshot().engine("busy").target_slabs == 18


def test_stale_engine_keeps_its_memory_out_of_the_policy(tmp_path):
    led = Ledger.create(str(tmp_path / "p.json"), 20 * 64 * MIB, alive=lambda pid, _: True)
    for eid, pid in (("busy", 1), ("hung", 2)):
        led.register(EngineRegistration(eid, pid, 128 * 1024, 64 * MIB, 2, 20), 0.0)
    led.set_targets({"hung": 8}, 0.0)
    assert led.acquire("hung", 8, 0.0) == 8
    led.publish("busy", 100.0, used_tokens=0, demand_tokens=10**6)
    t = PoolManager(led, ManagerConfig(tick_s=1.0, heartbeat_timeout_s=10.0)).maybe_tick(100.0)
    assert t == {"busy": 12}
    assert led.snapshot().engine("hung").stale
