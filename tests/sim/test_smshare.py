"""SM contention under MPS oversubscription (``fineserve.sim.smshare``): a step's share is
cut only while the shares in flight on its GPU sum past 100%, in proportion to its cap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.sim.smshare import SmShare, needed


def test_within_100_percent_nothing_changes():
    s = SmShare([0])
    assert s.begin((0,), 40) == 40
    assert s.begin((0,), 60) == 60
    s.end((0,), 40)
    s.end((0,), 60)
    assert s.busy[0] == 0.0


def test_oversubscribed_step_gets_its_proportional_share():
    s = SmShare([0, 1])
    assert s.begin((0,), 55) == 55
    assert s.begin((0,), 35) == 35  # 90%: fits
    assert s.begin((0,), 25) == pytest.approx(25 * 100 / 115, abs=1)  # 115%: cut
    assert s.begin((1,), 80) == 80  # another GPU is not affected


@settings(max_examples=60, deadline=None)
@given(shares=st.lists(st.sampled_from([10.0, 15.0, 20.0, 25.0, 35.0, 55.0, 100.0]),
                       min_size=1, max_size=8))
def test_effective_share_never_exceeds_the_cap_and_the_books_balance(shares):
    s = SmShare([0])
    in_flight = 0.0
    for x in shares:
        eff = s.begin((0,), x)
        in_flight += x
        assert 1.0 <= eff <= x
        if in_flight <= 100:
            assert eff == x
        else:
            assert eff == pytest.approx(x * 100 / in_flight, abs=0.5)
    for x in shares:
        s.end((0,), x)
    s.check_integrity()
    assert s.busy[0] == 0.0


def test_needed_only_when_some_gpu_passes_100():
    assert not needed({0: [40, 20, 20, 20], 1: [100]})
    assert needed({0: [55, 35, 20, 25]})
