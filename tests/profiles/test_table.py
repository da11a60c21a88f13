"""TableLatency: exact grid points, interpolation, clamping, filling, monotonicity, speed."""

from __future__ import annotations

import time
from collections.abc import Collection
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.errors import ProfileError
from fineserve.profiles.latency import EngineShape, LatencySource
from fineserve.profiles.schema import EngineKey, LatencyPoint, Phase, ProfileTable
from fineserve.profiles.table import TableLatency

MEASURED, INTERPOLATED, CLAMPED = (
    LatencySource.MEASURED, LatencySource.INTERPOLATED, LatencySource.CLAMPED,
)  # fmt: skip
KEY = EngineKey("H100-SXM-80GB", "llama-3.1-8b", "bf16", "bf16", 1)  # type: ignore[arg-type]
ENGINE = KEY.shape()
OTHER = EngineKey("H100-SXM-80GB", "qwen3-32b", "fp8", "fp8", 2).shape()  # type: ignore[arg-type]
SMS = (20.0, 50.0, 100.0)
PROMPTS = ((1, 256), (1, 512), (2, 512), (4, 512))  # (batch, prompt): totals 256..2048
BATCHES = (1, 4, 16)
CONTEXTS = (100, 500)


def prefill_f(sm: float, total: float) -> float:
    return 1e-3 + total * 1e-5 * 100 / sm


def decode_f(sm: float, batch: float, context: float) -> float:
    return 5e-3 + batch * context * 1e-7 + batch * 1e-4 * 100 / sm


def pt(phase: Phase, sm: float, batch: int, tokens: int, latency: float) -> LatencyPoint:
    return LatencyPoint(*KEY, sm, phase, batch, tokens, latency)  # type: ignore[arg-type]


def synthetic(skip: Collection[tuple[float, int, int]] = ()) -> ProfileTable:
    pre = [pt(Phase.PREFILL, s, b, n, prefill_f(s, b * n)) for s, (b, n) in product(SMS, PROMPTS)]
    dec = [pt(Phase.DECODE, s, b, c, decode_f(s, b, c))
           for s, b, c in product(SMS, BATCHES, CONTEXTS) if (s, b, c) not in skip]
    return ProfileTable(pre + dec)


@pytest.fixture(scope="module")
def table() -> TableLatency:
    return TableLatency(synthetic())


def test_grid_points_are_exact_and_measured(table: TableLatency) -> None:
    for s, (b, n) in product(SMS, PROMPTS):
        answer = table.prefill(ENGINE, n, s, b)
        assert answer.seconds == prefill_f(s, b * n)
        assert answer.source is MEASURED
    for s, b, c in product(SMS, BATCHES, CONTEXTS):
        answer = table.decode_step(ENGINE, b, c, s)
        assert answer.seconds == decode_f(s, b, c)
        assert answer.source is MEASURED


def test_prefill_is_indexed_by_batch_times_prompt(table: TableLatency) -> None:
    assert table.prefill(ENGINE, 256, 50, 2) == table.prefill(ENGINE, 512, 50, 1)
    assert table.prefill(ENGINE, 128, 50, 8).seconds == prefill_f(50, 1024)


def test_midpoints_interpolate_linearly_per_axis(table: TableLatency) -> None:
    mid = table.prefill(ENGINE, 768, 100)  # between totals 512 and 1024
    assert mid.source is INTERPOLATED
    assert mid.seconds == pytest.approx(prefill_f(100, 768), rel=1e-12)  # f is linear in tokens
    mid = table.prefill(ENGINE, 512, 35)  # between SM 20 and 50
    assert mid.seconds == pytest.approx((prefill_f(20, 512) + prefill_f(50, 512)) / 2)
    mid = table.decode_step(ENGINE, 10, 300, 75)  # centre of a decode cell
    corners = [decode_f(s, b, c) for s, b, c in product((50, 100), (4, 16), (100, 500))]
    assert mid.source is INTERPOLATED
    assert mid.seconds == pytest.approx(sum(corners) / 8)


@pytest.mark.parametrize(
    ("query", "edge"),
    [
        ((64, 300, 75), (16, 300, 75)),  # batch past the table
        ((10, 2000, 75), (10, 500, 75)),  # context past the table
        ((10, 50, 75), (10, 100, 75)),  # context below the table
        ((10, 300, 10), (10, 300, 20)),  # SM share below the table
        ((64, 2000, 5), (16, 500, 20)),  # several axes at once
    ],
)
def test_outside_the_grid_is_the_edge_value_clamped(
    table: TableLatency, query: tuple[float, float, float], edge: tuple[float, float, float]
) -> None:
    answer = table.decode_step(ENGINE, *query)
    assert answer.source is CLAMPED
    assert answer.seconds == table.decode_step(ENGINE, *edge).seconds


def test_prefill_clamps(table: TableLatency) -> None:
    far = table.prefill(ENGINE, 4096, 100, 8)
    assert far.source is CLAMPED and far.seconds == prefill_f(100, 2048)
    small = table.prefill(ENGINE, 16, 10)
    assert small.source is CLAMPED and small.seconds == prefill_f(20, 256)


def test_domain_and_covers(table: TableLatency) -> None:
    d = table.domain(ENGINE)
    assert (d.min_sm, d.max_sm, d.min_batch, d.max_batch) == (20, 100, 1, 16)
    assert (d.min_context, d.max_context) == (100, 500)
    assert (d.min_prefill_tokens, d.max_prefill_tokens, d.max_prompt_tokens) == (256, 2048, 512)
    assert table.covers(ENGINE) and not table.covers(OTHER)
    assert table.engines() == (KEY,)
    with pytest.raises(ProfileError, match="no latency profile for engine"):
        table.decode_step(OTHER, 1, 100, 50)


def test_noise_is_made_monotone_with_running_maxima() -> None:
    # Noise: faster at 20% SMs than at 50%, and batch 16 faster than batch 4 and 1.
    noisy = {(20.0, 1, 100): 1e-3, (100.0, 16, 500): 1e-3}
    points = [
        pt(p.phase, p.sm_pct, p.batch, p.tokens, noisy[key])
        if p.phase is Phase.DECODE and (key := (p.sm_pct, p.batch, p.tokens)) in noisy else p
        for p in synthetic()
    ]
    table = TableLatency(ProfileTable(points))
    # Each cell becomes the largest value among the cells it must not undercut.
    assert table.decode_step(ENGINE, 1, 100, 20).seconds == decode_f(50, 1, 100)
    expected = max(decode_f(100, 16, 100), decode_f(100, 4, 500))
    assert table.decode_step(ENGINE, 16, 500, 100).seconds == expected
    assert table.decode_step(ENGINE, 4, 500, 100).seconds == decode_f(100, 4, 500)  # untouched


def test_repeated_prefill_totals_take_the_median() -> None:
    points = list(synthetic())
    points.append(pt(Phase.PREFILL, 100, 4, 256, 1.0))  # 4 x 256 = 2 x 512 = 1024 tokens
    table = TableLatency(ProfileTable(points))
    expected = (prefill_f(100, 1024) + 1.0) / 2
    assert table.prefill(ENGINE, 1024, 100).seconds == pytest.approx(expected)


def test_interior_holes_are_filled_along_the_batch_axis() -> None:
    table = TableLatency(synthetic(skip={(50.0, 4, 500)}))
    filled = table.decode_step(ENGINE, 4, 500, 50)
    lo, hi = decode_f(50, 1, 500), decode_f(50, 16, 500)
    assert filled.seconds == pytest.approx(lo + (hi - lo) * 3 / 15)
    assert filled.source is INTERPOLATED  # a grid point, but not a measured one


def test_holes_at_the_edge_raise_naming_the_point() -> None:
    with pytest.raises(ProfileError) as info:
        TableLatency(synthetic(skip={(50.0, 16, 500)}))
    assert "decode point sm_pct=50, batch=16, tokens=500" in info.value.message
    assert KEY.key in info.value.message


def test_an_engine_without_a_phase_is_refused() -> None:
    decode_only = ProfileTable(p for p in synthetic() if p.phase is Phase.DECODE)
    with pytest.raises(ProfileError, match="no prefill points"):
        TableLatency(decode_only)


@st.composite
def noisy_tables(draw: st.DrawFn) -> TableLatency:
    sms = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=4)))
    batches = sorted(draw(st.sets(st.integers(1, 64), min_size=1, max_size=4)))
    contexts = sorted(draw(st.sets(st.integers(1, 4000), min_size=1, max_size=3)))
    lat = st.floats(1e-4, 1.0)
    points = [pt(Phase.DECODE, s, b, c, draw(lat)) for s, b, c in product(sms, batches, contexts)]
    points += [pt(Phase.PREFILL, s, 1, n, draw(lat)) for s, n in product(sms, contexts)]
    return TableLatency(ProfileTable(points))


def _no_more(a: float, b: float) -> bool:
    return a <= b * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    table=noisy_tables(),
    sm=st.floats(1, 100), batch=st.floats(1, 100), context=st.floats(1, 5000),
    d_sm=st.floats(0, 50), d_batch=st.floats(0, 50), d_context=st.floats(0, 3000),
)  # fmt: skip
def test_random_noisy_tables_answer_monotonically(
    table: TableLatency, sm: float, batch: float, context: float,
    d_sm: float, d_batch: float, d_context: float,
) -> None:  # fmt: skip
    base = table.decode_step(ENGINE, batch, context, sm).seconds
    more_sm = min(100.0, sm + d_sm)
    assert _no_more(table.decode_step(ENGINE, batch, context, more_sm).seconds, base)
    assert _no_more(base, table.decode_step(ENGINE, batch + d_batch, context, sm).seconds)
    assert _no_more(base, table.decode_step(ENGINE, batch, context + d_context, sm).seconds)
    pre = table.prefill(ENGINE, context, sm).seconds
    assert _no_more(table.prefill(ENGINE, context, more_sm).seconds, pre)
    assert _no_more(pre, table.prefill(ENGINE, context + d_context, sm).seconds)
    assert _no_more(pre, table.prefill(ENGINE, context, sm, batch + d_batch).seconds)


def test_lookups_take_microseconds(table: TableLatency) -> None:
    engine = EngineShape(ENGINE.gpu, ENGINE.model, ENGINE.tp)  # a fresh, equal object
    n = 20_000
    start = time.perf_counter()
    for i in range(n):
        table.decode_step(engine, 1 + i % 16, 300.0, 75.0)
        table.prefill(engine, 700, 20 + i % 80)
    per_call = (time.perf_counter() - start) / (2 * n)
    assert per_call < 20e-6


def test_shipped_decode_points_read_back_at_or_just_above_their_measurement() -> None:
    from fineserve.profiles.composite import published_profiles

    shipped = published_profiles()
    table = TableLatency(shipped)
    raised = []
    for p in shipped:
        if p.phase is Phase.DECODE:
            answer = table.decode_step(p.engine.shape(), p.batch, p.tokens, p.sm_pct)
            assert answer.source is MEASURED
            raised.append(answer.seconds / p.latency_s - 1)
    raised.sort()
    assert raised[0] >= 0.0  # running maxima only ever raise a point
    assert sum(r == 0 for r in raised) >= 0.3 * len(raised)
    assert raised[len(raised) // 2] < 0.02  # the median point moves by under 2%


def test_profiles_on_disk_work_end_to_end(tmp_path: Path) -> None:
    from fineserve.profiles.schema import load_profile, save_profile

    save_profile(synthetic(), tmp_path / "p.parquet")
    table = TableLatency(load_profile(tmp_path / "p.parquet"))
    assert table.decode_step(ENGINE, 4, 500, 50).seconds == decode_f(50, 4, 500)
