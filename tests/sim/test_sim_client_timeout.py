"""Clients that give up: a timed-out request leaves the engine at the next step boundary (its
slot and KV freed, as vLLM aborts a closed connection) or the local scheduler's queue, and is
recorded as a timeout error; the per-sequence term under time-sliced per-engine factors."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.errors import SpecError
from fineserve.planner.schema import EnginePlacement, KVMode, Plan, Slo, SolveReport
from fineserve.profiles.latency import EngineShape
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.admission import Admission
from fineserve.sim.cluster import TIMEOUT_ERROR, SimOptions, simulate
from fineserve.sim.engine import HALF_BLOCK, EngineSim, SimRequest
from fineserve.sim.stepscale import EngineScaledLatency
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths, LogNormalLengths
from fineserve.workload.trace import ModelLoad, generate
from tests.planner.fakes import ConstLatency, FakeLatency, demand, instance
from tests.sim.test_sim_models import GIB, W8B, lone_plan, shared_gpu_plan


def _engine(max_batch=8, kv_tokens=1e6):
    inst = instance([demand("a")], gpus=1)
    shape = EngineShape(inst.cluster.gpus[0].spec, inst.models[0].spec, 1)
    return EngineSim("a-0", shape, 100, max_batch, kv_tokens, ConstLatency(0.01, 0.01),
                     gpus=(0,))


def _step(e: EngineSim, now: float) -> float:
    end = e.start_step(now)
    e.finish_step(end)
    return end


def test_a_cancelled_decoder_frees_its_slot_and_kv_at_the_step_boundary():
    e = _engine()
    keep, gone = SimRequest(0, "a", 0.0, 100, 50), SimRequest(1, "a", 0.0, 60, 50)
    e.arrive(keep)
    e.arrive(gone)
    now = _step(e, 0.0)  # both prefilled: decoding now
    now = _step(e, now)  # one decode step
    assert e.decoding == 2 and gone.heap_seq >= 0
    end = e.start_step(now)
    e.cancel(gone)  # the client leaves mid-step: nothing changes until the step ends
    assert e.decoding == 2
    e.finish_step(end)
    assert e.decoding == 1 and e.cancelled == 1 and gone.heap_seq == -1
    assert gone.generated == 3  # first token + two decode steps reached the client
    # only ``keep`` is left: its prompt and three tokens (first + two decode steps)
    assert e.ctx_sum == 100 + 3
    assert e.kv_used == pytest.approx(100 + 3 + HALF_BLOCK)
    while not e.idle:
        now = _step(e, now)
    e.check_integrity()
    assert math.isnan(gone.finished_s) and keep.finished_s > 0


def test_cancelled_waiting_and_prefilling_requests_leave_without_a_trace():
    e = _engine(max_batch=1)
    a, b = SimRequest(0, "a", 0.0, 4000, 5), SimRequest(1, "a", 0.0, 16, 5)
    e.token_budget = 1000  # a's prompt spans four steps
    e.arrive(a)
    e.arrive(b)
    end = e.start_step(0.0)
    e.cancel(a)  # prefilling
    e.cancel(b)  # waiting (batch full)
    done = e.finish_step(end)
    assert done == [] and e.idle and e.kv_used == pytest.approx(0) and e.cancelled == 2
    e.check_integrity()


def test_a_request_that_finished_in_the_step_in_flight_is_not_dropped_twice():
    e = _engine()
    r = SimRequest(0, "a", 0.0, 16, 1)  # done at its prefill
    e.arrive(r)
    end = e.start_step(0.0)
    e.cancel(r)
    assert e.finish_step(end) == []  # the client saw a timeout, not this completion
    assert e.cancelled == 0 and e.idle
    e.check_integrity()


def _saturated():
    """One 8B engine offered more than it serves: its batch (cap 1024) fills the KV, steps
    slow down with the batch, and requests run past a 10 s client timeout."""
    inst = instance([demand("a", rate=60)], gpus=1, kv_mode=KVMode.STATIC)
    e = EnginePlacement("a-0", "a", "node0", (0,), 100, 1024, W8B, 3 * GIB, 40 * GIB, 100.0,
                        60)
    plan = Plan(inst, (e,), (), SolveReport("hand", "HEURISTIC", 0.0))
    trace = generate([ModelLoad("a", Poisson(60), FixedLengths(300, 400))], 30, 3)
    return plan, trace


def test_timed_out_requests_are_errors_and_free_the_engine_for_the_rest():
    plan, trace = _saturated()
    wait = simulate(plan, trace, FakeLatency())
    quit_ = simulate(plan, trace, FakeLatency(), options=SimOptions(request_timeout_s=10.0))
    assert len(quit_.records) == len(trace.arrival_s)
    late = [r for r in quit_.records if r.error == TIMEOUT_ERROR]
    assert late and all(r.tokens_received == 0 and not r.ok for r in late)
    ok = [r for r in quit_.records if r.ok]
    assert all(r.finished_s - r.sent_s <= 10.0 + 1e-9 for r in ok)
    # the abandoned requests no longer take steps and KV: the run ends sooner, with fewer
    # preemptions, and many more requests finish within the timeout than when every request
    # ran to the end (their clients gone)
    assert quit_.duration_s < wait.duration_s
    assert quit_.preemptions["a-0"] < wait.preemptions["a-0"]
    in_time = sum(r.ok and r.finished_s - r.sent_s <= 10.0 for r in wait.records)
    assert len(ok) > 10 * max(1, in_time)


def test_a_request_queued_in_the_local_scheduler_leaves_its_queue():
    plan = lone_plan()
    e = _engine()
    adm = Admission([e], {"a-0": plan.engines[0]}, {"a": Slo(1.0, 0.1)},
                    SchedulerConfig(policy="fcfs", initial_limit=1, max_limit=1))
    reqs = [SimRequest(i, "a", 0.0, 16, 4) for i in range(3)]
    go = [r for q in reqs for r in adm.submit(e, q, 0.0)[0]]
    assert go == reqs[:1] and set(adm.held) == {"1", "2"}
    assert adm.cancel(reqs[2], 1.0) and set(adm.held) == {"1"}
    assert not adm.cancel(reqs[0], 1.0)  # dispatched: the engine must be told instead
    e.arrive(reqs[0])
    e.cancel(reqs[0])
    go, rejected = adm.on_cancel(reqs[0], 1.0)  # its slot goes to the next in the queue
    assert go == [reqs[1]] and not rejected and not adm.held
    adm.check_integrity()


def test_with_a_local_scheduler_in_front_every_timeout_is_released_once():
    plan = lone_plan()  # batch cap 32, a gateway limit of 4: requests queue in front
    trace = generate([ModelLoad("a", Poisson(60), FixedLengths(300, 400))], 30, 3)
    opts = SimOptions(request_timeout_s=5.0, scheduler=SchedulerConfig(
        policy="fcfs", initial_limit=4, max_limit=4))
    res = simulate(plan, trace, FakeLatency(), options=opts)  # integrity: nothing held
    assert len(res.records) == len(trace.arrival_s)
    assert sum(r.error == TIMEOUT_ERROR for r in res.records) > 0
    assert all(r.finished_s - r.sent_s <= 5.0 + 1e-9 for r in res.records if r.ok)


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(5, 80), timeout=st.floats(0.5, 20), kv_gib=st.sampled_from([1, 4, 20]),
       sliced=st.booleans(), kv=st.sampled_from([KVMode.STATIC, KVMode.POOLED]),
       seed=st.integers(0, 1000))
def test_every_request_ends_once_and_the_books_balance(rate, timeout, kv_gib, sliced, kv, seed):
    """Static partitions or a KV Slab pool, MPS or time slicing: each request is recorded
    once, finished in time or timed out; the engines' and pools' books close (the
    simulator's integrity checks at the end)."""
    if kv is KVMode.POOLED:
        kv_gib = min(kv_gib, 4)  # floors of the pool: two 8B engines leave ~40 GiB
    plan = shared_gpu_plan(kv_mode=kv, floors=(kv_gib * GIB, kv_gib * GIB))
    trace = generate([ModelLoad("a", Poisson(rate), LogNormalLengths(300, 200, 200, 150)),
                      ModelLoad("b", Poisson(rate / 2), FixedLengths(100, 300))], 10, seed)
    opts = SimOptions(request_timeout_s=timeout,
                      sharing="time-sliced" if sliced else "mps")
    res = simulate(plan, trace, FakeLatency(), options=opts)  # check_integrity at the end
    assert sorted(r.index for r in res.records) == list(range(len(trace.arrival_s)))
    for r in res.records:
        assert r.ok != (r.error == TIMEOUT_ERROR)
        if r.ok:
            assert r.finished_s - r.sent_s <= timeout + 1e-9


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="request_timeout_s"):
        SimOptions(request_timeout_s=0.0)


@settings(max_examples=30, deadline=None)
@given(factor=st.floats(0.2, 3), per_seq=st.floats(0, 1e-4), batch=st.integers(1, 1024),
       sm=st.sampled_from([25, 50, 100]))
def test_per_sequence_term_sits_under_the_engine_factor(factor, per_seq, batch, sm):
    e = _engine()
    lat = EngineScaledLatency(ConstLatency(0.01, 0.02), ((e.shape.model.key, factor),),
                              per_seq)
    want = 0.02 * factor + per_seq * batch * 100 / sm
    assert lat.decode_step(e.shape, batch, 300, sm).seconds == pytest.approx(want)
    assert lat.prefill(e.shape, 300, sm).seconds == pytest.approx(0.01)


def test_a_negative_per_sequence_term_is_refused():
    with pytest.raises(SpecError, match="decode_s_per_seq"):
        EngineScaledLatency(ConstLatency(0.01, 0.02), (), -1e-5)


def test_a_timeout_nobody_reaches_changes_nothing():
    plan = shared_gpu_plan(kv_mode=KVMode.STATIC, floors=(20 * GIB, 20 * GIB))
    trace = generate([ModelLoad("a", Poisson(10), FixedLengths(300, 100)),
                      ModelLoad("b", Poisson(10), FixedLengths(300, 100))], 20, 4)
    a = simulate(plan, trace, FakeLatency())
    b = simulate(plan, trace, FakeLatency(), options=SimOptions(request_timeout_s=60.0))
    assert a.records == b.records and a.duration_s == b.duration_s  # no tail of deadlines
