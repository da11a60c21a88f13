"""Capacity model: the closed forms, monotonicity (hypothesis), and zero when nothing fits."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.errors import SpecError
from fineserve.planner.capacity import (
    BATCH_GRID,
    TAIL,
    _wait_tail,
    batch_cap,
    engine_capacity,
    kv_batch_limit,
    kv_bytes_for_batch,
    tail_prompt,
)
from fineserve.planner.options import engine_options
from fineserve.planner.schema import LengthStats, Slo
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape, Latency, LatencySource
from tests.planner.fakes import ConstLatency, FakeLatency, demand, instance

H100 = gpu_spec("h100")
ENGINE = EngineShape(H100, model_spec("llama-3.1-8b"), 1)
LAT = FakeLatency()


def test_closed_form_at_the_batch_cap():
    # p = 10 ms, d = 20 ms, D = 100 tokens: lambda(B) = B / (100*0.02 + B*0.01). A cap of 8
    # slots holds a mean of 7 running sequences within the TTFT goal (square-root staffing).
    cap = engine_capacity(ConstLatency(0.01, 0.02), ENGINE, 100, Slo(10, 1),
                          LengthStats(100, 100), max_batch=8)
    assert cap.mean_batch == 7 and cap.batch == 8
    assert cap.rate_rps == pytest.approx(7 / (100 * 0.02 + 7 * 0.01))
    assert cap.batch == batch_cap(7, 10 - cap.ttft_s, cap.residence_s)
    rho = cap.rate_rps * 0.01
    assert cap.tpot_s == pytest.approx(0.02 / (1 - rho))
    assert cap.ttft_s == pytest.approx(0.01 + 0.02 + rho * 0.01 / (2 * (1 - rho)))
    assert cap.limited_by == "max_batch"


def test_tpot_slo_bounds_the_batch():
    # d grows with batch in FakeLatency; a tight TPOT stops the scan early
    loose = engine_capacity(LAT, ENGINE, 100, Slo(5, 0.2), LengthStats(512, 256), max_batch=256)
    tight = engine_capacity(LAT, ENGINE, 100, Slo(5, 0.0075), LengthStats(512, 256),
                            max_batch=256)
    assert 0 < tight.rate_rps < loose.rate_rps
    assert tight.limited_by == "tpot" and tight.tpot_s <= 0.0075


def test_untrusted_latency_gives_zero():
    class Clamped(ConstLatency):
        def prefill(self, *a, **k):
            return Latency(0.01, LatencySource.CLAMPED)

    cap = engine_capacity(Clamped(0.01, 0.02), ENGINE, 100, Slo(10, 1), LengthStats(100, 100),
                          max_batch=8)
    assert cap.rate_rps == 0


def test_kv_batch_limit_is_the_exact_inverse():
    lengths = LengthStats(512, 256)
    for limit in (0, 10**6, 10**8, 3 * 10**9, 7.5 * 10**9):
        b = kv_batch_limit(ENGINE, limit, lengths, 0.2)
        assert kv_bytes_for_batch(ENGINE, b, lengths, 0.2) <= limit or b == 0
        assert kv_bytes_for_batch(ENGINE, b + 1, lengths, 0.2) > limit


def test_no_kv_memory_means_no_capacity():
    cap = engine_capacity(LAT, ENGINE, 100, Slo(5, 0.2), LengthStats(512, 256), max_batch=256,
                          kv_limit_bytes=1000)
    assert cap.rate_rps == 0


def test_weights_that_do_not_fit_raise_a_named_error():
    inst = instance([demand("huge", "llama-3.1-70b", "bf16", tp=(1,))], gpus=1)
    with pytest.raises(SpecError,
                       match=r"models\[0\] \(huge\)\.weights: bf16 weights need 131.4 GiB"):
        engine_options(inst, LAT)


def test_impossible_slo_names_the_field_and_the_floor():
    inst = instance([demand("fast", ttft=0.001)], gpus=1)
    with pytest.raises(SpecError, match=r"models\[0\] \(fast\)\.slo\.ttft_ms: 1 ms is below"):
        engine_options(inst, LAT)
    inst = instance([demand("fast", tpot=0.001)], gpus=1)
    with pytest.raises(SpecError, match=r"slo\.tpot_ms: 1\.0 ms is below the fastest"):
        engine_options(inst, LAT)


slos = st.builds(Slo, st.floats(0.05, 5), st.floats(0.005, 0.3))
lengths = st.builds(LengthStats, st.floats(16, 4096), st.floats(8, 2048))


@settings(max_examples=150, deadline=None)
@given(slo=slos, lens=lengths, sm=st.integers(5, 99), dsm=st.integers(1, 50),
       kv=st.floats(1e8, 6e10), dkv=st.floats(0, 2e10), batch=st.sampled_from(BATCH_GRID[:60]),
       dbatch=st.integers(0, 128))
def test_capacity_is_monotone_in_sm_kv_and_batch(slo, lens, sm, dsm, kv, dkv, batch, dbatch):
    def cap(s, k, b):
        return engine_capacity(LAT, ENGINE, s, slo, lens, max_batch=b, kv_limit_bytes=k,
                               kv_margin=0.2).rate_rps

    base = cap(sm, kv, batch)
    assert cap(min(100, sm + dsm), kv, batch) >= base - 1e-12
    assert cap(sm, kv + dkv, batch) >= base - 1e-12
    assert cap(sm, kv, batch + dbatch) >= base - 1e-12
    assert math.isfinite(base) and base >= 0


@settings(max_examples=100, deadline=None)
@given(b=st.floats(1, 1000), slack=st.floats(0.001, 10), t=st.floats(0.1, 100))
def test_batch_cap_meets_the_tail_and_is_monotone(b, slack, t):
    c = batch_cap(b, slack, t)
    assert c >= b
    beta = (c - b) / math.sqrt(b)
    assert _wait_tail(beta, b, slack / t) <= TAIL * 1.001
    assert batch_cap(b, slack * 2, t) <= c  # more slack, no larger cap
    assert batch_cap(b * 1.5, slack, t) >= c  # more load, no smaller cap


def test_batch_cap_is_square_root_staffing_at_zero_slack():
    # no TTFT slack: P(wait) alone must be <= 1%, i.e. beta ~ 2.38 (Halfin-Whitt)
    c = batch_cap(100, 1e-9, 1.0)
    assert 100 + 2.2 * 10 <= c <= 100 + 2.6 * 10


def test_ttft_must_hold_for_a_tail_length_prompt():
    lens = LengthStats(512, 256)
    tail = tail_prompt(lens)
    assert tail == round(512 * math.exp(2.3263 * math.sqrt(math.log(2)) - math.log(2) / 2))
    p_mean = LAT.prefill(ENGINE, 512, 10).seconds
    p_tail = LAT.prefill(ENGINE, tail, 10).seconds
    d = LAT.decode_step(ENGINE, 1, 640, 10).seconds
    between = (p_mean + p_tail) / 2 + d
    assert engine_capacity(LAT, ENGINE, 10, Slo(between, 1.0), lens, max_batch=256,
                           slo_safety=1.0).rate_rps == 0  # the mean prompt alone would fit
    roomy = p_tail + 20 * d
    assert engine_capacity(LAT, ENGINE, 10, Slo(roomy, 1.0), lens, max_batch=256,
                           slo_safety=1.0).rate_rps > 0
