"""Reference planning instances at cluster scale, shared by benchmarks and the simulator.

``muxserve_scale`` mirrors MuxServe's evaluation (ICML'24: 19 models - 12 of 7B, 4 of 13B,
2 of 30B, 1 of 65B - with power-law popularity on 4 nodes x 8 GPUs) with today's models in
mixed precision on H100s. ``fleet`` scales the same recipe to any size (100 models on 128
GPUs in the benchmark). Request lengths default to ShareGPT means as reported in the vLLM
paper (161 prompt, 338 output tokens).
"""

from __future__ import annotations

import random

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

SHAREGPT = LengthStats(prompt_mean=161, output_mean=338)

# size class -> (catalog models, SLO TTFT s, SLO TPOT s, TP choices)
CLASSES = {
    "8b": (("llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "qwen3-8b"), 1.0, 0.05, (1, 2)),
    "14b": (("qwen2.5-14b",), 1.5, 0.075, (1, 2)),
    "32b": (("qwen2.5-32b", "qwen3-32b"), 2.0, 0.1, (1, 2, 4)),
    "70b": (("llama-3.1-70b", "qwen2.5-72b"), 3.0, 0.15, (1, 2, 4, 8)),
}
PRECISIONS = (("bf16", "bf16"), ("fp8", "fp8"), ("int4-awq", "bf16"))


def power_law_rates(n: int, total_rps: float, alpha: float, rng: random.Random) -> list[float]:
    """Rates proportional to rank^-alpha, assigned to models in a random order."""
    weights = [(k + 1) ** -alpha for k in range(n)]
    rng.shuffle(weights)
    s = sum(weights)
    return [total_rps * w / s for w in weights]


def fleet(
    counts: dict[str, int],
    *,
    nodes: int,
    gpus_per_node: int = 8,
    total_rps: float,
    alpha: float = 1.0,
    seed: int = 0,
    settings: PlannerSettings | None = None,
    gpu: str = "H100-SXM-80GB",
) -> Instance:
    rng = random.Random(seed)
    order = [(cls, i) for cls, n in counts.items() for i in range(n)]
    rates = power_law_rates(len(order), total_rps, alpha, rng)
    models = []
    for k, ((cls, i), rate) in enumerate(zip(order, rates, strict=True)):
        names, ttft, tpot, tps = CLASSES[cls]
        ref = names[i % len(names)]
        weights, kv = PRECISIONS[(k + i) % len(PRECISIONS)]
        models.append(ModelDemand(
            name=f"{cls}-{i}-{weights.split('-')[0]}", ref=ref,
            spec=model_spec(ref, weights, kv), rate_rps=rate, slo=Slo(ttft, tpot),
            lengths=SHAREGPT, tp_choices=tps,
        ))
    cluster = Cluster(tuple(NodeSpec(f"node{n}", gpu_spec(gpu), gpus_per_node)
                            for n in range(nodes)))
    return Instance(tuple(models), cluster, settings or PlannerSettings())


def muxserve_scale(total_rps: float = 120.0, alpha: float = 1.0, seed: int = 0,
                   settings: PlannerSettings | None = None) -> Instance:
    """19 models (12 x 7-8B, 4 x 14B, 2 x 32B, 1 x 70B) on 4 nodes x 8 H100."""
    return fleet({"8b": 12, "14b": 4, "32b": 2, "70b": 1}, nodes=4, total_rps=total_rps,
                 alpha=alpha, seed=seed, settings=settings)


def hundred_models(total_rps: float = 480.0, alpha: float = 1.0, seed: int = 0,
                   settings: PlannerSettings | None = None) -> Instance:
    """100 models in MuxServe's size mix on 16 nodes x 8 H100 (128 GPUs)."""
    return fleet({"8b": 63, "14b": 21, "32b": 11, "70b": 5}, nodes=16, total_rps=total_rps,
                 alpha=alpha, seed=seed, settings=settings)
