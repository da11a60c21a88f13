"""The per-sequence decode term scaled by engine size (``stepscale.per_seq_by_size``): a 3B
pays 0.40 of an 8B's per-sequence time, a TP = 2 rank half, and nothing else changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape, Latency
from fineserve.sim.stepscale import (
    EngineScaledLatency,
    ScaledLatency,
    per_seq_s,
    size_weight,
)

H100 = gpu_spec("H100-SXM-80GB")
SHAPE_8B = EngineShape(H100, model_spec("llama-3.1-8b", "bf16"))
SHAPE_3B = EngineShape(H100, model_spec("llama-3.2-3b", "bf16"))
SHAPE_70B_TP2 = EngineShape(H100, model_spec("llama-3.1-70b", "bf16"), 2)


class FlatLatency:
    """A latency model with the same step at any batch (unit-test stand-in)."""

    def prefill(self, engine, prompt_tokens, sm_pct, batch=1):
        return Latency(0.01, "flat")

    def decode_step(self, engine, batch, context_tokens, sm_pct):
        return Latency(0.005, "flat")

    def covers(self, engine):
        return True


def test_size_weight_is_linear_parameters_per_rank_over_the_8b():
    assert size_weight(SHAPE_8B) == pytest.approx(1.0)
    assert size_weight(SHAPE_3B) == pytest.approx(0.404, abs=0.002)
    one_rank = size_weight(SHAPE_70B_TP2)
    assert one_rank == pytest.approx(68.45 / 6.979 / 2, rel=1e-3)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(0, 1024), sm=st.floats(5, 100), per_seq=st.floats(0, 1e-4))
def test_by_size_scales_only_the_per_sequence_term(batch, sm, per_seq):
    for cls in (ScaledLatency, EngineScaledLatency):
        kw = {"decode_s_per_seq": per_seq}
        plain = cls(FlatLatency(), **kw)
        sized = cls(FlatLatency(), per_seq_by_size=True, **kw)
        for shape in (SHAPE_8B, SHAPE_3B):
            base = plain.decode_step(shape, batch, 100.0, sm).seconds
            got = sized.decode_step(shape, batch, 100.0, sm).seconds
            assert got - 0.005 == pytest.approx((base - 0.005) * size_weight(shape),
                                                abs=1e-12)
            assert sized.prefill(shape, 64, sm).seconds == 0.01  # prefill untouched


def test_per_seq_s_divides_by_the_sm_share():
    full = per_seq_s(3e-5, True, SHAPE_3B, 100, 100.0)
    assert per_seq_s(3e-5, True, SHAPE_3B, 100, 20.0) == pytest.approx(5 * full)
    assert per_seq_s(3e-5, False, SHAPE_3B, 100, 100.0) == pytest.approx(3e-3)
