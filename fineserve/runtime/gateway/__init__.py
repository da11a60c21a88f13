"""OpenAI-compatible gateway: routes by model to the plan's engines through local schedulers.

``python -m fineserve.runtime.gateway CONFIG`` or ``serve(load_config(path))``; see
docs/gateway.md.
"""

from fineserve.runtime.gateway.config import (
    GatewayConfig,
    ModelRoute,
    SchedulerSection,
    UpstreamConfig,
    load_config,
    parse_config,
)
from fineserve.runtime.gateway.server import serve, serve_async, start

__all__ = ["GatewayConfig", "ModelRoute", "SchedulerSection", "UpstreamConfig", "load_config",
           "parse_config", "serve", "serve_async", "start"]
