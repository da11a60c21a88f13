"""Hypothesis state machine: random submit / poll / first token / finish / cancel / engine
state on 1-3 engines (sharing a GpuArbiter when more than one), checked against a model of
every request's lifecycle after each step.

Invariants: in-flight never exceeds the limit at a dispatch (nor the GPU budget), queues stay
within max_queue, every request ends exactly once (dispatched then finished/cancelled,
rejected, or expired), dispatch order is FIFO within a priority, counters match, the limit
stays in [min_limit, max_limit], and nothing is left behind once every request has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fineserve.scheduler import (
    Decision,
    EngineScheduler,
    EngineSnapshot,
    GpuArbiter,
    RequestInfo,
    SchedulerConfig,
    SloTargets,
    Verdict,
)


@dataclass
class Tracked:
    engine: int
    priority: int
    seq: int
    late: bool = False
    state: str = "new"  # queued | in_flight | ended


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        policy=st.sampled_from(["fcfs", "deadline", "adaptive"]),
        late=st.sampled_from(["reject", "deprioritise"]),
        limits=st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(0, 4)),
        max_queue=st.integers(0, 6),
        engines=st.integers(1, 3),
        budget=st.one_of(st.none(), st.integers(1, 6)),
        hint=st.sampled_from([0.0, 0.001]),
        use_arbiter_poll=st.booleans(),
    )
    def setup(self, policy, late, limits, max_queue, engines, budget, hint, use_arbiter_poll):
        lo, extra_init, extra_max = limits
        self.cfg = SchedulerConfig(
            policy=policy,
            late=late,
            min_limit=lo,
            initial_limit=lo + extra_init,
            max_limit=lo + extra_init + extra_max,
            max_queue=max_queue,
            est_prefill_s_per_token=hint,
        )
        self.arbiter = GpuArbiter("0", budget=budget) if engines > 1 else None
        self.scheds = [
            EngineScheduler(
                f"e{i}",
                SloTargets(0.5, 0.05),
                self.cfg,
                arbiter=self.arbiter,
                priority=i % 2,
            )
            for i in range(engines)
        ]
        self.use_arbiter_poll = use_arbiter_poll and self.arbiter is not None
        self.now = 0.0
        self.seq = 0
        self.reqs: dict[str, Tracked] = {}
        self.counts = [
            dict.fromkeys(("admitted", "rejected", "expired", "cancelled", "finished"), 0)
            for _ in range(engines)
        ]

    # -- helpers --------------------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        return sorted(rid for rid, t in self.reqs.items() if t.state == state)

    def key(self, rid: str) -> tuple[int, int, int]:
        t = self.reqs[rid]
        return (int(t.late), -t.priority, t.seq)

    def check_overtaking(self, rid: str) -> None:
        """``rid`` was just dispatched: nothing queued on its engine may come before it."""
        t = self.reqs[rid]
        for other in self.ids("queued"):
            if other != rid and self.reqs[other].engine == t.engine:
                assert self.key(other) > self.key(rid), f"{rid} overtook {other}"

    def dispatch(self, rid: str) -> None:
        t = self.reqs[rid]
        assert t.state == "queued", f"{rid} dispatched from state {t.state}"
        t.state = "in_flight"
        self.counts[t.engine]["admitted"] += 1
        sched = self.scheds[t.engine]
        assert sched.stats.in_flight <= sched.stats.limit

    def expire(self, rid: str, decision: Decision) -> None:
        t = self.reqs[rid]
        assert t.state == "queued", f"{rid} expired from state {t.state}"
        assert decision.verdict is Verdict.REJECT and decision.retry_after_s > 0
        t.state = "ended"
        self.counts[t.engine]["expired"] += 1

    # -- rules ----------------------------------------------------------------------------

    @rule(
        engine=st.integers(0, 2),
        prompt=st.integers(1, 2000),
        priority=st.integers(0, 2),
        age=st.sampled_from([0.0, 0.0, 0.3, 1.0]),
    )
    def submit(self, engine, prompt, priority, age):
        engine %= len(self.scheds)
        rid = f"r{self.seq}"
        self.reqs[rid] = t = Tracked(engine, priority, self.seq)
        self.seq += 1
        req = RequestInfo(rid, "m", prompt, 32, self.now - age, priority)
        d = self.scheds[engine].submit(req, self.now)
        t.late = d.reason.startswith("late")
        if d.verdict is Verdict.ADMIT:
            t.state = "queued"  # for the overtaking check
            self.check_overtaking(rid)
            self.dispatch(rid)
        elif d.verdict is Verdict.QUEUE:
            t.state = "queued"
        else:
            assert d.retry_after_s is not None and d.retry_after_s > 0
            t.state = "ended"
            self.counts[engine]["rejected"] += 1

    @rule(dt=st.sampled_from([0.0, 0.01, 0.1, 0.4, 1.0]), engine=st.integers(0, 2))
    def poll(self, dt, engine):
        self.now += dt
        if self.use_arbiter_poll:
            res = self.arbiter.poll(self.now)
            dispatched = [rid for _, rid in res.dispatch]
            expired = [(rid, d) for _, rid, d in res.expired]
        else:
            # Documented use without arbiter.poll: poll every engine sharing the GPU (any
            # order); a GPU-wide pass may leave grants in another engine's next poll.
            dispatched, expired = [], []
            k = len(self.scheds)
            for i in range(k):
                ids, gone = self.scheds[(engine + i) % k].poll(self.now)
                dispatched += ids
                expired += gone
        for rid, d in expired:
            self.expire(rid, d)
        for rid in dispatched:
            self.check_overtaking(rid)
            self.dispatch(rid)

    @precondition(lambda self: any(t.state == "in_flight" for t in self.reqs.values()))
    @rule(pick=st.integers(0, 10**6), dt=st.sampled_from([0.0, 0.05, 0.3, 0.8]))
    def first_token(self, pick, dt):
        rids = self.ids("in_flight")
        rid = rids[pick % len(rids)]
        self.now += dt
        self.scheds[self.reqs[rid].engine].on_first_token(rid, self.now)

    @precondition(lambda self: any(t.state == "in_flight" for t in self.reqs.values()))
    @rule(
        pick=st.integers(0, 10**6),
        dt=st.sampled_from([0.0, 0.05, 0.5, 2.0]),
        tokens=st.integers(0, 64),
        ok=st.booleans(),
    )
    def finish(self, pick, dt, tokens, ok):
        rids = self.ids("in_flight")
        rid = rids[pick % len(rids)]
        self.now += dt
        t = self.reqs[rid]
        self.scheds[t.engine].on_finish(rid, self.now, tokens, ok)
        t.state = "ended"
        self.counts[t.engine]["finished"] += 1

    @rule(pick=st.integers(0, 10**6))
    def cancel(self, pick):
        rids = sorted(self.reqs) + ["unknown"]
        rid = rids[pick % len(rids)]
        t = self.reqs.get(rid)
        for s in self.scheds if t is None else [self.scheds[t.engine]]:
            s.cancel(rid, self.now)
        if t is not None and t.state == "queued":
            self.counts[t.engine]["cancelled"] += 1
            t.state = "ended"
        elif t is not None and t.state == "in_flight":
            self.counts[t.engine]["finished"] += 1
            t.state = "ended"

    @rule(
        engine=st.integers(0, 2),
        running=st.integers(0, 8),
        waiting=st.integers(0, 3),
        kv=st.sampled_from([0.0, 0.5, 0.9, 0.97, 1.0]),
        preempted=st.integers(0, 2),
    )
    def engine_state(self, engine, running, waiting, kv, preempted):
        self.now += 0.5
        k = engine % len(self.scheds)
        self.preempted = getattr(self, "preempted", {})
        self.preempted[k] = self.preempted.get(k, 0) + preempted
        self.scheds[k].on_engine_state(
            EngineSnapshot(self.now, running, waiting, kv, self.preempted[k])
        )

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def bookkeeping_matches(self):
        if not hasattr(self, "scheds"):
            return
        for i, s in enumerate(self.scheds):
            st_ = s.stats
            mine = [t for t in self.reqs.values() if t.engine == i]
            assert st_.in_flight == sum(t.state == "in_flight" for t in mine)
            assert st_.queued == sum(t.state == "queued" for t in mine)
            assert st_.queued <= self.cfg.max_queue
            assert self.cfg.min_limit <= st_.limit <= self.cfg.max_limit
            got = {k: getattr(st_, k) for k in self.counts[i]}
            assert got == self.counts[i]
            s.check_integrity()
        if self.arbiter is not None:
            self.arbiter.check_integrity()
            assert self.arbiter.stats.in_flight <= self.arbiter.budget

    def teardown(self):
        """End everything; then nothing may be left anywhere."""
        if not hasattr(self, "scheds"):
            return
        for rid in self.ids("in_flight"):
            self.scheds[self.reqs[rid].engine].on_finish(rid, self.now, 1, True)
            self.reqs[rid].state = "ended"
        self.now += 100.0
        for s in self.scheds:
            for rid, _ in s.reject_queued(self.now, "shutdown"):
                self.reqs[rid].state = "ended"
        for s in self.scheds:
            assert s.poll(self.now) == ([], [])  # nothing may come back to life
            assert s.stats.in_flight == 0 and s.stats.queued == 0
            assert not s._flights and len(s._queue) == 0 and not s._granted
            s.check_integrity()
        assert all(t.state == "ended" for t in self.reqs.values())
        if self.arbiter is not None:
            assert self.arbiter.stats.in_flight == 0


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase
