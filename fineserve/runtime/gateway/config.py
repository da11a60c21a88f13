"""Gateway configuration: which public model names go to which engines, and how hard to push them.

Written by ``fineserve deploy`` from the plan (one ``ModelRoute`` per model, one
``UpstreamConfig`` per engine serving it) and read by ``python -m fineserve.runtime.gateway
CONFIG``. JSON or YAML; unknown keys are rejected so typos surface, and every problem is one
``SpecError`` line naming the field, e.g. ``gw.json: routes[0].upstreams[1].weight: Input
should be greater than 0``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fineserve.errors import SpecError
from fineserve.planner.spec import read_yaml

PositiveS = Annotated[float, Field(gt=0, le=3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UpstreamConfig(_Strict):
    """One engine (a vLLM OpenAI server) serving a model."""

    engine_id: str = Field(min_length=1)
    # e.g. http://127.0.0.1:8101; plain HTTP (engines sit next to the gateway, see client.py)
    base_url: str = Field(pattern=r"^http://[^/\s]+/?$")
    served_model_name: str = Field(min_length=1)  # the name the engine knows the model by
    weight: Annotated[float, Field(gt=0)] = 1.0  # the plan's traffic split
    gpu: str = ""  # engines on the same GPU share a GpuArbiter
    # the engine's batch cap (vLLM --max-num-seqs): the in-flight limit starts here and never
    # exceeds it (SchedulerConfig.for_engine); more would only queue inside vLLM
    max_batch: Annotated[int, Field(ge=1, le=65536)] = 8

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of ``base_url`` (port 80 when it names none)."""
        u = urlsplit(self.url)
        return u.hostname or "", u.port or 80


class ModelRoute(_Strict):
    """A public model name and the engines that serve it."""

    model: str = Field(min_length=1)  # the name clients send
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    ttft_slo_s: PositiveS
    tpot_slo_s: PositiveS
    priority: int = 0  # higher is served first when engines on one GPU compete


class SchedulerSection(_Strict):
    """Local scheduler settings shared by every engine (see fineserve.scheduler)."""

    policy: Literal["fcfs", "deadline", "adaptive"] = "adaptive"
    min_limit: Annotated[int, Field(ge=1)] = 1
    # gateway-wide cap over every engine's in-flight limit; each engine is also capped at its
    # plan's batch cap (SchedulerConfig.for_engine), which is the real bound: vLLM runs no more
    max_limit: Annotated[int, Field(ge=1)] = 1024
    max_queue: Annotated[int, Field(ge=0, le=1_000_000)] = 256  # per engine; beyond -> 429
    late: Literal["reject", "deprioritise"] = "reject"
    est_prefill_s_per_token: Annotated[float, Field(ge=0)] = 0.0
    late_timeout_factor: Annotated[float, Field(ge=1)] = 4.0  # deprioritised: expire later
    min_retry_after_s: Annotated[float, Field(ge=0)] = 0.1  # floor of every Retry-After
    poll_interval_s: Annotated[float, Field(gt=0, le=1)] = 0.005  # queue dispatch timer

    @model_validator(mode="after")
    def _limits(self) -> SchedulerSection:
        if self.min_limit > self.max_limit:
            raise ValueError("min_limit must not exceed max_limit")
        return self


class GatewayConfig(_Strict):
    """Everything the gateway process needs."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # 0 = any free port
    api_keys: list[Annotated[str, Field(min_length=1)]] = []  # required off loopback
    routes: list[ModelRoute] = Field(min_length=1)
    scheduler: SchedulerSection = SchedulerSection()
    engine_poll_interval_s: PositiveS = 0.5  # how often each engine's /metrics is scraped
    health_interval_s: PositiveS = 0.5  # how often a down engine's /health is probed
    upstream_timeout_s: PositiveS = 600.0  # whole request to an engine
    connect_timeout_s: PositiveS = 2.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 16 << 20
    drain_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    default_max_tokens: Annotated[int, Field(ge=1)] = 256  # estimate when a request sets none

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        names = [r.model for r in self.routes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dup)}")
        ids = [u.engine_id for r in self.routes for u in r.upstreams]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"engine ids must be unique; repeated: {', '.join(dup)}")
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(f"api_keys must be set when host {self.host!r} is not loopback")
        return self

    def route(self, model: str) -> ModelRoute | None:
        return next((r for r in self.routes if r.model == model), None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or 0.0.0.0: reachable from elsewhere


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: object, source: str = "gateway config") -> GatewayConfig:
    """Validate a parsed document; any problem is one SpecError naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with 'routes'")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against docs/gateway.md)"
        where = _where(err["loc"])
        raise SpecError(f"{source}: {where + ': ' if where else ''}{msg}") from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read a gateway config from a JSON or YAML file (JSON is read as YAML)."""
    return parse_config(read_yaml(path, "gateway config"), source=Path(path).name)
