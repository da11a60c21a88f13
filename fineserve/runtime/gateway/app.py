"""The gateway: OpenAI-compatible endpoints in front of the plan's engines.

A request's path: check the API key, read the body (size-limited), decode it (``payload``),
look up the model's replicas, take a slot from one replica's local scheduler (``admission``:
may queue, may answer 429), forward (``proxy``), give the slot back, record TTFT / TPOT /
SLO. A replica that refuses connections is marked down and the request moves to the next
one; when none is left the answer is 503.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
from collections.abc import Callable
from functools import partial

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from fineserve.runtime.gateway.admission import Admission, Outcome
from fineserve.runtime.gateway.config import GatewayConfig
from fineserve.runtime.gateway.errors import ApiError
from fineserve.runtime.gateway.metrics import GatewayMetrics, ModelSeries
from fineserve.runtime.gateway.payload import Payload, parse_payload
from fineserve.runtime.gateway.proxy import Served, Unreachable, forward_json, forward_stream
from fineserve.runtime.gateway.upstream import Upstream, make_upstreams, probe_health, watch
from fineserve.scheduler.types import RequestInfo

log = logging.getLogger("fineserve.gateway")
_PATHS = ("/v1/completions", "/v1/chat/completions")  # by ``chat``


def _engine_gauges(u: Upstream) -> tuple[Callable[[], float], ...]:
    """Read at scrape time: limit, in flight, queued, healthy."""
    return (lambda: u.sched.stats.limit, lambda: u.in_flight, lambda: u.queued,
            lambda: float(u.healthy))


def reason_label(reason: str) -> str:
    """A scheduler's reason as a metric label: ``queue full`` -> ``queue_full``; no numbers."""
    head = reason.split("(")[0].split(":")[0].strip().lower()
    return "_".join(head.split()) or "overloaded"


class Gateway:
    """State shared by all requests; ``start()`` / ``stop()`` around serving ``app``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self._keys = tuple(k.encode() for k in config.api_keys)
        self.routes: dict[str, list[Upstream]] = make_upstreams(config)
        # one look-up per request: the model's priority and its metric series
        self._models: dict[str, tuple[int, ModelSeries]] = {}
        for route in config.routes:
            self._models[route.model] = (route.priority, self.metrics.model(route.model))
            self._watch(route.model, self.routes[route.model])
        self.admission = Admission(self.routes, config.scheduler.poll_interval_s)
        self._ids = itertools.count(1)
        self.active = 0  # generation requests being handled (drained on shutdown)
        self._tasks: list[asyncio.Task[None]] = []
        self._models_body = json.dumps({"object": "list", "data": [
            {"id": r.model, "object": "model", "created": int(time.time()),
             "owned_by": "fineserve"} for r in config.routes]}).encode()

    def _watch(self, model: str, ups: list[Upstream]) -> None:
        self.metrics.watch_model(model, lambda: sum(u.queued for u in ups),
                                 lambda: sum(u.in_flight for u in ups))
        for u in ups:
            self.metrics.watch_engine(u.engine_id, model, *_engine_gauges(u))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every engine once, start the watchers and the admission timer."""
        cfg = self.config
        ups = self.admission.upstreams
        oks = await asyncio.gather(*(probe_health(u, cfg.connect_timeout_s) for u in ups))
        for u, ok in zip(ups, oks, strict=True):
            u.healthy = ok
            if not ok:
                log.warning("engine %s not answering /health yet", u.engine_id)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(watch(u, cfg, partial(self.admission.on_engine_state, u)))
                       for u in ups]
        self._tasks.append(loop.create_task(self.admission.run_timer()))

    async def drain(self, timeout_s: float) -> bool:
        """Wait for in-flight requests to end; False when ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.active

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for u in self.admission.upstreams:
            u.pool.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # -- small endpoints ----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        key = header[7:].strip().encode()
        ok = False
        for k in self._keys:  # compare with every key: no early exit to time
            ok |= hmac.compare_digest(k, key)
        return ok

    def _unauthorized(self) -> web.Response:
        return ApiError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                        code="invalid_api_key").response()

    async def list_models(self, request: web.Request) -> web.Response:
        if self._keys and not self._authorized(request):
            return self._unauthorized()
        return web.Response(body=self._models_body, content_type="application/json")

    async def health(self, _: web.Request) -> web.Response:
        ups = self.admission.upstreams
        up = sum(u.healthy for u in ups)
        return web.json_response({"status": "ok", "engines_up": up, "engines": len(ups)})

    async def prometheus(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- generation ---------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, 0)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, 1)

    async def _generate(self, request: web.Request, chat: int) -> web.StreamResponse:
        t0 = time.monotonic()
        if self._keys and not self._authorized(request):
            return self._unauthorized()
        self.active += 1
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(413, f"request body larger than {self.config.max_body_bytes} "
                                    "bytes") from None
            p = parse_payload(raw, self.config.default_max_tokens)
            model = self._models.get(p.model)
            if model is None:
                raise ApiError(404, f"The model `{p.model}` does not exist.", param="model",
                               code="model_not_found")
            priority, series = model
            info = RequestInfo(str(next(self._ids)), p.model, p.prompt_tokens, p.max_tokens,
                               t0, priority)
            return await self._dispatch(request, p, info, series, chat, t0)
        except ApiError as exc:
            return exc.response()
        finally:
            self.active -= 1

    async def _dispatch(self, request: web.Request, p: Payload, info: RequestInfo,
                        series: ModelSeries, chat: int, t0: float) -> web.StreamResponse:
        excluded: list[Upstream] = []
        retried = False
        while True:
            out = await self.admission.acquire(info, excluded)
            up = out.upstream
            if up is None:
                raise self._refusal(p.model, series, out)
            if not retried and not excluded:
                series.admitted.inc()
            served: Served | None = None
            try:
                resp, served = await self._forward(request, up, p, info, chat)
            except Unreachable as exc:
                series.upstream_error(up.engine_id, "refused" if exc.refused
                                      else "disconnected").inc()
                if exc.refused:
                    up.mark_down(str(exc))
                if exc.refused or retried:
                    excluded.append(up)
                retried = True
                continue
            except ApiError:
                series.upstream_error(up.engine_id, "timeout").inc()
                raise
            finally:  # also when the client went away (cancelled / connection reset)
                if served is None:
                    self.admission.release(up, info.request_id, 0, ok=False)
                else:
                    self.admission.release(up, info.request_id, served.output_tokens,
                                           ok=served.status == 200)
            self._record(series, up, served, t0)
            return resp

    async def _forward(self, request: web.Request, up: Upstream, p: Payload, info: RequestInfo,
                       chat: int) -> tuple[web.StreamResponse, Served]:
        path = _PATHS[chat]
        body = p.for_engine(up.served_name)
        timeout = self.config.upstream_timeout_s
        if not p.stream:
            return await forward_json(up.pool, path, body, timeout)
        rid, sched = info.request_id, up.sched
        return await forward_stream(request, up.pool, path, body, not p.client_usage,
                                    lambda now: sched.on_first_token(rid, now), timeout)

    def _refusal(self, model: str, series: ModelSeries, out: Outcome) -> ApiError:
        d = out.decision
        if d is not None and d.reason == "no_engine":
            series.rejected("no_engine").inc()
            return ApiError(503, f"no engine of model `{model}` is available; retry later",
                            retry_after_s=1.0)
        label = reason_label(d.reason)
        (series.expired if out.expired else series.rejected)(label).inc()
        return ApiError(429, f"model `{model}` is overloaded ({d.reason or label}); retry later",
                        code=label, retry_after_s=d.retry_after_s or 1.0)

    def _record(self, series: ModelSeries, up: Upstream, served: Served, t0: float) -> None:
        now = time.monotonic()
        series.e2e.observe(now - t0)
        if served.status != 200:
            if served.status >= 500 or served.status == 429:
                series.upstream_error(up.engine_id, f"http_{served.status}").inc()
            series.finish(False)
            return
        ttft_slo, tpot_slo = up.route.ttft_slo_s, up.route.tpot_slo_s
        n = served.output_tokens
        first, last = served.first_token_s, served.last_token_s
        if first is None or last is None:  # non-streamed: judge the whole answer
            met = now - t0 <= ttft_slo + tpot_slo * max(0, n - 1)
        else:
            ttft = first - t0
            series.ttft.observe(ttft)
            met = ttft <= ttft_slo
            if n >= 2:
                tpot = (last - first) / (n - 1)
                series.tpot.observe(tpot)
                met = met and tpot <= tpot_slo
        series.finish(met)
