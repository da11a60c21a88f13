"""Repeat statistics: median and (max - min) / median."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.measure.stats import median, rel_spread


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
