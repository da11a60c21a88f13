"""AnalyticLatency: tracks FineServe's H100 data, answers for any engine, stays monotone."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.errors import SpecError
from fineserve.profiles.catalog import builtin_models, model_spec
from fineserve.profiles.gpus import gpu_spec, known_gpus
from fineserve.profiles.latency import EngineShape, LatencyModel, LatencySource
from fineserve.profiles.roofline import AnalyticLatency, RooflineParams

EST = AnalyticLatency()


def engine(model: str, weights: str = "bf16", kv: str = "bf16", tp: int = 1,
           gpu: str = "H100-SXM-80GB") -> EngineShape:  # fmt: skip
    return EngineShape(gpu_spec(gpu), model_spec(model, weights, kv), tp)


# (engine, phase, sm %, batch, tokens, FineServe apex latency in s, tolerance): prefill tokens
# are each prompt's, decode tokens the mean context (input 256 or 512 + output 256 / 2).
APEX = [
    (("llama-3.1-8b",), "decode", 100, 1, 384, 0.00800, 0.15),
    (("llama-3.1-8b",), "decode", 20, 1, 384, 0.00945, 0.15),
    (("llama-3.1-8b",), "decode", 100, 32, 640, 0.00963, 0.15),
    (("llama-3.1-70b", "int4-awq"), "decode", 20, 1, 384, 0.06338, 0.15),
    (("llama-3.1-70b", "int4-awq"), "decode", 100, 1, 384, 0.02154, 0.15),
    (("llama-3.1-70b", "int4-awq"), "decode", 100, 32, 640, 0.02914, 0.15),
    (("llama-3.1-70b", "bf16", "bf16", 4), "decode", 100, 8, 640, 0.02355, 0.15),
    (("qwen3-32b", "fp8", "fp8", 2), "decode", 100, 32, 640, 0.02741, 0.15),
    (("llama-3.1-8b",), "prefill", 100, 32, 512, 0.35726, 0.30),
    (("llama-3.1-8b",), "prefill", 20, 32, 512, 1.42757, 0.30),
    (("llama-3.1-8b",), "prefill", 50, 32, 512, 0.54580, 0.30),
    (("llama-3.1-70b", "int4-awq"), "prefill", 100, 32, 512, 6.66757, 0.30),
    (("llama-3.1-8b", "fp8", "fp8"), "prefill", 100, 32, 512, 0.28353, 0.30),
    (("qwen3-32b", "bf16", "bf16", 4), "prefill", 100, 32, 512, 0.49088, 0.30),
]


@pytest.mark.parametrize(("spec", "phase", "sm", "batch", "tokens", "measured", "tol"), APEX)
def test_tracks_fineserve_apex_points(
    spec: tuple, phase: str, sm: float, batch: int, tokens: int, measured: float, tol: float
) -> None:
    e = engine(*spec)
    if phase == "prefill":
        answer = EST.prefill(e, tokens, sm, batch)
    else:
        answer = EST.decode_step(e, batch, tokens, sm)
    assert answer.source is LatencySource.ESTIMATED
    assert answer.seconds == pytest.approx(measured, rel=tol)


def test_reproduces_the_shapes_the_paper_reports() -> None:
    bf16, awq = engine("llama-3.1-8b"), engine("llama-3.1-70b", "int4-awq")
    # 8B bf16 decode is memory/launch bound: flat from 40% SMs up.
    assert EST.decode_step_s(bf16, 32, 640, 40) / EST.decode_step_s(bf16, 32, 640, 100) < 1.05
    # 70B AWQ decode is dequantization (compute) bound: ~3x slower at 20% SMs.
    assert EST.decode_step_s(awq, 1, 384, 20) / EST.decode_step_s(awq, 1, 384, 100) > 2.5
    # Prefill is compute bound: fewer SMs cost nearly proportionally (4x at 20%, data 4.0x).
    assert 3.5 < EST.prefill_s(bf16, 512, 20, 32) / EST.prefill_s(bf16, 512, 100, 32) < 5.0


def test_precision_and_tp_move_the_estimate_the_right_way() -> None:
    bf16, fp8 = engine("llama-3.1-70b", tp=4), engine("llama-3.1-70b", "fp8", "fp8", 4)
    assert EST.prefill_s(fp8, 2048, 100, 8) < EST.prefill_s(bf16, 2048, 100, 8)
    tp1, tp4 = engine("llama-3.1-8b"), engine("llama-3.1-8b", tp=4)
    assert EST.prefill_s(tp4, 8192, 100, 4) < EST.prefill_s(tp1, 8192, 100, 4)
    # Long prompts pay attention quadratically: one 32k prompt costs more than 8 of 4k.
    assert EST.prefill_s(tp1, 32768, 100, 1) > 1.2 * EST.prefill_s(tp1, 4096, 100, 8)
    assert EST.prefill_attention_s(tp1, 32768, 100) == pytest.approx(
        64 * EST.prefill_attention_s(tp1, 4096, 100))


def test_all_reduce_without_nvlink_goes_over_pcie() -> None:
    l40s = engine("llama-3.1-8b", tp=2, gpu="L40S-48GB")
    fast_pcie = AnalyticLatency(replace(RooflineParams(), pcie_bytes_per_s=1e15))
    assert EST.prefill_s(l40s, 4096, 100, 8) > fast_pcie.prefill_s(l40s, 4096, 100, 8) * 1.05


def test_covers_any_engine_and_satisfies_the_protocol() -> None:
    assert isinstance(EST, LatencyModel)
    for arch in builtin_models():
        for gpu in known_gpus():
            e = EngineShape(gpu_spec(gpu), model_spec(arch.name, "int4-gptq"), 2)
            assert EST.covers(e)
            assert EST.decode_step(e, 8, 1000, 30).seconds > 0


@pytest.mark.parametrize(("sm", "batch", "tokens"), [(0, 1, 100), (120, 1, 100),
                                                     (math.nan, 1, 100), (50, 0, 100)])
def test_rejects_impossible_queries(sm: float, batch: int, tokens: int) -> None:
    with pytest.raises(SpecError):
        EST.prefill(engine("llama-3.1-8b"), tokens, sm, batch)
    with pytest.raises(SpecError):
        EST.decode_step(engine("llama-3.1-8b"), batch, tokens, sm)


def test_params_are_frozen_and_every_one_matters() -> None:
    params = RooflineParams()
    with pytest.raises(FrozenInstanceError):
        params.hbm_eff = 1.0  # type: ignore[misc]
    probes = [
        (engine("llama-3.1-8b", "fp8", "fp8", 2), 512, 8, 20),
        (engine("llama-3.1-70b", "int4-awq"), 384, 32, 20),
        (engine("llama-3.1-8b", tp=2, gpu="L40S-48GB"), 2048, 64, 100),
        (engine("llama-3.1-70b", tp=4), 8192, 64, 100),
    ]

    def answers(p: RooflineParams) -> list[float]:
        est = AnalyticLatency(p)
        out = []
        for e, tokens, batch, sm in probes:
            for s in (sm, 5.0):
                out += [est.prefill_s(e, tokens, s, batch), est.decode_step_s(e, batch, tokens, s)]
        return out

    base = answers(params)
    for f in fields(RooflineParams):
        changed = answers(replace(params, **{f.name: getattr(params, f.name) * 3 or 64.0}))
        assert changed != base, f"{f.name} has no effect on any probe"


ENGINES = [
    engine(m, w, k, tp, g)
    for m in ("llama-3.2-1b", "llama-3.1-8b", "qwen3-32b", "llama-3.1-70b")
    for w, k in (("bf16", "bf16"), ("fp8", "fp8"), ("int4-awq", "bf16"))
    for tp in (1, 2, 8)
    for g in ("H100-SXM-80GB", "L40S-48GB")
]


@settings(max_examples=150, deadline=None)
@given(
    e=st.sampled_from(ENGINES),
    sm=st.floats(1, 100), batch=st.floats(1, 512), tokens=st.floats(1, 65536),
    d_sm=st.floats(0, 99), d_batch=st.floats(0, 512), d_tokens=st.floats(0, 65536),
)  # fmt: skip
def test_estimates_are_monotone(
    e: EngineShape, sm: float, batch: float, tokens: float,
    d_sm: float, d_batch: float, d_tokens: float,
) -> None:  # fmt: skip
    more_sm = min(100.0, sm + d_sm)
    d = EST.decode_step_s(e, batch, tokens, sm)
    assert EST.decode_step_s(e, batch, tokens, more_sm) <= d
    assert EST.decode_step_s(e, batch + d_batch, tokens, sm) >= d
    assert EST.decode_step_s(e, batch, tokens + d_tokens, sm) >= d
    p = EST.prefill_s(e, tokens, sm, batch)
    assert EST.prefill_s(e, tokens, more_sm, batch) <= p
    assert EST.prefill_s(e, tokens + d_tokens, sm, batch) >= p
    assert EST.prefill_s(e, tokens, sm, batch + d_batch) >= p
