"""Run a plan against a trace: route requests to engines, step engines, collect records.

The loop is Vidur-style but flat for speed: one heap of step ends, the trace read in order.
Routing follows the plan's traffic split with smooth weighted round robin (deterministic).
KV: static plans give each engine its reservation. Pooled plans are simulated, for now, as
each engine's floor plus an equal share of its GPU's unreserved memory - not yet the elastic
KV Slab, whose policy lands with that issue.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from fineserve.metrics.summary import RequestRecord
from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import KVMode, Plan
from fineserve.profiles.latency import EngineShape, LatencyModel
from fineserve.sim.engine import EngineSim, SimRequest
from fineserve.workload.trace import Trace


class _Router:
    """Smooth weighted round robin over a model's engines (nginx's algorithm)."""

    def __init__(self, engines: list[EngineSim], weights: list[float]):
        self.engines, self.weights = engines, weights
        self.current = [0.0] * len(engines)
        self.total = sum(weights)

    def pick(self) -> EngineSim:
        for k, w in enumerate(self.weights):
            self.current[k] += w
        best = max(range(len(self.engines)), key=self.current.__getitem__)
        self.current[best] -= self.total
        return self.engines[best]


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    duration_s: float
    preemptions: dict[str, int]
    steps: dict[str, int]


def _kv_tokens(plan: Plan, e, shape: EngineShape) -> float:
    per_token = shape.model.kv_bytes_per_token(e.tp)
    if plan.kv_mode is KVMode.STATIC:
        return e.kv_bytes / per_token
    gpu = plan.cluster.gpus[e.gpus[0]]
    on = plan.engines_on(gpu.gpu_id)
    spare = usable_bytes(gpu.spec, plan.instance.settings.memory_utilization) - sum(
        x.memory_bytes for x in on)
    return (e.kv_bytes + max(0, spare) / len(on)) / per_token


def build_engines(plan: Plan, latency: LatencyModel, token_budget: int
                  ) -> dict[str, _Router]:
    specs = {m.name: m.spec for m in plan.models}
    routers: dict[str, _Router] = {}
    for m in plan.models:
        engines, weights = [], []
        for e in plan.engines_of(m.name):
            shape = EngineShape(plan.cluster.gpus[e.gpus[0]].spec, specs[m.name], e.tp)
            engines.append(EngineSim(e.engine_id, shape, e.sm_pct, e.max_batch,
                                     _kv_tokens(plan, e, shape), latency, token_budget))
            weights.append(max(e.rate_rps, 1e-9))
        if engines:
            routers[m.name] = _Router(engines, weights)
    return routers


def simulate(plan: Plan, trace: Trace, latency: LatencyModel, *, token_budget: int = 2048,
             ) -> SimResult:
    routers = build_engines(plan, latency, token_budget)
    arrivals = trace.arrival_s.tolist()
    models = trace.model.tolist()
    prompts = trace.prompt_tokens.tolist()
    outputs = trace.output_tokens.tolist()
    records: list[RequestRecord | None] = [None] * len(arrivals)
    # heap entries (time, kind, seq, engine): kind 0 = a step ends, 1 = an idle engine wakes.
    # At equal times: step ends, then arrivals, then wakes - so requests arriving together
    # are batched together, as a real engine would see them queued at its next step.
    heap: list[tuple[float, int, int, EngineSim]] = []
    seq, i, n, now = 0, 0, len(arrivals), 0.0
    while i < n or heap:
        if heap and (i >= n or heap[0][0] < arrivals[i]
                     or (heap[0][0] == arrivals[i] and heap[0][1] == 0)):
            now, kind, _, eng = heapq.heappop(heap)
            if kind == 0:
                for req in eng.finish_step(now):
                    records[req.index] = _record(req)
            if not eng.idle:
                seq += 1
                heapq.heappush(heap, (eng.start_step(now), 0, seq, eng))
            continue
        now = arrivals[i]
        router = routers.get(models[i])
        if router is None:  # model unplaced in this plan: counts as an error
            records[i] = RequestRecord(i, models[i], now, now, prompts[i], outputs[i],
                                       status=503, error="no engine for model")
        else:
            eng = router.pick()
            wake = eng.idle and not eng.busy
            eng.arrive(SimRequest(i, models[i], now, prompts[i], outputs[i]))
            if wake:
                eng.busy = True  # a wake is pending
                seq += 1
                heapq.heappush(heap, (now, 1, seq, eng))
        i += 1
    engines = [e for r in routers.values() for e in r.engines]
    for e in engines:
        e.check_integrity()
    return SimResult([r for r in records if r is not None], now,
                     {e.name: e.preemptions for e in engines},
                     {e.name: e.step_no for e in engines})


def _record(req: SimRequest) -> RequestRecord:
    return RequestRecord(req.index, req.model, req.arrival_s, req.arrival_s, req.prompt_tokens,
                         req.output_tokens, status=200, first_token_s=req.first_token_s,
                         finished_s=req.finished_s, tokens_received=req.output_tokens)


__all__ = ["SimResult", "build_engines", "simulate"]
