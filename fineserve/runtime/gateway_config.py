"""Plan -> gateway config: one route per model, one upstream per local engine.

Upstream weights are the plan's traffic split (``models.<name>.traffic``), SLOs the plan's
per-model targets, ``gpu`` the engine's GPU set (engines on one GPU share an arbiter), and
``max_batch`` the plan's batch cap as the scheduler's starting in-flight limit. Validation is
the gateway's own (``parse_config``), so a bad host/key combination is one SpecError line.
"""

from __future__ import annotations

from fineserve.planner.schema import Plan
from fineserve.runtime.engine_args import EngineLaunch
from fineserve.runtime.gateway.config import GatewayConfig, parse_config
from fineserve.runtime.options import DeployOptions

MIN_WEIGHT = 1e-6  # a replica the plan gives no traffic still serves when others are down


def build_gateway_config(plan: Plan, launches: list[EngineLaunch], opts: DeployOptions
                         ) -> GatewayConfig:
    routes = []
    for m in plan.models:
        mine = [x for x in launches if x.model == m.name]
        if not mine:
            continue  # unplaced, or served from another node
        by_id = {e.engine_id: e for e in plan.engines_of(m.name)}
        total = sum(by_id[x.engine_id].rate_rps for x in mine)
        ups = [{
            "engine_id": x.engine_id, "base_url": x.url, "served_model_name": x.model,
            "weight": max(MIN_WEIGHT, by_id[x.engine_id].rate_rps / total if total > 0
                          else 1.0 / len(mine)),
            "gpu": ",".join(str(g) for g in x.gpus), "max_batch": x.max_batch,
        } for x in mine]
        routes.append({"model": m.name, "upstreams": ups, "ttft_slo_s": m.slo.ttft_s,
                       "tpot_slo_s": m.slo.tpot_s})
    data: dict = {"host": opts.host, "port": opts.port, "api_keys": list(opts.api_keys),
                  "routes": routes, "drain_timeout_s": opts.gateway_drain_s}
    sched: dict = {}
    if opts.scheduler_max_queue is not None:
        sched["max_queue"] = opts.scheduler_max_queue
    if opts.scheduler_policy is not None:
        sched["policy"] = opts.scheduler_policy
    if sched:
        data["scheduler"] = sched
    return parse_config(data, "deploy (gateway config)")
