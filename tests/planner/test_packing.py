"""packing.py: the slack aggregate's weights (review finding 9) and a packing's best traffic
split (finding 8): relax-and-pack compared packings by the aggregate's split, spread evenly."""

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.planner.improve import _State, headroom_of, split_by_capacity
from fineserve.planner.options import engine_options
from fineserve.planner.packing import (
    SLACK_UNIT,
    Aggregate,
    best_split,
    pack,
    slack_weights,
    solve_aggregate,
)
from fineserve.planner.scenarios import muxserve_scale
from fineserve.planner.schema import KVMode
from fineserve.planner.variables import H_SCALE, scale
from fineserve.profiles.composite import default_latency_model
from tests.planner.test_packing_improve import LAT, pooled_instance


def _one_model(rate: float, kv_mode=KVMode.POOLED):
    """llama-3.1-8b bf16 on 2 H100s; options 1 and 2 are TP-1 at 50% and 100% SMs."""
    inst = pooled_instance([0], [rate], 2, kv_mode=kv_mode)
    return scale(inst, engine_options(inst, LAT))


def _skewed(d, share: float) -> Aggregate:
    """One engine each of options 1 and 2, option 1 carrying ``share`` of what it can (the
    aggregate routes within memory only, not towards headroom)."""
    m = d.models[0]
    low = min(d.mu[m, 1], round(share * d.lam[m]))
    return Aggregate(0, 0, {(m, 1): 1, (m, 2): 1}, {(m, 1): low, (m, 2): d.lam[m] - low})


def _rows_hold(d, placed) -> None:
    used: dict[int, int] = {}
    for m, i, u, f in placed:
        assert 0 <= f <= d.mu[m, i]
        for g in u.gpus:
            used[g] = used.get(g, 0) + d.w[m, i] + (d.kappa[m, i] * f if d.pooled else 0)
    assert all(used[g] <= d.mem_cap[g] for g in used)
    for m in d.models:
        assert sum(p.flow for p in placed if p.model == m) == d.lam[m]


def test_a_packing_is_rerouted_to_its_capacity_headroom():
    """30 req/s over two engines, the aggregate's split putting 24.5 req/s on one that can
    take 24.5 (headroom 1.0); in proportion to capacity both reach capacity / 30."""
    d = _one_model(30.0)
    m = d.models[0]
    packed = pack(d, _skewed(d, 1.0), d.h_min, 10.0, 1)
    assert packed is not None and len(packed) == 2
    assert headroom_of(d, packed) == H_SCALE  # what relax-and-pack used to compare
    better = best_split(d, packed, 10.0, 1)
    capacity = H_SCALE * sum(d.mu[m, p.option] for p in packed) // d.lam[m]
    assert capacity > H_SCALE * 1.3  # the packer may lower the larger engine's SM share
    assert capacity - 2 <= headroom_of(d, better) <= capacity
    assert [(p.model, p.option, p.group) for p in better] == [
        (p.model, p.option, p.group) for p in packed]  # the engines stay where they are
    _rows_hold(d, better)


def test_best_split_keeps_a_packing_it_cannot_improve_or_has_no_time_for():
    d = _one_model(30.0)
    packed = pack(d, _skewed(d, 1.0), d.h_min, 10.0, 1)
    assert packed is not None
    assert best_split(d, packed, 0.0, 1) is packed
    settled = best_split(d, packed, 10.0, 1)
    assert best_split(d, settled, 10.0, 1) is settled
    static = _one_model(30.0, KVMode.STATIC)  # split in proportion to capacity already
    packed = pack(static, _skewed(static, 1.0), static.h_min, 10.0, 1)
    assert packed == split_by_capacity(static, packed)
    assert best_split(static, packed, 10.0, 1) is packed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(2.0, 50.0), share=st.floats(0.0, 1.0), mem=st.floats(0.35, 1.0))
def test_best_split_routes_everything_within_the_rows_and_never_lowers_headroom(
        rate, share, mem):
    """Any split the aggregate may give (``share``), with GPUs down to 35% of their memory."""
    d = _one_model(rate)
    d = replace(d, mem_cap={g: int(c * mem) for g, c in d.mem_cap.items()})
    packed = pack(d, _skewed(d, share), d.h_min, 10.0, 1)
    if packed is None:  # the aggregate's split does not fit this little memory
        return
    better = best_split(d, packed, 10.0, 1)
    _rows_hold(d, better)
    assert headroom_of(d, better) >= headroom_of(d, packed)
    prop = split_by_capacity(d, packed)
    state = _State(d, packed)
    if state.fits(d.models[0], [(i, u, f) for _, i, u, f in prop]):  # no memory limit
        assert headroom_of(d, better) >= headroom_of(d, prop) - 1


def test_slack_weights_keep_every_kv_coefficient():
    """Review finding 9: in millionths of a GPU, KV per milli-req/s truncated to a few units
    or 0 (19-model instance: median 7% lost); in billionths it is exact to 1%."""
    inst = muxserve_scale()
    d = scale(inst, engine_options(inst, default_latency_model()))
    cap = max(d.mem_cap.values())
    engine, kv = slack_weights(d)
    for (m, i), k in kv.items():
        exact = d.options[m][i].tp * SLACK_UNIT * d.kappa[m, i] / cap
        assert exact > 0 and k == pytest.approx(exact, rel=0.01, abs=1)
        assert k > 0 and engine[m, i] > 0


def test_the_slack_aggregate_routes_where_traffic_takes_least_memory():
    """Its KV term has weight: at the engines it chose, the traffic fills the options whose
    milli-req/s takes least memory first (the least KV any split of them can have)."""
    d = _one_model(30.0)
    agg = solve_aggregate(d, "slack", seconds=10.0, workers=1)
    assert agg is not None
    _, kv = slack_weights(d)
    m = d.models[0]
    least, left = 0, d.lam[m]
    for k in sorted(agg.counts, key=lambda k: kv[k]):
        f = min(left, d.mu[k] * agg.counts[k])
        least, left = least + kv[k] * f, left - f
    assert left == 0
    assert sum(kv[k] * f for k, f in agg.flows.items()) == least
