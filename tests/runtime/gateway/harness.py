"""Real loopback HTTP for gateway tests: stub engines and a gateway on the test's event loop."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from fineserve.runtime.gateway import parse_config, start
from fineserve.runtime.gateway.server import Running
from fineserve.testing.stub_server import STATE, make_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stub:
    """A stub engine that can be stopped and started again on the same port."""

    def __init__(self, models: tuple[str, ...] = ("m",), port: int | None = None, **kw: Any):
        self.models = models
        self.port = port or free_port()
        self.kw = kw
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> dict:
        assert self.app is not None
        return self.app[STATE]

    async def start(self) -> Stub:
        self.app = make_app(self.models, **self.kw)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def route(model: str, *ups: dict, ttft: float = 5.0, tpot: float = 1.0, **kw: Any) -> dict:
    return {"model": model, "ttft_slo_s": ttft, "tpot_slo_s": tpot, "upstreams": list(ups), **kw}


def upstream(engine_id: str, stub: Stub, served: str = "m", **kw: Any) -> dict:
    return {"engine_id": engine_id, "base_url": stub.url, "served_model_name": served, **kw}


@asynccontextmanager
async def gateway(*routes: dict, **kw: Any) -> AsyncIterator[Running]:
    cfg = parse_config({"port": 0, "routes": list(routes), **kw})
    running = await start(cfg)
    try:
        yield running
    finally:
        await running.shutdown()


async def post(session: aiohttp.ClientSession, url: str, body: dict | bytes,
               path: str = "/v1/completions", headers: dict | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url + path, headers=headers, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def sse_events(raw: bytes) -> list[Any]:
    """Decoded ``data:`` events of an SSE body ([DONE] as the string "[DONE]")."""
    out: list[Any] = []
    for event in raw.split(b"\n\n"):
        event = event.strip()
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of /metrics as ``name{label="v",...}`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)
