"""What the simulated gateway sees and holds: vLLM's waiting gauge as exported (arrivals
during a step not counted), each engine's limit capped at its batch cap, and time-sliced
per-engine decode factors."""

import pytest

from fineserve.errors import SpecError
from fineserve.planner.schema import Slo
from fineserve.profiles.latency import EngineShape
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.admission import Admission
from fineserve.sim.engine import EngineSim, SimRequest
from fineserve.sim.stepscale import EngineScaledLatency
from tests.planner.fakes import ConstLatency, demand, instance
from tests.sim.test_sim_models import shared_gpu_plan


def _engine(max_batch=8, name="a-0", model="a"):
    inst = instance([demand(model)], gpus=1)
    shape = EngineShape(inst.cluster.gpus[0].spec, inst.models[0].spec, 1)
    return EngineSim(name, shape, 100, max_batch, 1e6, ConstLatency(0.01, 0.01), gpus=(0,))


def test_a_request_arriving_mid_step_is_not_in_the_exported_waiting_gauge():
    e = _engine()
    e.arrive(SimRequest(0, "a", 0.0, 16, 4))
    e.start_step(0.0)
    assert e.waiting_gauge == 0
    e.arrive(SimRequest(1, "a", 0.001, 16, 4))  # during the step: vLLM has not seen it
    assert len(e.waiting) == 1 and e.waiting_gauge == 0
    e.finish_step(0.01)
    e.start_step(0.01)  # scheduled now: nothing left over
    assert e.waiting_gauge == 0 and not e.waiting


def test_requests_left_over_by_a_full_batch_are_in_the_gauge():
    e = _engine(max_batch=1)
    for i in range(3):
        e.arrive(SimRequest(i, "a", 0.0, 16, 4))
    e.start_step(0.0)
    assert e.waiting_gauge == 2


@pytest.mark.parametrize(("at_batch", "ceiling"), [(True, 64), (False, 1024)])
def test_each_engines_limit_ceiling_is_its_batch_cap_unless_replaying_an_old_gateway(
        at_batch, ceiling):
    plan = shared_gpu_plan(batch=64)
    engines = [_engine(64, e.engine_id, e.model) for e in plan.engines]
    adm = Admission(engines, {e.engine_id: e for e in plan.engines},
                    {m.name: Slo(1.0, 0.1) for m in plan.models},
                    SchedulerConfig(max_limit=1024), limit_at_batch=at_batch)
    assert {s.config.max_limit for s in adm.sched.values()} == {ceiling}
    assert {s.config.initial_limit for s in adm.sched.values()} == {64}


def test_time_sliced_factors_apply_per_engine_both_ways():
    e = _engine()
    other = EngineShape(e.shape.gpu, demand("x", model="llama-3.2-3b").spec, 1)
    lat = EngineScaledLatency(ConstLatency(0.01, 0.02), ((e.shape.model.key, 0.5),))
    assert lat.decode_step(e.shape, 8, 100, 100).seconds == pytest.approx(0.01)
    assert lat.decode_step(other, 8, 100, 100).seconds == pytest.approx(0.02)  # not named
    assert lat.prefill(e.shape, 100, 100).seconds == pytest.approx(0.01)  # prefill as is
    with pytest.raises(SpecError, match="positive"):
        EngineScaledLatency(ConstLatency(0.01, 0.02), (("k", 0.0),))
