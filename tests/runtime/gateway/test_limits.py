"""Each engine's in-flight limit starts at, and never exceeds, its plan's batch cap."""

from hypothesis import given
from hypothesis import strategies as st

from fineserve.runtime.gateway.config import GatewayConfig
from fineserve.runtime.gateway.upstream import make_upstreams
from fineserve.scheduler import SchedulerConfig, SloTargets
from fineserve.scheduler.adaptive import AdaptivePolicy
from fineserve.scheduler.estimator import ServiceEstimator


@given(lo=st.integers(1, 64), extra=st.integers(0, 2000), batch=st.integers(1, 4096))
def test_the_limit_starts_at_the_cap_and_stays_within_every_bound(lo, extra, batch):
    base = SchedulerConfig(policy="adaptive", initial_limit=lo, min_limit=lo,
                           max_limit=lo + extra)
    cfg = base.for_engine(batch)
    assert cfg.initial_limit == cfg.max_limit
    assert cfg.min_limit == lo <= cfg.max_limit <= max(lo, min(batch, lo + extra))
    if lo <= batch <= lo + extra:
        assert cfg.max_limit == batch


def test_comfortable_windows_never_raise_the_limit_past_the_batch_cap():
    cfg = SchedulerConfig(policy="adaptive", max_limit=1024).for_engine(249)
    pol = AdaptivePolicy(SloTargets(1.0, 0.08), cfg, ServiceEstimator(0.0))
    now = 0.0
    for _ in range(300):  # every window far inside the SLOs, the limit always reached
        pol.on_dispatch(pol.limit, now)
        for _ in range(16):
            now += 0.01
            pol.on_first_token(0.01, pol.epoch, now)
            pol.on_finish(0.001, True, pol.epoch, now)
    assert pol.limit == 249


def test_the_gateway_gives_each_engine_its_own_ceiling():
    gw = GatewayConfig.model_validate({"routes": [{
        "model": "chat", "ttft_slo_s": 1.0, "tpot_slo_s": 0.08, "upstreams": [
            {"engine_id": "big", "base_url": "http://127.0.0.1:8101",
             "served_model_name": "chat", "max_batch": 384, "gpu": "0"},
            {"engine_id": "small", "base_url": "http://127.0.0.1:8102",
             "served_model_name": "chat", "max_batch": 249, "gpu": "0"}]}]})
    ups = make_upstreams(gw)["chat"]
    assert [(u.sched.config.initial_limit, u.sched.config.max_limit) for u in ups] == [
        (384, 384), (249, 249)]
