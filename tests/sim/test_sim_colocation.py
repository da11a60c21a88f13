"""SimOptions.colocation_when_busy: the calibration's common co-location factor applies only
while the engine's MPS neighbours have work (colocation.py)."""

import numpy as np
import pytest

from fineserve.planner.schema import KVMode
from fineserve.profiles.latency import EngineShape
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.colocation import Neighbours
from fineserve.sim.stepscale import EngineScaledLatency, ScaledLatency, without_colocation
from fineserve.workload.trace import Trace
from tests.planner.fakes import ConstLatency, FakeLatency
from tests.sim.test_sim_models import lone_plan, shared_gpu_plan

GIB = 2**30


def _trace(rows):
    arr, model, p, o = zip(*rows, strict=True)
    return Trace(np.array(arr, float), np.array(model, object), np.array(p, np.int64),
                 np.array(o, np.int64))


def _finish(trace, on, sharing="mps"):
    plan = shared_gpu_plan(kv_mode=KVMode.STATIC, floors=(20 * GIB, 20 * GIB))
    lat = ScaledLatency(ConstLatency(0.01, 0.01), decode_scale=3.0)
    opts = SimOptions(colocation_when_busy=on, sharing=sharing)
    recs = simulate(plan, trace, lat, options=opts).records
    return {r.index: r.finished_s for r in recs}


def test_the_factor_applies_only_while_a_neighbour_has_work():
    # a alone: 1 prefill step (10 ms) + 99 decode steps of 10 ms (30 ms calibrated)
    alone = _trace([(0.0, "a", 16, 100)])
    assert _finish(alone, False)[0] == pytest.approx(0.01 + 99 * 0.03)
    assert _finish(alone, True)[0] == pytest.approx(0.01 + 99 * 0.01)
    # b busy throughout a's life: the calibrated step, flag or not
    busy = _trace([(0.0, "a", 16, 100), (0.0, "b", 16, 400)])
    assert _finish(busy, True)[0] == pytest.approx(_finish(busy, False)[0])
    # b done after ~1 s: a's later steps drop to the profile's, b is unchanged
    drain = _trace([(0.0, "a", 16, 200), (0.0, "b", 16, 30)])
    off, on = _finish(drain, False), _finish(drain, True)
    assert on[1] == pytest.approx(off[1])
    assert on[0] < off[0] - 0.5


def test_time_slicing_is_untouched():
    drain = _trace([(0.0, "a", 16, 200), (0.0, "b", 16, 30)])
    assert _finish(drain, True, "time-sliced") == _finish(drain, False, "time-sliced")


def test_without_colocation_divides_the_scaled_step_and_keeps_per_model_factors():
    base = FakeLatency()
    cal = EngineScaledLatency(ScaledLatency(base, 1.3, 1.2, 3e-5, True), (("x", 0.8),))
    solo = without_colocation(cal)
    assert solo == EngineScaledLatency(ScaledLatency(base, 1.0, 1.2, 3e-5 / 1.3, True),
                                       (("x", 0.8),))
    assert without_colocation(base) is None
    assert without_colocation(ScaledLatency(base, 1.0, decode_s_per_seq=3e-5)) is None
    # the calibrated step over the factor, per-sequence term included
    plan = lone_plan()
    shape = EngineShape(plan.cluster.gpus[0].spec, plan.models[0].spec, 1)
    full = cal.inner.decode_step(shape, 300, 1000, 30).seconds
    assert solo.inner.decode_step(shape, 300, 1000, 30).seconds == pytest.approx(full / 1.3)


class _E:
    def __init__(self, sm, idle, gpus=(0,)):
        self.sm_pct, self.idle, self.gpus = sm, idle, gpus


def test_busy_is_the_sm_weighted_fraction_of_neighbours_with_work():
    a, b, c, d = _E(40, False), _E(30, False), _E(20, True), _E(10, False)
    n = Neighbours([a, b, c, d])
    assert n.busy(a) == pytest.approx(40 / 60)  # b and d of b, c, d
    assert n.busy(c) == pytest.approx(1.0)
    lone = _E(100, False, (1,))
    assert Neighbours([lone]).busy(lone) == 0.0
