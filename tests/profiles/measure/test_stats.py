"""Repeat statistics: median and (max - min) / median."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.measure.stats import (
    median,
    medians_of,
    rel_spread,
    spread_without_one,
)


def test_spread_of_repeats():
    assert rel_spread([0.10, 0.11, 0.09]) == pytest.approx(0.2)
    assert rel_spread([0.5]) == 0.0
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_spread_rejects_empty_and_non_positive():
    with pytest.raises(ValueError):
        rel_spread([])
    with pytest.raises(ValueError):
        rel_spread([-1.0, 0.0, 0.5])


@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=20), st.floats(0.1, 100.0))
def test_spread_is_scale_free_and_non_negative(values, scale):
    spread = rel_spread(values)
    assert spread >= 0
    assert rel_spread([v * scale for v in values]) == pytest.approx(spread, rel=1e-9, abs=1e-12)


def test_a_repeat_of_several_runs_is_their_median():
    runs = [7.8, 5.0, 7.9, 7.7, 7.8, 7.6]  # one late blocker stamp in the first repeat
    assert medians_of(runs, 3) == (7.8, 7.7)
    assert medians_of(runs, 1) == tuple(runs)
    with pytest.raises(ValueError, match="groups of 4"):
        medians_of(runs, 4)
    with pytest.raises(ValueError):
        medians_of(runs, 0)


def test_spread_without_one_tells_one_outlier_from_a_noisy_point():
    one_outlier = [4.97, 7.40, 7.79, 7.81, 7.81]  # bf16 prefill 1 x 128, SM 100 (2026-11-26)
    assert rel_spread(one_outlier) == pytest.approx(0.364, abs=1e-3)
    assert spread_without_one(one_outlier) == pytest.approx(0.41 / 7.80, rel=1e-6)
    assert spread_without_one([1.0, 1.1, 1.2, 1.3, 1.4]) == pytest.approx(0.3 / 1.25)
    assert spread_without_one([1.0, 2.0]) == rel_spread([1.0, 2.0])


@given(st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=12), st.integers(1, 4))
def test_medians_never_leave_the_runs_range_nor_widen_it(runs, size):
    runs = runs[: len(runs) - len(runs) % size] or runs[:1] * size
    repeats = medians_of(runs, size)
    assert len(repeats) == len(runs) // size
    assert min(runs) <= min(repeats) and max(repeats) <= max(runs)
    assert rel_spread(repeats) * median(repeats) <= rel_spread(runs) * median(runs) + 1e-12
    assert spread_without_one(repeats) <= rel_spread(repeats) + 1e-12
