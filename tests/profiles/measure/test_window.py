"""Decode runs sized by step time (a wall-time window): the worker's sizing, its estimate,
and the method name that lets today's records count as today's method."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.measure import engine as eng
from fineserve.profiles.measure import worker
from fineserve.profiles.measure.records import DECODE_METHOD, PointSpec, same_method
from fineserve.profiles.measure.session import point_seconds
from fineserve.profiles.measure.timing import MIN_DECODE_TOKENS, window_tokens
from fineserve.profiles.precision import Precision
from fineserve.profiles.roofline import AnalyticLatency
from tests.profiles.measure.test_worker import job


def test_fast_steps_keep_the_grid_tokens_slow_ones_get_a_one_second_window():
    assert window_tokens(0.0044, 1.0, 8, 256, 2048, 128) == 128  # 8B at SM 100: capped
    # 70B at SM 50, batch 8 x 1024: 1 s / 34 ms = 30 steps + 1 + 4 prefill steps
    assert window_tokens(0.034, 1.0, 8, 1024, 2048, 128) == 35
    assert window_tokens(0.5, 1.0, 1, 256, 2048, 128) == MIN_DECODE_TOKENS
    assert window_tokens(0.0, 1.0, 1, 256, 2048, 128) == 128  # no step known: the grid's


@given(st.floats(1e-4, 2.0), st.floats(0.05, 5.0), st.integers(1, 64), st.integers(16, 4096),
       st.integers(8, 512))
def test_a_sized_window_lasts_the_asked_time_unless_capped(step, window, batch, context, most):
    n = window_tokens(step, window, batch, context, 2048, most)
    assert min(MIN_DECODE_TOKENS, most) <= n <= most
    prefill_steps = -(-batch * context // 2048)
    if min(MIN_DECODE_TOKENS, most) < n < most:
        assert (n - 1 - prefill_steps) * step >= window - 1e-9


def test_the_worker_sizes_the_timed_runs_from_its_untimed_run(monkeypatch):
    asked = []

    def decode(llm, prompts, batch, context, tokens):
        asked.append(tokens)
        return eng.Timing(0.05, DECODE_METHOD), True  # a 50 ms step

    monkeypatch.setattr(eng, "decode_step", decode)
    monkeypatch.setattr(eng, "lone_decode", lambda *a: asked.append(a[-1]) or 0.05)
    point = PointSpec("decode", 1, 256, repeats=2, samples=3)
    record = worker._measure(None, None, replace(job((point,)), decode_window_s=1.0), point,
                             floor=None)
    assert asked == [MIN_DECODE_TOKENS] + [MIN_DECODE_TOKENS] * 6 + [MIN_DECODE_TOKENS]
    assert record.method == f"{DECODE_METHOD} med3 n{MIN_DECODE_TOKENS}"
    asked.clear()
    monkeypatch.setattr(eng, "decode_step", lambda *a: (asked.append(a[-1]),
                                                        (eng.Timing(0.02, DECODE_METHOD), True))[1])
    worker._measure(None, None, replace(job((point,)), decode_window_s=1.0), point, floor=None)
    assert asked[1:] == [52] * 6 + [52]  # 1 s / 20 ms + 1 + 1 prefill step


def test_records_of_another_run_length_are_the_same_method():
    assert same_method(f"{DECODE_METHOD} med3 n128", f"{DECODE_METHOD} med3 n37")
    assert not same_method(f"{DECODE_METHOD} med3 n128", f"{DECODE_METHOD} n128")
    assert not same_method("step-ts/3 med3", "step-ts/2 med3")


def test_the_estimate_shrinks_only_where_steps_are_slow():
    latency = AnalyticLatency()
    point = PointSpec("decode", 8, 1024, repeats=3, samples=3)
    seconds = {}
    for model in ("llama-3.2-3b", "llama-3.1-70b"):
        spec = ModelSpec(resolve_arch(model), Precision.parse("int4-gptq"))
        shape = EngineShape(gpu_spec("H100-SXM-80GB"), spec, 1)
        fixed, sized = (point_seconds(point, latency, shape, 50.0, blocker_tokens=2048,
                                      decode_tokens=128, decode_window_s=w) for w in (0, 1.0))
        seconds[model] = (fixed, sized)
    assert seconds["llama-3.1-70b"][1] < 0.9 * seconds["llama-3.1-70b"][0]
    assert seconds["llama-3.2-3b"][1] == pytest.approx(seconds["llama-3.2-3b"][0], rel=0.1)
