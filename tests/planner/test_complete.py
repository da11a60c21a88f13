"""Completing a dive's mix (complete.py): with GPUs taken out of a feasible mix, the
completion always exists (the removed GPUs are one) and what it returns is a feasible mix that
keeps the rest; without room within the cap it returns nothing."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.complete import MAX_GPUS, complete, kept_part
from fineserve.planner.dive import dive
from fineserve.planner.master import Column
from tests.planner.test_dive import _assert_mix_is_feasible, _pooled


def _expand(mix):
    return [c for c, n in mix for _ in range(n)]


def _whole_engines(d, mix):
    ranks: dict[tuple[str, int], int] = {}
    for c, n in mix:
        for m, i, _ in c.ranks:
            ranks[m, i] = ranks.get((m, i), 0) + n
    return all(k % d.options[m][i].tp == 0 for (m, i), k in ranks.items())


def _mix_of(gpus):
    counts: dict[Column, int] = {}
    for c in gpus:
        counts[c] = counts.get(c, 0) + 1
    return tuple(counts.items())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 40), drop=st.integers(1, MAX_GPUS), pick=st.randoms())
def test_completion_of_a_mix_with_gpus_removed_exists_and_is_feasible(seed, drop, pick):
    _, _, d = _pooled(seed)
    cap = sum(d.cost.values())
    found = dive(d, (), cost_cap=cap, seconds=10)
    assert found.mix, "a dive with every GPU allowed always reaches a mix"
    gpus = _expand(found.mix)
    pick.shuffle(gpus)
    kept = _mix_of(gpus[min(drop, len(gpus)):])
    cost = sum(c.cls[1] * n for c, n in found.mix)
    done = complete(d, kept, cost, seconds=10)
    assert done is not None, "the removed GPUs complete the kept part"
    _assert_mix_is_feasible(d, done, cost)
    assert _whole_engines(d, done)
    have = dict(done)
    assert all(have.get(c, 0) >= n for c, n in kept)


def test_no_completion_without_room_under_the_cap():
    _, _, d = _pooled(1)
    cap = sum(d.cost.values())
    found = dive(d, (), cost_cap=cap, seconds=10)
    assert found.mix
    cost = sum(c.cls[1] * n for c, n in found.mix)
    # the whole mix kept, but the cap one GPU below its cost: nothing fits
    assert complete(d, found.mix, cost - 1000, seconds=5) is None
    # nothing kept and more GPUs than MAX_GPUS to fill: not attempted
    _, _, wide = _pooled(1, gpus=MAX_GPUS + 2)
    assert complete(wide, (), sum(wide.cost.values()), seconds=5) is None


def test_kept_part_holds_only_whole_positive_counts():
    a, b, c = (Column(("H100", 1000), ((f"m{j}", 0, 0),)) for j in range(3))
    assert kept_part({a: 2.0, b: 0.5, c: 1.0 + 1e-9}) == ((a, 2), (c, 1))
