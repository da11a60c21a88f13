"""Ledger: leases never exceed the pool, never leak, are conserved; dead engines are reaped."""

import os
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fineserve.runtime.kvslab.errors import FloorsExceedPool, KvSlabError
from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger, pid_alive
from fineserve.runtime.kvslab.pool import ManagerConfig, PoolManager

MIB = 1 << 20


def reg(eid, pid, *, slab=64 * MIB, floor=1, cap=50, bpt=128 * 1024):
    return EngineRegistration(eid, pid, bpt, slab, floor, cap)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "pool.json")


def test_create_refuses_to_clobber_and_open_needs_a_file(path):
    Ledger.create(path, 10 * 64 * MIB)
    with pytest.raises(KvSlabError, match="already exists"):
        Ledger.create(path, 10 * 64 * MIB)
    with pytest.raises(KvSlabError, match="no KV pool ledger"):
        Ledger(path + ".missing")


def test_grants_stop_at_other_engines_targets_and_at_max(path):
    alive = {1, 2}
    led = Ledger.create(path, 10 * 64 * MIB, alive=lambda pid, _: pid in alive)
    led.register(reg("a", 1, floor=3), 0.0)
    led.register(reg("b", 2, floor=2, cap=6), 0.0)
    assert led.acquire("b", 100, 0.0) == 6  # capped at max; borrows 4 untargeted slabs
    assert led.acquire("a", 10, 0.0) == 4  # its floor (kept free for it) + the last free slab
    assert led.acquire("a", 1, 0.0) == 0
    led.set_targets({"a": 7, "b": 3}, 1.0)
    assert led.acquire("a", 5, 1.0) == 0  # b still holds 6 > target 3: a waits for the drain
    led.release("b", 3, 2.0)
    assert led.acquire("a", 5, 2.0) == 3
    st_ = led.snapshot()
    st_.check_integrity()
    assert (st_.engine("a").held_slabs, st_.engine("b").held_slabs, st_.free_bytes) == (7, 3, 0)


def test_floors_beyond_the_pool_are_refused_at_registration(path):
    led = Ledger.create(path, 4 * 64 * MIB, alive=lambda pid, _: True)
    led.register(reg("a", 1, floor=3), 0.0)
    with pytest.raises(FloorsExceedPool, match="does not fit"):
        led.register(reg("b", 2, floor=2), 0.0)


def test_a_dead_engine_is_reaped_and_a_silent_one_goes_stale(path):
    alive = {1, 2}
    led = Ledger.create(path, 10 * 64 * MIB, alive=lambda pid, _: pid in alive)
    led.register(reg("a", 1), 0.0)
    led.register(reg("b", 2), 0.0)
    assert led.acquire("a", 4, 0.0) == 4 and led.acquire("b", 2, 0.0) == 2
    alive.discard(1)
    assert led.reap(5.0, heartbeat_timeout_s=10.0) == ("a",)
    assert led.snapshot().held_bytes == 2 * 64 * MIB
    assert led.reap(20.0, heartbeat_timeout_s=10.0) == ()  # b silent but alive: stale
    b = led.snapshot().engine("b")
    assert b.stale and b.held_slabs == 2 and led.acquire("b", 1, 20.0) == 0
    led.publish("b", 21.0, used_tokens=0, demand_tokens=0)  # it speaks again
    assert led.acquire("b", 1, 21.0) == 1
    with pytest.raises(KvSlabError, match="not registered"):
        led.acquire("a", 1, 22.0)


def test_pid_alive_sees_reuse_and_own_process():
    from fineserve.runtime.kvslab.ledger import process_start_time
    me = os.getpid()
    assert pid_alive(me, process_start_time(me))
    assert not pid_alive(me, process_start_time(me) + 1)  # same pid, other process


class LedgerMachine(RuleBasedStateMachine):
    """Random register/grow/shrink/retarget/death; a shadow model must match the ledger."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.alive: set[int] = set()
        self.pool = 40 * 32 * MIB
        self.led = Ledger.create(os.path.join(self.dir, "p.json"), self.pool,
                                 alive=lambda pid, _: pid in self.alive)
        self.mgr = PoolManager(self.led, ManagerConfig(tick_s=1.0, heartbeat_timeout_s=30.0))
        self.now = 0.0
        self.held: dict[str, int] = {}
        self.pid: dict[str, int] = {}
        self.slab: dict[str, int] = {}
        self.next_pid = 100

    def teardown(self):
        self.alive.clear()  # every engine dies: all leases come back
        self.led.reap(self.now, 30.0)
        assert self.led.snapshot().free_bytes == self.pool
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        os.rmdir(self.dir)

    @rule(eid=st.sampled_from("abcde"), slab=st.sampled_from([32, 64, 96]),
          floor=st.integers(0, 8), extra=st.integers(0, 30))
    def register(self, eid, slab, floor, extra):
        if eid in self.held:
            with pytest.raises(KvSlabError, match="already registered"):
                self.led.register(reg(eid, self.pid[eid]), self.now)
            return
        pid = self.next_pid = self.next_pid + 1
        self.alive.add(pid)
        floors = sum(r.floor_slabs * r.slab_bytes for r in self.led.snapshot().engines)
        r = reg(eid, pid, slab=slab * MIB, floor=floor, cap=floor + extra)
        if floors + floor * slab * MIB > self.pool:
            with pytest.raises(FloorsExceedPool):
                self.led.register(r, self.now)
            return
        self.led.register(r, self.now)
        self.held[eid], self.pid[eid], self.slab[eid] = 0, pid, slab * MIB

    @precondition(lambda self: self.held)
    @rule(data=st.data(), want=st.integers(0, 20))
    def grow(self, data, want):
        eid = data.draw(st.sampled_from(sorted(self.held)))
        k = self.led.acquire(eid, want, self.now)
        assert 0 <= k <= want
        self.held[eid] += k

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def shrink(self, data):
        eid = data.draw(st.sampled_from(sorted(self.held)))
        n = data.draw(st.integers(0, self.held[eid]))
        assert self.led.release(eid, n, self.now) == self.held[eid] - n
        self.held[eid] -= n

    @precondition(lambda self: self.held)
    @rule(data=st.data(), demand=st.integers(0, 200000), std=st.floats(0, 5e4))
    def publish(self, data, demand, std):
        eid = data.draw(st.sampled_from(sorted(self.held)))
        self.led.publish(eid, self.now, used_tokens=0, demand_tokens=demand,
                         demand_mean_tokens=demand, demand_std_tokens=std)

    @rule(dt=st.floats(0.1, 3.0))
    def tick(self, dt):
        self.now += dt
        self.mgr.maybe_tick(self.now)
        for e in self.led.snapshot().engines:  # a well-behaved engine drains to its target
            if e.held_slabs > e.target_slabs:
                self.led.release(e.engine_id, e.held_slabs - e.target_slabs, self.now)
                self.held[e.engine_id] = e.target_slabs

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def die(self, data):
        eid = data.draw(st.sampled_from(sorted(self.held)))
        self.alive.discard(self.pid[eid])
        assert eid in self.led.reap(self.now, 30.0)
        del self.held[eid], self.pid[eid], self.slab[eid]

    @invariant()
    def ledger_matches_model(self):
        s = self.led.snapshot()
        s.check_integrity()
        assert {e.engine_id: e.held_slabs for e in s.engines} == self.held
        assert s.held_bytes == sum(self.held[e] * self.slab[e] for e in self.held) <= self.pool
        assert s.free_bytes == self.pool - s.held_bytes  # nothing leaks


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                           deadline=None)
TestLedgerMachine = LedgerMachine.TestCase


def test_all_leases_come_back_when_every_engine_dies(path):
    alive = {1, 2, 3}
    led = Ledger.create(path, 30 * 64 * MIB, alive=lambda pid, _: pid in alive)
    for i in (1, 2, 3):
        led.register(reg(f"e{i}", i), 0.0)
        led.acquire(f"e{i}", 7, 0.0)
    alive.clear()
    assert sorted(led.reap(1.0, 10.0)) == ["e1", "e2", "e3"]
    assert led.snapshot().free_bytes == 30 * 64 * MIB and led.snapshot().engines == ()
