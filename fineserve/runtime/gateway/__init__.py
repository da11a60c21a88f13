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

_SERVER = ("serve", "serve_async", "start")


def __getattr__(name: str):
    """The server (aiohttp) loads on first use: the simulator imports ``gateway.limits``
    without it."""
    if name in _SERVER:
        from fineserve.runtime.gateway import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["GatewayConfig", "ModelRoute", "SchedulerSection", "UpstreamConfig", "load_config",
           "parse_config", "serve", "serve_async", "start"]
