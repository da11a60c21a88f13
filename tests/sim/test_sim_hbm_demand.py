"""HBM demand measured against the profiled step (the interference fit's definition), not the
calibrated one: a calibration that stretches steps must not hide bandwidth contention."""

import pytest

from fineserve.metrics.summary import records_frame
from fineserve.planner.schema import KVMode
from fineserve.profiles.measure.interference_fit import SlowdownParams
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.interference import HbmShare, InterferenceParams
from fineserve.sim.stepscale import EngineScaledLatency, ScaledLatency, profiled
from fineserve.sim.timeslice import TimeSliceShare
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths
from fineserve.workload.trace import ModelLoad, generate
from tests.planner.fakes import FakeLatency
from tests.sim.test_sim_models import lone_plan, shared_gpu_plan

FIT = SlowdownParams(a=0.0, capacity=1.0)
GIB = 2**30


def test_demand_is_bytes_over_the_time_alone_when_given():
    share = HbmShare({0: 1e12}, InterferenceParams(FIT, FIT))
    t1, d1 = share.begin((0,), 0.02, 8e9, True, 0.01)  # 8e9 B in 10 ms alone: 0.8 of peak
    assert t1 == 0.02 and d1 == pytest.approx(8e11)
    t2, d2 = share.begin((0,), 0.02, 8e9, True, 0.01)  # 1.6 x peak: stretched by 1.6
    assert t2 == pytest.approx(0.032)
    share.end((0,), d1)
    share.end((0,), d2)
    # without the time alone the calibrated 20 ms sets the demand: 0.4 + 0.4, no contention
    t3, d3 = share.begin((0,), 0.02, 8e9, True)
    t4, _ = share.begin((0,), 0.02, 8e9, True)
    assert d3 == pytest.approx(4e11) and t4 == 0.02


def test_time_slicing_ignores_the_time_alone():
    ts = TimeSliceShare([0])
    assert ts.begin((0,), 0.01, 1e9, True, 0.005)[0] == 0.01
    assert ts.begin((0,), 0.01, 1e9, True, 0.005)[0] == pytest.approx(0.02)


def test_profiled_unwraps_the_calibration():
    base = FakeLatency()
    cal = EngineScaledLatency(ScaledLatency(base, decode_scale=2.0), (("x", 0.5),))
    assert profiled(cal) is base and profiled(base) is base


def _run(plan, trace, latency, on: bool):
    tight = SlowdownParams(a=0.0, capacity=0.5)
    opts = SimOptions(interference=InterferenceParams(tight, tight), demand_from_profile=on)
    return records_frame(simulate(plan, trace, latency, options=opts).records)


def test_a_calibrated_stretch_no_longer_hides_contention_and_a_lone_engine_is_untouched():
    trace = generate([ModelLoad("a", Poisson(15), FixedLengths(300, 100)),
                      ModelLoad("b", Poisson(15), FixedLengths(300, 100))], 20, 1)
    plan = shared_gpu_plan(kv_mode=KVMode.STATIC, floors=(20 * GIB, 20 * GIB))
    slow = ScaledLatency(FakeLatency(), decode_scale=3.0)
    off, on = _run(plan, trace, slow, False), _run(plan, trace, slow, True)
    assert on.e2e_s.mean() > off.e2e_s.mean()  # demand over the profile's shorter step
    lone = lone_plan()
    tr = generate([ModelLoad("a", Poisson(10), FixedLengths(300, 100))], 20, 2)
    assert list(_run(lone, tr, slow, True).finished_s) == list(
        _run(lone, tr, slow, False).finished_s)

