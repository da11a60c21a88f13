"""The gateway config of a multi-node deployment: every plan engine at its node's address.

The single-host ``build_gateway_config`` does the work (routes, traffic-split weights, SLOs,
GPU arbiters, API keys); it is fed ``HostLaunch`` values carrying each engine's node IP, so
one route spans replicas on several hosts. GPU ids in the plan are global, so engines of
different nodes never share an arbiter.
"""

from __future__ import annotations

from collections.abc import Mapping

from fineserve.planner.schema import Plan
from fineserve.runtime.gateway.config import GatewayConfig
from fineserve.runtime.gateway_config import build_gateway_config
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.ray.node import HostLaunch

Endpoint = tuple[str, int]  # (host, port) an engine listens on


def ray_gateway_config(plan: Plan, endpoints: Mapping[str, Endpoint], opts: DeployOptions
                       ) -> GatewayConfig:
    """Routes over the engines of ``endpoints`` (engine id -> where it listens)."""
    launches = [HostLaunch(e.engine_id, e.model, endpoints[e.engine_id][1], e.gpus, e.sm_pct,
                           e.max_batch, (), (), host=endpoints[e.engine_id][0])
                for e in plan.engines if e.engine_id in endpoints]
    return build_gateway_config(plan, launches, opts)
