"""Planner inputs (``Instance``) and output (``Plan``): frozen values crossing module lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from fineserve.profiles.catalog import ModelSpec
from fineserve.profiles.gpus import GIB, GpuSpec


class KVMode(StrEnum):
    POOLED = "pooled"  # one elastic KV pool per GPU (KV Slab); engines hold floors
    STATIC = "static"  # each engine reserves KV for its full capacity


class Objective(StrEnum):
    LEXICOGRAPHIC = "lexicographic"  # fewest GPUs (cost), then largest minimum headroom
    MIN_GPUS = "min-gpus"
    MAX_HEADROOM = "max-headroom"  # largest minimum headroom on all GPUs, then fewest GPUs
    WEIGHTED = "weighted"  # cost - headroom_weight * headroom


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float  # time to first token, per request
    tpot_s: float  # time per output token after the first


@dataclass(frozen=True, slots=True)
class LengthStats:
    """Request lengths the capacity model plans for (means of the workload's distribution)."""

    prompt_mean: float
    output_mean: float

    @property
    def resident_tokens(self) -> float:
        """Mean tokens a running request holds in KV: its prompt plus half its output."""
        return self.prompt_mean + self.output_mean / 2


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One served model: what to run, how much traffic, which latency targets."""

    name: str  # served model name, unique in the instance
    ref: str  # catalog name or config.json path, as the user wrote it
    spec: ModelSpec
    rate_rps: float
    slo: Slo
    lengths: LengthStats
    tp_choices: tuple[int, ...] = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    gpu: GpuSpec
    num_gpus: int
    cost_per_gpu: float = 1.0  # objective weight of one GPU of this node (e.g. $/hour)


@dataclass(frozen=True, slots=True)
class GpuSlot:
    """A physical GPU: global index, node and index inside the node."""

    gpu_id: int
    node: str
    local_index: int
    spec: GpuSpec
    cost: float


@dataclass(frozen=True, slots=True)
class Cluster:
    nodes: tuple[NodeSpec, ...]
    gpus: tuple[GpuSlot, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        out, gid = [], 0
        for node in self.nodes:
            for i in range(node.num_gpus):
                out.append(GpuSlot(gid, node.name, i, node.gpu, node.cost_per_gpu))
                gid += 1
        object.__setattr__(self, "gpus", tuple(out))  # derived once: the planner's hot path

    @property
    def num_gpus(self) -> int:
        return sum(n.num_gpus for n in self.nodes)


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    sm_levels: tuple[int, ...] = tuple(range(10, 101, 10))  # MPS shares an engine may get (%)
    batch_levels: tuple[int, ...] = (8, 16, 32, 64, 128, 256)  # max-num-seqs choices
    kv_mode: KVMode = KVMode.POOLED
    objective: Objective = Objective.LEXICOGRAPHIC
    headroom_weight: float = 1.0  # WEIGHTED: GPUs (cost units) one unit of headroom is worth
    sm_oversubscription: float = 1.0  # sum of SM shares per GPU <= 100% x this
    memory_utilization: float = 0.92  # fraction of GPU memory engines may use
    engine_overhead_bytes: int = 3 * GIB  # per rank: CUDA context, activations, CUDA graphs
    kv_margin: float = 0.2  # KV reserved above the Little's-law mean
    pool_burst_margin: float = 0.25  # POOLED: floor = KV for assigned load x (1 + this)
    max_engines_per_gpu: int = 8  # MPS clients are limited; vLLM needs CPU per engine too
    min_headroom: float = 1.0  # capacity >= this x rate for every placed model
    headroom_cap: float = 10.0  # headroom above this counts as this much
    slo_safety: float = 0.9  # plan against this fraction of each SLO (tails, jitter)
    time_limit_s: float = 30.0
    num_workers: int = 8  # CP-SAT search workers
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Instance:
    models: tuple[ModelDemand, ...]
    cluster: Cluster
    settings: PlannerSettings = field(default_factory=PlannerSettings)

    def model(self, name: str) -> ModelDemand:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# ----------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class EnginePlacement:
    """One vLLM engine: a model replica on a GPU or a TP group of GPUs inside one node."""

    engine_id: str
    model: str
    node: str
    gpus: tuple[int, ...]  # global GPU ids; len == tp
    sm_pct: int
    max_batch: int  # vLLM max-num-seqs: the in-flight limit at capacity
    weight_bytes: int  # per rank
    overhead_bytes: int  # per rank
    kv_bytes: int  # per rank: static reservation, or the pool floor in POOLED mode
    capacity_rps: float  # highest SLO-meeting request rate (capacity model)
    rate_rps: float  # traffic the plan routes here
    estimated: bool = False  # capacity from estimated latencies (no profile covers it)

    @property
    def tp(self) -> int:
        return len(self.gpus)

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.overhead_bytes + self.kv_bytes


@dataclass(frozen=True, slots=True)
class Unplaced:
    model: str
    rate_rps: float  # traffic left without capacity
    reason: str


@dataclass(frozen=True, slots=True)
class StageReport:
    """One solve of a lexicographic sequence."""

    name: str  # "placed-traffic", "cost", "headroom", "weighted"
    status: str  # OPTIMAL, FEASIBLE, HEURISTIC
    objective: float
    bound: float
    seconds: float

    @property
    def gap(self) -> float:
        denom = max(abs(self.objective), 1e-9)
        return abs(self.bound - self.objective) / denom


@dataclass(frozen=True, slots=True)
class SolveReport:
    method: str  # ilp-ortools, ilp-pulp, greedy-kv-pressure, greedy-muxserve, static
    status: str  # OPTIMAL when every stage is, else FEASIBLE / HEURISTIC
    seconds: float
    stages: tuple[StageReport, ...] = ()
    note: str = ""

    @property
    def gap(self) -> float:
        """Largest stage gap; nan when any stage's bound is unknown or there are no stages."""
        gaps = [s.gap for s in self.stages]
        if not gaps or any(g != g for g in gaps):
            return float("nan")
        return max(gaps)


@dataclass(frozen=True, slots=True)
class Plan:
    instance: Instance  # what was planned, settings included, so a plan file is self-contained
    engines: tuple[EnginePlacement, ...]
    unplaced: tuple[Unplaced, ...]
    report: SolveReport

    @property
    def models(self) -> tuple[ModelDemand, ...]:
        return self.instance.models

    @property
    def cluster(self) -> Cluster:
        return self.instance.cluster

    @property
    def kv_mode(self) -> KVMode:
        return self.instance.settings.kv_mode

    def with_report(self, report: SolveReport) -> Plan:
        return Plan(self.instance, self.engines, self.unplaced, report)

    def engines_of(self, model: str) -> tuple[EnginePlacement, ...]:
        return tuple(e for e in self.engines if e.model == model)

    def engines_on(self, gpu_id: int) -> tuple[EnginePlacement, ...]:
        return tuple(e for e in self.engines if gpu_id in e.gpus)

    @property
    def gpus_used(self) -> tuple[int, ...]:
        return tuple(sorted({g for e in self.engines for g in e.gpus}))

    @property
    def cost(self) -> float:
        by_id = {g.gpu_id: g.cost for g in self.cluster.gpus}
        return sum(by_id[g] for g in self.gpus_used)

    def capacity_of(self, model: str) -> float:
        return sum(e.capacity_rps for e in self.engines_of(model))

    def headroom_of(self, model: str) -> float:
        """Burst tolerance of the routed plan: the factor by which the model's routed traffic
        can grow, split as routed, before its busiest engine saturates - min over engines
        carrying traffic of capacity / routed rate (0 when none does). With a split in
        proportion to capacity this is capacity over placed rate (AlpaServe's definition);
        capacity of an engine that carries little traffic does not count."""
        loads = [e.capacity_rps / e.rate_rps for e in self.engines_of(model) if e.rate_rps > 0]
        return min(loads, default=0.0)

    @property
    def min_headroom(self) -> float:
        """Smallest headroom over the models with traffic routed."""
        routed = [m.name for m in self.models if any(e.rate_rps > 0 for e in
                                                     self.engines_of(m.name))]
        return min((self.headroom_of(n) for n in routed), default=0.0)


def hand_plan(models: Sequence[ModelDemand], engines: Sequence[EnginePlacement], gpu: GpuSpec,
              *, nodes: Sequence[str] = ("n0",), gpus_per_node: int = 1,
              settings: PlannerSettings | None = None, method: str = "manual",
              note: str = "") -> Plan:
    """A plan written by hand (benchmarks, tests, tiny CPU deployments): the given engines on
    identical nodes of ``gpu``, reported FEASIBLE, never solved."""
    cluster = Cluster(tuple(NodeSpec(n, gpu, gpus_per_node) for n in nodes))
    inst = Instance(tuple(models), cluster, settings or PlannerSettings())
    return Plan(inst, tuple(engines), (), SolveReport(method, "FEASIBLE", 0.0, note=note))
