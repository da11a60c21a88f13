"""A tiny closed-form latency model for planner unit tests (not a stand-in for profiles).

Prefill scales with tokens and inversely with SM share; decode is memory-bound above 40% SMs.
Numbers are in the range of an 8B model on an H100 so capacities are realistic.
"""

from __future__ import annotations

from fineserve.planner.schema import (
    Cluster,
    Instance,
    LengthStats,
    ModelDemand,
    NodeSpec,
    PlannerSettings,
    Slo,
)
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape, Latency, LatencySource


class FakeLatency:
    def prefill(self, engine: EngineShape, prompt_tokens: int, sm_pct: float,
                batch: int = 1) -> Latency:
        params = engine.model.weight_bytes(engine.tp) / 2e9  # ~ size in "8B bf16" units / 8
        t = 0.004 + 2.5e-6 * params * prompt_tokens * batch * 100 / sm_pct
        return Latency(t, LatencySource.ESTIMATED)

    def decode_step(self, engine: EngineShape, batch: int, context_tokens: float,
                    sm_pct: float) -> Latency:
        mem = engine.model.weight_bytes(engine.tp) + batch * context_tokens * (
            engine.model.kv_bytes_per_token(engine.tp))
        bw = 3.0e12 * min(1.0, sm_pct / 40)
        compute = 2e-5 * batch * 100 / sm_pct
        return Latency(0.002 + max(mem / bw, compute), LatencySource.ESTIMATED)

    def covers(self, engine: EngineShape) -> bool:
        return True


class ConstLatency:
    """Prefill p and decode step d fixed, so closed forms and queueing results can be checked
    by hand."""

    def __init__(self, prefill_s: float, decode_s: float) -> None:
        self.p, self.d = prefill_s, decode_s

    def prefill(self, engine, prompt_tokens, sm_pct, batch=1) -> Latency:
        return Latency(self.p, LatencySource.MEASURED)

    def decode_step(self, engine, batch, context_tokens, sm_pct) -> Latency:
        return Latency(self.d, LatencySource.MEASURED)

    def covers(self, engine) -> bool:
        return True


def demand(name: str, model: str = "llama-3.1-8b", weights: str = "bf16", kv: str = "bf16",
           rate: float = 5.0, ttft: float = 1.0, tpot: float = 0.05, prompt: float = 512,
           output: float = 256, tp: tuple[int, ...] = (1, 2, 4, 8)) -> ModelDemand:
    return ModelDemand(name, model, model_spec(model, weights, kv), rate, Slo(ttft, tpot),
                       LengthStats(prompt, output), tp)


def instance(models: list[ModelDemand], gpus: int = 2, nodes: int = 1, gpu: str = "h100",
             **settings) -> Instance:
    cluster = Cluster(tuple(NodeSpec(f"node{i}", gpu_spec(gpu), gpus) for i in range(nodes)))
    return Instance(tuple(models), cluster, PlannerSettings(**settings))
