"""SlabEngine + SlabMap under random load: vLLM never sees unmapped blocks, nothing in use or
in flight is unmapped, the lease always equals the slabs held, all memory comes back.

The block pool, mapper and lease are fakes local to this test (the real ones need a GPU)."""

from collections import OrderedDict, deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fineserve.runtime.kvslab.engine import EngineConfig, MapError, SlabEngine
from fineserve.runtime.kvslab.errors import KvSlabError
from fineserve.runtime.kvslab.layout import KvLayout
from fineserve.runtime.kvslab.slabmap import SlabMap, SlabState

MAPPED_STATES = {SlabState.READY, SlabState.ONLINE, SlabState.DRAINING, SlabState.QUIESCING,
                 SlabState.UNMAPPING}


class FakePool:
    """vLLM's BlockPool reduced to ref counts and an ordered free queue."""

    def __init__(self, num_blocks):
        self.ref = [0] * num_blocks
        self.queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.queue.pop(0)  # the null block
        self.ref[0] = 1
        self.engine = None
        self.sorts = 0

    def num_free(self):
        return len(self.queue)

    def unpark(self, blocks):
        for b in blocks:
            if self.ref[b] == 0:
                assert b not in self.queue
                self.queue[b] = None

    def take_free(self, ids):
        out = [b for b in ids if b in self.queue]
        for b in out:
            del self.queue[b]
        return out

    def sort_free(self, below):
        assert all(b < below for b in self.queue), "a queued block at or above the bound"
        self.sorts += 1
        self.queue = OrderedDict((b, None) for b in sorted(self.queue))

    def used_per_slab(self, bps, n):
        return [sum(self.ref[b] > 0 for b in range(s * bps, (s + 1) * bps)) for s in range(n)]

    def alloc(self, n):
        if n > len(self.queue):
            return None
        out = [self.queue.popitem(last=False)[0] for _ in range(n)]
        for b in out:
            self.ref[b] += 1
        return out

    def free(self, ids):
        for b in ids:
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.queue[b] = None
        self.engine.on_blocks_freed(ids)


class FakeMapper:
    def __init__(self, layout, pool, inflight):
        self.layout, self.pool, self.inflight = layout, pool, inflight
        self.mapped: set[int] = {0}
        self.memory: dict[int, int] = {}  # block -> content (0 = zeroed)
        self.fail = False

    def map_slab(self, s):
        assert s not in self.mapped
        if self.fail:
            raise MapError("out of memory")
        self.mapped.add(s)
        for b in self.layout.blocks_of_slab(s):
            self.memory[b] = 0

    def unmap_slab(self, s):
        blocks = set(self.layout.blocks_of_slab(s))
        assert not any(self.pool.ref[b] for b in blocks), "unmapping blocks in use"
        assert not any(blocks & step for step in self.inflight), "unmapping under a running step"
        self.mapped.remove(s)
        for b in blocks:
            self.memory.pop(b, None)


class FakeLease:
    def __init__(self, cap):
        self.held, self.cap, self.target = 1, cap, 1

    def acquire(self, n):
        k = min(n, self.cap - self.held)
        self.held += k
        return k

    def release(self, n):
        assert 0 < n <= self.held
        self.held -= n

    def due(self):
        return True

    def publish(self, used, want):
        return self.target


class EngineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.layout = KvLayout(num_layers=2, page_bytes=512 * 1024, planes=2, num_blocks=48,
                               block_size=16)  # 8 blocks per slab, 6 slabs
        self.now = 0.0  # the engine's clock: back-offs after a refusal or a map failure end
        self.pool = FakePool(48)
        self.inflight: deque[set[int]] = deque()
        self.mapper = FakeMapper(self.layout, self.pool, self.inflight)
        self.lease = FakeLease(cap=5)
        self.engine = SlabEngine(self.layout, self.mapper, self.pool, self.lease,
                                 EngineConfig(grow_ahead_blocks=4), demand=lambda: (0, 0),
                                 clock=lambda: self.now)
        self.pool.engine = self.engine
        self.pool.take_free([b for b in range(8, 48)])  # plugin start: park offline slabs
        self.requests: list[list[int]] = []
        self.next_content = 1

    @rule(n=st.integers(1, 12))
    def schedule(self, n):
        e = self.engine
        e.wake.clear()
        e.service()
        assert e.wake.is_set() == e._should_grow()  # a grow is due: the scheduler wakes it
        blocks = self.pool.alloc(n)
        if blocks is None and e.grow_sync():
            blocks = self.pool.alloc(n)
        if blocks is not None:
            for b in blocks:
                assert self.layout.slab_of_block(b) in self.mapper.mapped
                self.mapper.memory[b] = self.next_content
                self.next_content += 1
            self.requests.append(blocks)
        e.on_step_scheduled()
        self.inflight.append({b for r in self.requests for b in r})

    @precondition(lambda self: self.inflight)
    @rule()
    def finish_step(self):
        self.inflight.popleft()
        self.engine.on_step_finished()

    @precondition(lambda self: self.requests)
    @rule(i=st.integers(0, 100))
    def finish_request(self, i):
        self.pool.free(self.requests.pop(i % len(self.requests)))

    @rule()
    def preempt_a_request_pinning_a_drain(self):
        """What ``plugin._pinning_last`` makes vLLM do when a step does not fit: preempt (free)
        a request holding blocks of a DRAINING slab."""
        with self.engine.lock:
            pinned = self.engine.draining_blocks()
        for i, r in enumerate(self.requests):
            if not pinned.isdisjoint(r):
                self.pool.free(self.requests.pop(i))
                return

    @rule(t=st.integers(1, 6))
    def set_target(self, t):
        self.lease.target = t

    @rule()
    def background(self):
        self.engine.background_once()

    @rule()
    def idle_background_round_is_a_no_op(self):
        """The background thread polls slowly while ``busy()`` is false: a round then must
        change nothing, or the slow poll would delay it (the free queue may be re-sorted: the
        scheduler's own ``service`` does that before it allocates). A new target is read by
        that round (every ``idle_poll_s``, the lease's publish period)."""
        e = self.engine
        if e.busy() or e.target != self.lease.target:
            return
        before = ([e.slabs.state(s) for s in range(6)], self.lease.held, sorted(self.pool.queue))
        e.background_once()
        assert ([e.slabs.state(s) for s in range(6)], self.lease.held,
                sorted(self.pool.queue)) == before

    @rule()
    def time_passes(self):
        self.now += 1.0

    @rule(fail=st.booleans())
    def driver_memory(self, fail):
        self.mapper.fail = fail

    @invariant()
    def consistent(self):
        sm = self.engine.slabs
        sm.check_integrity()
        assert self.lease.held == sm.held
        assert self.mapper.mapped == {s for s in range(6) if sm.state(s) in MAPPED_STATES}
        for b in self.pool.queue:  # vLLM can only hand out blocks of ONLINE slabs
            assert sm.state(self.layout.slab_of_block(b)) is SlabState.ONLINE
        for r in self.requests:
            for b in r:
                assert sm.state(self.layout.slab_of_block(b)) in (SlabState.ONLINE,
                                                                   SlabState.DRAINING)
        assert self.engine.used_blocks() == sum(len(r) for r in self.requests)
        with self.engine.lock:
            assert self.engine.draining_blocks() == {
                b for b in range(48) if sm.state(self.layout.slab_of_block(b))
                is SlabState.DRAINING}
        m = self.engine.metrics()
        assert 0.0 <= m.usage <= 1.0 and m.usage == self.engine.usage()
        assert m.online_blocks == sm.online * 8

    def teardown(self):
        # drain everything: all steps finish, all requests end, target 1: back to slab 0
        while self.inflight:
            self.finish_step()
        while self.requests:
            self.pool.free(self.requests.pop())
        self.mapper.fail = False
        self.lease.target = 1
        for _ in range(4):
            self.engine.background_once()
        assert self.engine.slabs.held == 1 and self.mapper.mapped == {0}
        assert self.pool.num_free() == 7  # slab 0 minus the null block


EngineMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50,
                                           deadline=None)
TestEngineMachine = EngineMachine.TestCase


def _engine_with(slabs_online: int, target: int):
    """An engine of 6 slabs x 8 blocks with ``slabs_online`` mapped and a lease target."""
    m = EngineMachine()
    m.lease.target = target
    for _ in range(slabs_online - 1):
        m.pool.alloc(m.pool.num_free())  # fill what is online: the next grow maps one more
        m.engine.background_once()
        m.engine.service()
        m.pool.free([b for b in range(48) if m.pool.ref[b] and b != 0])
    return m


def test_after_a_burst_new_requests_fill_the_lowest_slabs_so_the_rest_drains():
    """The H100 run of 2026-11-26 (s4): a flood ended, new requests took blocks scattered over
    the 23 slabs it had used, and the engine could not drain to its target of 11 while they
    ran. Here: a burst over 5 slabs ends in the order that leaves the highest blocks at the
    head of the free queue; a request of 10 blocks must still land in slabs 0-1."""
    m = _engine_with(slabs_online=5, target=5)
    assert m.engine.slabs.held == 5 and m.pool.num_free() == 39
    burst = [m.pool.alloc(8) for _ in range(4)] + [m.pool.alloc(7)]
    for r in sorted(burst, key=max, reverse=True):  # highest blocks freed first: queue head
        m.pool.free(r)
    m.engine.service()  # the scheduler thread, before the next schedule()
    m.requests.append(m.pool.alloc(10))
    assert {m.layout.slab_of_block(b) for b in m.requests[0]} == {0, 1}
    m.lease.target = 2
    for _ in range(3):
        m.engine.service()
        m.engine.on_step_scheduled()
        m.engine.on_step_finished()
        m.engine.background_once()
    assert m.engine.slabs.held == 2 and m.lease.held == 2


def test_the_free_queue_is_sorted_only_when_a_slab_of_blocks_came_back():
    m = _engine_with(slabs_online=3, target=3)
    m.engine.service()  # the fill-and-free of the set-up came back: sorted once
    sorts = m.pool.sorts
    assert sorts >= 1
    r = m.pool.alloc(6)
    m.engine.service()
    m.pool.free(r)
    m.engine.service()  # 6 blocks back: less than a slab (8)
    assert m.pool.sorts == sorts
    r = m.pool.alloc(20)
    m.engine.service()
    m.pool.free(r)
    m.engine.service()
    assert m.pool.sorts == sorts + 1
    assert list(m.pool.queue) == sorted(m.pool.queue)


def test_slab_map_transitions_with_exact_ids():
    sm = SlabMap(num_slabs=4, blocks_per_slab=2)
    assert sm.begin_map() == 1
    sm.map_done(1, ok=True)
    assert sm.attach_ready() == [1] and sm.online == 2
    sm2 = SlabMap(num_slabs=4, blocks_per_slab=2)
    for _ in range(3):
        s = sm2.begin_map()
        sm2.map_done(s, ok=True)
    sm2.attach_ready()
    assert sm2.begin_drain([1, 2, 0, 0]) == 3  # fewest used, highest index
    sm2.on_step_scheduled()
    sm2.park(6)
    assert sm2.drained() == []
    sm2.park(7)
    assert sm2.drained() == [3] and sm2.quiesced() == []  # one step still in flight
    sm2.on_step_finished()
    assert sm2.quiesced() == [3]
    sm2.unmap_done(3)
    assert sm2.state(3) is SlabState.OFFLINE and sm2.held == 3
    sm2.check_integrity()


def test_slab_map_rejects_wrong_transitions():
    sm = SlabMap(num_slabs=2, blocks_per_slab=2)
    with pytest.raises(KvSlabError, match="expected MAPPING"):
        sm.map_done(1, ok=True)
    with pytest.raises(KvSlabError, match="never scheduled"):
        sm.on_step_finished()
    with pytest.raises(KvSlabError, match="expected DRAINING"):
        sm.park(2)


def test_used_blocks_count_running_blocks_of_a_draining_slab():
    m = EngineMachine()
    m.lease.target = 3
    for _ in range(3):
        m.engine.background_once()
        m.pool.alloc(m.pool.num_free())  # fill what is online: the next grow maps one more
    m.engine.background_once()
    held = m.engine.slabs.held
    running = m.pool.alloc(m.pool.num_free())
    assert held >= 3 and running is not None
    in_use = sum(r > 0 for r in m.pool.ref) - 1  # not the null block
    m.lease.target = 1  # every slab but slab 0 starts draining; their blocks are in use
    m.engine.background_once()
    assert m.engine.slabs.slabs_in(SlabState.DRAINING)
    assert m.engine.used_blocks() == in_use


def test_freed_blocks_are_looked_at_only_while_a_slab_drains():
    m = _engine_with(slabs_online=3, target=3)
    e, seen = m.engine, []
    should_park = e.slabs.should_park
    e.slabs.should_park = lambda b: seen.append(b) or should_park(b)  # per-block work
    m.pool.free(m.pool.alloc(4))
    assert seen == [] and not e.slabs.draining
    full = m.pool.alloc(m.pool.num_free())
    m.lease.target = 2
    e.background_once()  # a slab starts draining; its blocks are in use
    assert e.slabs.draining and e.busy()
    m.pool.free(full)
    assert sorted(seen) == sorted(full)
    e.service()
    assert not e.slabs.draining  # its blocks were parked as they came back: drained


def test_an_idle_engine_is_not_busy_and_wakes_when_free_blocks_run_low():
    m = _engine_with(slabs_online=2, target=2)
    e = m.engine
    e.background_once()
    assert not e.busy()  # nothing maps or drains, enough free blocks online
    e.wake.clear()
    m.requests.append(m.pool.alloc(m.pool.num_free() - 2))  # below the grow-ahead mark (4)
    e.service()  # the scheduler thread, before schedule()
    assert e.wake.is_set() and e.busy()


def test_a_refused_grow_is_retried_after_a_pause_not_at_every_wake_up():
    m = EngineMachine()
    now = [0.0]
    m.engine.clock = lambda: now[0]
    m.lease.cap = 1  # the pool is full: only slab 0
    asks = []
    acquire = m.lease.acquire
    m.lease.acquire = lambda n: asks.append(n) or acquire(n)
    m.requests.append(m.pool.alloc(m.pool.num_free() - 2))  # below the grow-ahead mark
    m.engine.background_once()
    assert asks == [1] and m.engine.slabs.held == 1
    m.engine.wake.clear()
    m.engine.service()  # the scheduler thread: no wake-up while the refusal is fresh
    m.engine.background_once()
    assert asks == [1] and not m.engine.busy() and not m.engine.wake.is_set()
    m.lease.cap = 5
    now[0] = 0.05  # retry_after_refusal_s later
    assert m.engine.busy()
    m.engine.background_once()
    assert asks == [1, 1] and m.engine.slabs.held == 2


def test_preempting_the_requests_that_pin_a_drain_returns_the_slab():
    """plugin._pinning_last puts the requests holding ``draining_blocks`` where vLLM preempts;
    here: the drain waits on one request while others run, and freeing that one (vLLM's
    preemption frees its blocks) lets the slab unmap and go back to the pool."""
    m = _engine_with(slabs_online=3, target=3)
    m.lease.cap = 3  # the pool: no slab to borrow beyond these three
    m.engine.service()
    full = m.pool.alloc(8 + 7)  # slabs 0 and 1
    tail = m.pool.alloc(3)  # slab 2: the emptiest, drained first
    m.lease.target = 2
    m.engine.background_once()  # reads the target, starts the drain
    with m.engine.lock:
        assert m.engine.slabs.draining
        pinned = m.engine.draining_blocks()
        assert m.engine.draining_slabs() == (2,) and pinned == set(range(16, 24))
        assert not pinned.isdisjoint(tail) and pinned.isdisjoint(full)
    for _ in range(3):  # the pinning request runs on: the drain cannot finish
        m.engine.service()
        m.engine.on_step_scheduled()
        m.engine.on_step_finished()
        m.engine.background_once()
    assert m.engine.slabs.held == 3 and m.engine.metrics().shrinks == 0
    m.pool.free(tail)  # preempted
    for _ in range(3):
        m.engine.service()
        m.engine.on_step_scheduled()
        m.engine.on_step_finished()
        m.engine.background_once()
    # the slab unmapped and went back (the fake lease lets the engine borrow it again)
    assert m.engine.metrics().shrinks >= 1 and m.lease.held == m.engine.slabs.held
