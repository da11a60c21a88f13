"""The two screens of measured points: repeats that disagree, and a step that more SMs made
much slower (session 7's Llama-3.2-3B at SM 100)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.profiles.quality import SLOWER_LIMIT, SPREAD_LIMIT, screen
from fineserve.profiles.schema import LatencyPoint

H100 = "H100-SXM-80GB"


def _p(sm: float, ms: float, tokens: int = 512, spread: float = 0.01, phase: str = "prefill",
       model: str = "llama-3.2-3b", batch: int = 1) -> LatencyPoint:  # fmt: skip
    return LatencyPoint(H100, model, "bf16", "bf16", 1, sm, phase, batch, tokens,  # type: ignore[arg-type]
                        ms / 1e3, 5, spread)


def _keys(points) -> set[tuple]:
    return {(p.model, p.sm_pct, p.phase.value, p.batch, p.tokens) for p in points}


def test_session_7s_3b_at_sm_100_is_left_out_with_its_whole_turn() -> None:
    points = [_p(100, 27.75, 128, 0.118), _p(50, 4.20, 128), _p(30, 5.04, 128),
              _p(100, 27.27, 512, 0.014), _p(50, 9.34, 512), _p(30, 14.54, 512),
              _p(100, 28.31, 2048, 0.182), _p(50, 33.0, 2048), _p(30, 50.0, 2048),
              _p(100, 3.71, 256, phase="decode"), _p(50, 3.49, 256, phase="decode")]
    screened = screen(points)
    assert _keys(screened.rejected) == {("llama-3.2-3b", 100.0, "prefill", 1, t)
                                        for t in (128, 512, 2048)}
    assert len(screened.kept) == 8  # SM 50 / 30 prefill, both decode points (6% over)
    lines = dict(zip((p.tokens for p in screened.rejected), screened.reasons(), strict=True))
    assert "1 x 512: 27.27 ms, 192% slower than at SM 50 (9.34 ms) > 25%" in lines[512]
    assert "561% slower than at SM 50 (4.20 ms)" in lines[128]  # the fastest below
    # not slower than SM 50 itself: left out as measured in the same slow turn
    assert "1 x 2048: 28.31 ms, same turn as 1 x 128: 561% slower" in lines[2048]


def test_a_point_within_the_tolerance_or_faster_stays() -> None:
    # session 7's decode rows at SM 100, 5-8% over SM 50: noise, kept
    points = [_p(100, 6.92, 256, phase="decode", batch=8), _p(50, 6.41, 256, phase="decode",
                                                               batch=8),
              _p(100, 30.86 / 1.3, 512), _p(50, 30.86 / 1.3 / (1 + SLOWER_LIMIT), 512)]
    screened = screen(points)
    assert not screened.rejected and len(screened.kept) == 4


def test_only_the_same_engine_and_cell_is_compared() -> None:
    points = [_p(100, 30.0, 512), _p(50, 10.0, 2048), _p(50, 10.0, 512, model="llama-3.1-8b"),
              _p(50, 10.0, 512, batch=4)]
    assert not screen(points).rejected


def test_a_noisy_point_below_is_no_reference_and_is_left_out_for_its_spread() -> None:
    slow, noisy = _p(100, 27.0, 512), _p(50, 9.0, 512, spread=SPREAD_LIMIT + 0.1)
    screened = screen([slow, noisy])
    assert list(screened.kept) == [slow]
    (line,) = screened.reasons()
    assert "SM 50" in line and "repeats spread 35% > 25%" in line


def _tables():
    """Points of distinct cells (a table merges repeats of one cell into one point)."""
    where = st.tuples(st.sampled_from(["prefill", "decode"]), st.sampled_from([1, 8]),
                      st.sampled_from([128, 512]), st.sampled_from([30.0, 50.0, 100.0]))
    value = st.tuples(st.floats(0.5, 100.0), st.floats(0.0, 0.6))
    return st.dictionaries(where, value, max_size=24).map(lambda d: [
        _p(sm, ms, tokens, spread, phase, batch=batch)
        for (phase, batch, tokens, sm), (ms, spread) in d.items()])


@settings(max_examples=200, deadline=None)
@given(_tables(), st.floats(0.1, 10.0))
def test_screen_partitions_and_kept_points_pass_both_rules(points, scale) -> None:
    screened = screen(points)
    assert len(screened.kept) + len(screened.rejected) == len(points)
    assert len(screened.reasons()) == len(screened.rejected)
    kept = list(screened.kept)
    assert all(p.rel_spread <= SPREAD_LIMIT for p in kept)
    for p in kept:
        for q in kept:
            if (p.phase, p.batch, p.tokens) == (q.phase, q.batch, q.tokens) and \
                    q.sm_pct < p.sm_pct:
                assert p.latency_s <= q.latency_s * (1 + SLOWER_LIMIT) * (1 + 1e-9)
    # no hole inside a grid: an (engine, phase, SM share) turn is kept or left out whole
    turn = lambda p: (p.engine, p.phase, p.sm_pct)  # noqa: E731
    assert not {turn(p) for p in kept} & {turn(p) for p in screened.rejected}
    # a change of unit changes nothing
    scaled = screen([_p(p.sm_pct, p.latency_s * 1e3 * scale, p.tokens, p.rel_spread,
                        p.phase.value, batch=p.batch) for p in points])
    assert len(scaled.kept) == len(screened.kept)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.5, 100.0), min_size=3, max_size=3))
def test_latencies_that_fall_with_more_sms_are_all_kept(values) -> None:
    slow, mid, fast = sorted(values, reverse=True)
    points = [_p(30, slow), _p(50, mid), _p(100, fast)]
    assert not screen(points).rejected
