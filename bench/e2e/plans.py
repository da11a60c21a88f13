"""The three deployed configurations as plans for one GPU.

(a) ``static``: every model gets one engine with the whole GPU's SMs, time-sliced (deployed
    with ``--no-mps``), and a static KV partition proportional to its rate - what users run
    today with several vLLM servers on one GPU.
(b) ``muxserve``: the planner's MuxServe-style greedy (least SM share covering each model's
    planned load), then the GPU's spare SMs and memory spread over the engines in proportion
    (``fill_gpu``): MPS SM shares and static KV partitions that use the whole GPU, no pool,
    the same batch cap as (a).
(c) ``fineserve``: the ILP with pooled KV (KV Slab), deployed with the gateway's adaptive
    local scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.e2e.workload import PLANNER_DEFAULTS, BenchSet, PlannerKnobs, instance
from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import (
    Cluster,
    EnginePlacement,
    Instance,
    KVMode,
    Plan,
    hand_plan,
)
from fineserve.profiles.latency import LatencyModel
from fineserve.sim.stepscale import EngineScaledLatency, ScaledLatency

CONFIGS = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class Config:
    """How one configuration is planned, deployed and simulated."""

    key: str  # a | b | c
    name: str
    no_mps: bool  # deploy --no-mps (time slicing); the simulator models time slicing
    kv_pool: bool  # deploy with the KV Slab pool; the simulator pools KV per GPU
    policy: str  # the gateway's local scheduler policy as deployed


CONFIG = {
    "a": Config("a", "static split, no MPS", no_mps=True, kv_pool=False, policy="fcfs"),
    "b": Config("b", "MuxServe-like (MPS, static KV)", no_mps=False, kv_pool=False,
                policy="fcfs"),
    "c": Config("c", "FineServe (ILP, MPS, KV Slab, scheduler)", no_mps=False, kv_pool=True,
                policy="adaptive"),
}

# (a) and (b): vLLM's own batch cap, not a planned one - what `vllm serve` takes on an H100
# when --max-num-seqs is not given (vLLM's arg_utils: 1024 for GPUs of >= 70 GiB other than
# A100, since vLLM 0.9), so a baseline gets what its users get; its static KV partition is
# what then limits the batch. Plans made before 2026-11-26's second rerun used 128
# (bench/e2e/results: the int4 runs of (a) and (b)).
STATIC_MAX_BATCH = 1024
# (c): batch caps the ILP may choose. The planner's default stops at 256, below what the KV
# Slab pool holds for chat-8b-fp8 at the measured step times (it ran at its cap of 249 through
# every peak at x2 and x2.5); beyond 512 the profiles' extrapolation is not trusted.
C_BATCH_LEVELS = (8, 16, 32, 64, 128, 256, 384, 512)


# Planner settings per configuration (results-r4 on; plans before used the planner's defaults:
# 0.92 of the GPU, 3 GiB per engine, 10% SM steps). One memory utilisation for all; each
# configuration's engine overhead is the largest results-r3 measured for it (nvidia-smi per
# engine at start, less weights and KV), rounded up to 0.25 GiB: (a) 2.27-3.12 GiB, (b)
# 2.24-2.65, (c) 1.1-2.45 (vLLM's 1024-sequence cap of (a) and (b) captures more CUDA graphs
# and sampler memory than (c)'s planned caps). MPS shares in 5% steps wherever the planner
# chooses them ((b), (c)); (a) time-slices the whole GPU.
KNOBS = {
    "a": PlannerKnobs(memory_utilization=0.95, engine_overhead_gib=3.25),
    "b": PlannerKnobs(memory_utilization=0.95, engine_overhead_gib=2.75, sm_step=5),
    "c": PlannerKnobs(memory_utilization=0.95, engine_overhead_gib=2.5, sm_step=5),
}


@dataclass(frozen=True, slots=True)
class Variant:
    """A configuration planned with other settings and measured in a lane of its own
    (``CFG@GPU:NAME``, bench/e2e/lanes.py), its plan in RESULTS/NAME/plan-CFG.yaml: what the
    simulator cannot judge gets a GPU."""

    name: str
    config: str
    knobs: PlannerKnobs
    why: str


VARIANTS = {v.name: v for v in (
    Variant("oversub", "c", replace(KNOBS["c"], sm_oversubscription=1.35),
            "MPS shares summing to 135% of the SMs: engines that idle (edge-3b at x3) lend "
            "theirs; the simulator's SM contention (sim/smshare.py) is quasi-static, "
            "uncalibrated"),
)}


def static_split(inst: Instance) -> Plan:
    """(a): one engine per model on GPU 0 at 100% SMs (time-sliced when deployed without
    MPS), KV partitions proportional to each model's rate x resident tokens x KV bytes."""
    gpu = inst.cluster.gpus[0]
    s = inst.settings
    weights = {m.name: m.spec.weight_bytes(1) for m in inst.models}
    free = usable_bytes(gpu.spec, s.memory_utilization) - sum(
        w + s.engine_overhead_bytes for w in weights.values())
    if free <= 0:
        raise ValueError("static split: the models' weights do not fit on one GPU")
    demand = {m.name: m.rate_rps * m.lengths.resident_tokens * m.spec.kv_bytes_per_token(1)
              for m in inst.models}
    total = sum(demand.values())
    engines = [EnginePlacement(
        f"{m.name}-0", m.name, gpu.node, (gpu.gpu_id,), 100, STATIC_MAX_BATCH,
        weights[m.name], s.engine_overhead_bytes, int(free * demand[m.name] / total),
        capacity_rps=m.rate_rps, rate_rps=m.rate_rps, estimated=True)
        for m in inst.models]
    return hand_plan(inst.models, engines, gpu.spec, nodes=(gpu.node,), settings=s,
                     method="static-split",
                     note="bench/e2e (a): deploy with --no-mps; sm_pct 100 = time-sliced")


def fill_gpu(plan: Plan) -> Plan:
    """Scale every engine's SM share to fill 100% of its GPU and its static KV to fill the
    usable memory, in proportion to what the plan gave it (a one-GPU plan); the batch cap is
    vLLM's as in (a): MuxServe places models, it does not cap their batches."""
    s = plan.instance.settings
    gpu = plan.cluster.gpus[0]
    on = plan.engines_on(gpu.gpu_id)
    sm = sum(e.sm_pct for e in on)
    spare = usable_bytes(gpu.spec, s.memory_utilization) - sum(e.memory_bytes for e in on)
    kv = sum(e.kv_bytes for e in on)
    engines = tuple(replace(e, sm_pct=max(1, e.sm_pct * 100 // sm), max_batch=STATIC_MAX_BATCH,
                            kv_bytes=e.kv_bytes + max(0, spare) * e.kv_bytes // max(1, kv))
                    for e in on)
    # shares off the planner's SM levels: MPS takes any percentage, the simulator interpolates
    report = replace(plan.report, method=f"{plan.report.method}+fill",
                     note="bench/e2e (b): spare SMs and memory spread in proportion")
    return replace(plan, engines=engines, report=report)


def as_deployed(plan: Plan, kv_pool: bool) -> Plan:
    """The plan a deployment actually serves. A pooled plan deployed without the KV Slab
    (``--no-kv-pool``) would give each engine only its floor; it gets static partitions of
    floor + an equal share of its GPU's unreserved memory instead - the whole GPU, and what
    the simulator's static mode assumes for a pooled plan. Otherwise the plan itself."""
    if kv_pool or plan.kv_mode is KVMode.STATIC:
        return plan
    s = plan.instance.settings
    engines = []
    for gpu in plan.gpus_used:
        on = plan.engines_on(gpu)
        spare = usable_bytes(plan.cluster.gpus[gpu].spec, s.memory_utilization) - sum(
            e.memory_bytes for e in on)
        engines += [replace(e, kv_bytes=e.kv_bytes + max(0, spare) // len(on)) for e in on]
    inst = replace(plan.instance, settings=replace(s, kv_mode=KVMode.STATIC))
    report = replace(plan.report, method=f"{plan.report.method}+static-kv",
                     note="bench/e2e: pooled plan deployed with --no-kv-pool")
    return replace(plan, instance=inst, engines=tuple(engines), report=report)


def on_gpu(plan: Plan, gpu: int) -> Plan:
    """The one-GPU ``plan`` moved to GPU ``gpu`` of its node (the node grows to gpu + 1 GPUs,
    the others idle), so two configurations can be measured side by side on one host, each
    deploy checking, binding and (under MPS) running a daemon for its own GPU only. Engines,
    shares and KV are unchanged; GPU 0 gives back the plan itself."""
    if gpu == 0:
        return plan
    if gpu < 0:
        raise ValueError(f"gpu: {gpu} is negative")
    if len(plan.cluster.nodes) != 1 or plan.gpus_used != (0,):
        raise ValueError("on_gpu: only a one-node plan whose engines all use GPU 0 can move")
    node = plan.cluster.nodes[0]
    cluster = Cluster((replace(node, num_gpus=max(node.num_gpus, gpu + 1)),))
    engines = tuple(replace(e, gpus=(gpu,)) for e in plan.engines)
    return replace(plan, instance=replace(plan.instance, cluster=cluster), engines=engines)


def planning_latency(latency: LatencyModel, decode_scale: float, decode_s_per_seq: float,
                     per_seq_by_size: bool = False,
                     mps_factors: tuple[tuple[str, float], ...] = ()) -> LatencyModel:
    """The calibrated MPS latency model, as ``predict.predict_one`` simulates it: decode
    steps x ``decode_scale`` plus the per-sequence term (by engine size where the calibration
    was fitted so), then each model's own factor. The planner plans on the model its plan is
    judged by."""
    scaled: LatencyModel = ScaledLatency(latency, decode_scale=decode_scale,
                                         decode_s_per_seq=decode_s_per_seq,
                                         per_seq_by_size=per_seq_by_size)
    return EngineScaledLatency(scaled, mps_factors) if mps_factors else scaled


def make_config_plan(bench: BenchSet, key: str, latency: LatencyModel,
                     time_limit_s: float = 20.0, decode_scale: float = 1.0,
                     decode_s_per_seq: float = 0.0,
                     knobs: PlannerKnobs = PLANNER_DEFAULTS, per_seq_by_size: bool = False,
                     mps_factors: tuple[tuple[str, float], ...] = ()) -> Plan:
    """The plan of configuration ``key`` (a, b or c) for ``bench`` on one GPU, with the
    planner settings ``knobs`` (the planner's defaults unless given; the bench's results
    directories get ``KNOBS[key]``: run.py).

    ``decode_scale`` > 1 or ``decode_s_per_seq`` > 0 plan (b) and (c) on the latency model
    with every decode step stretched as the simulator's calibration says (``calibrate.py``,
    ``fineserve.sim.stepscale``), so the SM shares and batch caps rest on the deployed step
    times rather than the profiles' (which stop at batch 32 and see one engine alone). (a)
    uses no latency model."""
    # the solvers load here, not at import: the GPU host deploys committed plans and may
    # lack OR-Tools
    from fineserve.planner.api import make_plan

    if key not in CONFIGS:
        raise ValueError(f"unknown configuration {key!r}; use one of {', '.join(CONFIGS)}")
    calibrated = decode_scale != 1.0 or decode_s_per_seq > 0 or bool(mps_factors)
    if calibrated:
        latency = planning_latency(latency, decode_scale, decode_s_per_seq, per_seq_by_size,
                                   mps_factors)
    if key == "a":
        return static_split(instance(bench, KVMode.STATIC, knobs=knobs))
    if key == "b":
        plan = fill_gpu(make_plan(instance(bench, KVMode.STATIC, knobs=knobs), latency,
                                  method="muxserve"))
    else:
        plan = make_plan(instance(bench, KVMode.POOLED, time_limit_s, C_BATCH_LEVELS, knobs),
                         latency, method="ilp")
    if not calibrated:
        return plan
    note = f"{plan.report.note}; " if plan.report.note else ""
    return replace(plan, report=replace(plan.report, note=(
        f"{note}planned with decode steps x{decode_scale:g} + {decode_s_per_seq * 1e3:g} ms "
        f"per sequence at 100% SMs{' (by engine size)' if per_seq_by_size else ''}"
        f"{', per-model factors' if mps_factors else ''} (calibrated)")))
