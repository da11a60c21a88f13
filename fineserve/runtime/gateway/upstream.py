"""One engine behind the gateway: its scheduler, load counters, health, and the task watching it.

The watcher scrapes the engine's vLLM ``/metrics`` every ``engine_poll_interval_s`` into the
scheduler (``on_engine_state``); an engine without those series (the stub) is simply not
scraped into it. An engine that refuses connections - seen by the watcher or by a request -
is marked down and its ``/health`` probed every ``health_interval_s`` until it answers 200,
so a restarted engine takes traffic again without restarting the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fineserve.runtime.gateway.client import ClientError, ConnectFailed, Pool
from fineserve.runtime.gateway.config import GatewayConfig, ModelRoute, UpstreamConfig
from fineserve.scheduler.arbiter import GpuArbiter
from fineserve.scheduler.engine_scheduler import EngineScheduler
from fineserve.scheduler.types import EngineSnapshot, SchedulerConfig, SloTargets

log = logging.getLogger("fineserve.gateway")

# vLLM series read from /metrics; older releases call the KV gauge gpu_cache_usage_perc
_RUNNING = b"vllm:num_requests_running"
_WAITING = b"vllm:num_requests_waiting"
_KV = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")
_PREEMPTED = b"vllm:num_preemptions_total"  # a counter: KV ran out and vLLM evicted requests


class Upstream:
    """Mutable per-engine state, owned by the gateway's event loop (no locking needed)."""

    __slots__ = ("cfg", "route", "sched", "arbiter", "healthy", "in_flight", "queued",
                 "credit", "served_name", "pool")

    def __init__(self, cfg: UpstreamConfig, route: ModelRoute, scheduler: EngineScheduler,
                 arbiter: GpuArbiter | None = None, connect_timeout_s: float = 2.0) -> None:
        self.cfg = cfg
        self.route = route
        self.sched = scheduler
        self.arbiter = arbiter  # shared with the other engines on this GPU, if any
        self.healthy = False  # until the first /health answers
        self.in_flight = 0  # dispatched, not finished (mirrors the scheduler, read per request)
        self.queued = 0  # waiting in the scheduler's queue
        self.credit = 0.0  # smooth weighted round-robin among equally loaded replicas
        self.served_name = cfg.served_model_name
        host, port = cfg.host_port
        self.pool = Pool(host, port, connect_timeout_s)  # generation, probes and scrapes

    @property
    def engine_id(self) -> str:
        return self.cfg.engine_id

    def mark_down(self, why: str) -> None:
        if self.healthy:
            log.warning("engine %s marked down: %s", self.cfg.engine_id, why)
        self.healthy = False


def make_upstreams(gw: GatewayConfig) -> dict[str, list[Upstream]]:
    """Every route's engines with their schedulers; one GpuArbiter per GPU holding several."""
    on_gpu: dict[str, int] = {}
    for route in gw.routes:
        for u in route.upstreams:
            if u.gpu:
                on_gpu[u.gpu] = on_gpu.get(u.gpu, 0) + 1
    arbiters = {gpu: GpuArbiter(gpu) for gpu, n in on_gpu.items() if n > 1}
    s = gw.scheduler
    base = SchedulerConfig(
        policy=s.policy, initial_limit=s.min_limit, min_limit=s.min_limit,
        max_limit=s.max_limit, max_queue=s.max_queue, late=s.late,
        est_prefill_s_per_token=s.est_prefill_s_per_token,
        late_timeout_factor=s.late_timeout_factor, min_retry_after_s=s.min_retry_after_s)
    out: dict[str, list[Upstream]] = {}
    for route in gw.routes:
        slo = SloTargets(route.ttft_slo_s, route.tpot_slo_s)
        ups = out[route.model] = []
        for u in route.upstreams:
            arbiter = arbiters.get(u.gpu)
            sched = EngineScheduler(u.engine_id, slo, base.for_engine(u.max_batch),
                                    arbiter=arbiter, priority=route.priority)
            ups.append(Upstream(u, route, sched, arbiter, gw.connect_timeout_s))
    return out


def parse_engine_metrics(text: bytes, at_s: float) -> EngineSnapshot | None:
    """The three vLLM gauges and the preemption counter (summed over label sets, KV usage
    the largest); None when the engine exports none of the gauges."""
    running = waiting = preempted = 0.0
    kv = 0.0
    seen = False
    for line in text.splitlines():
        if not line.startswith(b"vllm:"):
            continue
        name_end = line.find(b"{")
        if name_end < 0:
            name_end = line.find(b" ")
        name = line[:name_end]
        try:
            value = float(line.rsplit(b" ", 1)[-1])
        except ValueError:
            continue
        if name == _RUNNING:
            running += value
            seen = True
        elif name == _WAITING:
            waiting += value
            seen = True
        elif name in _KV:
            kv = max(kv, value)
            seen = True
        elif name == _PREEMPTED:
            preempted += value
    if not seen:
        return None
    return EngineSnapshot(at_s, int(running), int(waiting), min(max(kv, 0.0), 1.0),
                          int(preempted))


async def _get(up: Upstream, path: str, timeout_s: float) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout_s):
        r = await up.pool.get(path)
        return r.status, await r.read()


async def probe_health(up: Upstream, timeout_s: float) -> bool:
    try:
        status, _ = await _get(up, "/health", timeout_s)
    except (ClientError, TimeoutError):
        return False
    return status == 200


async def _scrape(up: Upstream, timeout_s: float, on_state: Callable[[], None]) -> None:
    try:
        status, body = await _get(up, "/metrics", timeout_s)
    except ConnectFailed as exc:
        up.mark_down(str(exc))
        return
    except (ClientError, TimeoutError):
        return  # a busy engine may answer late; requests decide whether it is down
    if status == 200:
        snap = parse_engine_metrics(body, time.monotonic())
        if snap is not None:
            up.sched.on_engine_state(snap)
            on_state()  # the limit may have grown: dispatch from the queue


async def watch(up: Upstream, cfg: GatewayConfig, on_state: Callable[[], None]) -> None:
    """Run until cancelled: scrape while healthy, probe /health while down."""
    timeout = max(cfg.connect_timeout_s, 1.0)
    while True:
        if up.healthy:
            await asyncio.sleep(cfg.engine_poll_interval_s)
            if up.healthy:
                await _scrape(up, timeout, on_state)
        else:
            if await probe_health(up, timeout):
                log.warning("engine %s is up", up.cfg.engine_id)
                up.healthy = True
            else:
                await asyncio.sleep(cfg.health_interval_s)
