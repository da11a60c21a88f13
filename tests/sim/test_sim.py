"""Simulator sanity: queueing theory, Little's law, KV preemption, determinism."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.metrics.summary import records_frame, summarize
from fineserve.planner.schema import (
    EnginePlacement,
    KVMode,
    Plan,
    SolveReport,
)
from fineserve.sim.cluster import simulate
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths, LogNormalLengths
from fineserve.workload.trace import ModelLoad, Trace, generate
from tests.planner.fakes import ConstLatency, demand, instance

GIB = 2**30


def one_engine_plan(max_batch=1, kv_bytes=40 * GIB, rate=1.0):
    inst = instance([demand("m", rate=rate)], gpus=1, kv_mode=KVMode.STATIC)
    e = EnginePlacement("m-0", "m", "node0", (0,), 100, max_batch, 16 * GIB, 3 * GIB, kv_bytes,
                        100.0, rate)
    return Plan(inst, (e,), (), SolveReport("hand", "HEURISTIC", 0.0))


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait(rho):
    """Output of 1 token and batch 1 make the engine one deterministic server: M/D/1."""
    service = 0.01
    rate = rho / service
    trace = generate([ModelLoad("m", Poisson(rate), FixedLengths(64, 1))], 200_000 / rate, 5)
    res = simulate(one_engine_plan(rate=rate), trace, ConstLatency(service, 0.001))
    df = records_frame(res.records)
    wait = (df.first_token_s - df.scheduled_s - service).mean()
    expected = rho * service / (2 * (1 - rho))
    assert wait == pytest.approx(expected, rel=0.05)


def test_littles_law_on_a_batching_engine():
    rate = 30.0
    trace = generate([ModelLoad("m", Poisson(rate), FixedLengths(200, 50))], 300, 2)
    res = simulate(one_engine_plan(max_batch=32, rate=rate), trace, ConstLatency(0.02, 0.01))
    df = records_frame(res.records)
    assert df.ok.all() and len(df) == len(trace)
    # L = time-average number in system; lambda * W with W the mean sojourn
    events = np.concatenate([np.c_[df.scheduled_s, np.ones(len(df))],
                             np.c_[df.finished_s, -np.ones(len(df))]])
    events = events[np.argsort(events[:, 0], kind="stable")]
    in_system = np.cumsum(events[:, 1])[:-1]
    L = (in_system * np.diff(events[:, 0])).sum() / (events[-1, 0] - events[0, 0])
    lam = len(df) / (events[-1, 0] - events[0, 0])
    assert L == pytest.approx(lam * df.e2e_s.mean(), rel=0.02)


def test_small_kv_preempts_and_still_finishes_everything():
    trace = generate([ModelLoad("m", Poisson(40.0), FixedLengths(300, 200))], 30, 3)
    plan = one_engine_plan(max_batch=64, kv_bytes=int(4000 * 128 * 1024), rate=40)
    res = simulate(plan, trace, ConstLatency(0.01, 0.01))
    assert sum(res.preemptions.values()) > 0
    df = records_frame(res.records)
    assert df.ok.all() and len(df) == len(trace)
    assert (df.finished_s >= df.first_token_s).all()


def test_decode_batch_shares_steps():
    """Two simultaneous requests of 11 tokens on one engine finish after 1 prefill step and
    10 decode steps, not 20."""
    trace = Trace.from_frame(pd.DataFrame({"arrival_s": [0.0, 0.0], "model": ["m", "m"],
                                           "prompt_tokens": [8, 8], "output_tokens": [11, 11]}))
    res = simulate(one_engine_plan(max_batch=8), trace, ConstLatency(0.05, 0.01))
    df = records_frame(res.records)
    assert df.e2e_s.max() == pytest.approx(0.05 + 10 * 0.01, rel=1e-6)


def test_deterministic_and_summarised_like_replay():
    trace = generate([ModelLoad("m", Poisson(20.0), FixedLengths(100, 20))], 20, 4)
    plan = one_engine_plan(max_batch=16, rate=20)
    a = simulate(plan, trace, ConstLatency(0.02, 0.01))
    b = simulate(plan, trace, ConstLatency(0.02, 0.01))
    assert [r.finished_s for r in a.records] == [r.finished_s for r in b.records]
    s = summarize(a.records, {"m": plan.models[0].slo}, a.duration_s, "simulate")
    assert s["source"] == "simulate" and s["overall"]["completed"] == len(trace)
    assert 0 <= s["overall"]["slo_attainment"] <= 1


@settings(max_examples=20, deadline=None)
@given(rate=st.floats(1, 200), prompt=st.integers(1, 3000), out=st.integers(1, 400),
       batch=st.integers(1, 64), kv_tokens=st.integers(2000, 200_000),
       budget=st.integers(64, 4096), seed=st.integers(0, 1000))
def test_bookkeeping_returns_to_zero(rate, prompt, out, batch, kv_tokens, budget, seed):
    """Random load, lengths, batch caps and KV sizes (preemption included): every request
    completes once, and KV / context counters end at exactly zero."""
    lens = LogNormalLengths(prompt, prompt / 2, out, out / 2, max_prompt=4000, max_output=600)
    trace = generate([ModelLoad("m", Poisson(rate), lens)], 10.0, seed)
    plan = one_engine_plan(max_batch=batch, kv_bytes=kv_tokens * 128 * 1024, rate=rate)
    res = simulate(plan, trace, ConstLatency(0.005, 0.002), token_budget=budget)
    df = records_frame(res.records)
    assert len(df) == len(trace) and df.ok.all()
    assert sorted(df["index"]) == list(range(len(trace)))
    assert (df.first_token_s >= df.scheduled_s).all() and (df.finished_s >= df.first_token_s).all()
