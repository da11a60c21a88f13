"""Candidate engines: for each model, every (GPU type, TP, SM share, batch cap) worth placing.

The ILP, the greedy baselines and the brute-force tests all choose among the same options, so
they optimise over the same discrete space. Dominated options are pruned exactly: an option is
dropped only if another of the same model, GPU type and TP is no worse on SM share, memory,
capacity and KV per unit rate, and better on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fineserve.errors import SpecError
from fineserve.planner.capacity import engine_capacity, fastest_latency
from fineserve.planner.schema import Cluster, Instance, KVMode, ModelDemand
from fineserve.profiles.gpus import GIB, GpuSpec
from fineserve.profiles.latency import EngineShape, LatencyModel


@dataclass(frozen=True, slots=True)
class EngineOption:
    model: str
    gpu_type: str
    tp: int
    sm_pct: int
    max_batch: int  # steady-state batch at capacity; becomes vLLM max-num-seqs
    capacity_rps: float
    weight_bytes: int  # per rank
    overhead_bytes: int  # per rank
    kv_static_bytes: int  # per rank, KV for max_batch sequences
    kv_bytes_per_rps: float  # per rank, Little's-law KV per unit of served rate
    estimated: bool = False  # capacity rests on estimated (not measured) latencies

    def fixed_bytes(self, kv_mode: KVMode) -> int:
        """Per-rank memory that does not depend on routed traffic."""
        base = self.weight_bytes + self.overhead_bytes
        return base + (self.kv_static_bytes if kv_mode is KVMode.STATIC else 0)

    @property
    def label(self) -> str:
        return f"{self.model}|{self.gpu_type}|tp{self.tp}|sm{self.sm_pct}|b{self.max_batch}"


@dataclass(frozen=True, slots=True)
class TpGroup:
    """GPUs one engine spans: aligned, power-of-two sized, inside one node."""

    gpus: tuple[int, ...]
    node: str
    gpu_type: str


def tp_groups(cluster: Cluster, tp: int) -> tuple[TpGroup, ...]:
    out = []
    start = 0
    for node in cluster.nodes:
        for first in range(0, node.num_gpus - tp + 1, tp):
            gpus = tuple(range(start + first, start + first + tp))
            out.append(TpGroup(gpus, node.name, node.gpu.name))
        start += node.num_gpus
    return tuple(out)


def usable_bytes(gpu: GpuSpec, memory_utilization: float) -> int:
    return int(gpu.memory_bytes * memory_utilization)


def _options_for(
    inst: Instance, m: ModelDemand, gpu: GpuSpec, tp: int, latency: LatencyModel
) -> list[EngineOption]:
    st = inst.settings
    engine = EngineShape(gpu, m.spec, tp)
    weights = m.spec.weight_bytes(tp)
    free = usable_bytes(gpu, st.memory_utilization) - weights - st.engine_overhead_bytes
    if free <= 0:
        return []
    out = []
    # Pooled KV: the in-flight limit is the local scheduler's live decision, not a placement
    # choice, so only the SLO-bounded maximum batch is planned. Static KV: the batch cap sizes
    # the reservation, a real memory/capacity trade-off, so every level is an option.
    levels = sorted(st.batch_levels) if st.kv_mode is KVMode.STATIC else [max(st.batch_levels)]
    for sm in sorted(st.sm_levels):
        for cap_b in levels:
            cap = engine_capacity(
                latency, engine, sm, m.slo, m.lengths, max_batch=cap_b,
                kv_limit_bytes=free, slo_safety=st.slo_safety, kv_margin=st.kv_margin,
            )
            if cap.rate_rps <= 0:
                continue
            out.append(EngineOption(
                m.name, gpu.name, tp, sm, cap.batch, cap.rate_rps, weights,
                st.engine_overhead_bytes, cap.kv_bytes, cap.kv_bytes_per_rps, cap.estimated,
            ))
    return out


def _dominates(a: EngineOption, b: EngineOption, kv_mode: KVMode) -> bool:
    no_worse = (
        a.sm_pct <= b.sm_pct
        and a.fixed_bytes(kv_mode) <= b.fixed_bytes(kv_mode)
        and a.capacity_rps >= b.capacity_rps
        and (kv_mode is KVMode.STATIC or a.kv_bytes_per_rps <= b.kv_bytes_per_rps)
    )
    better = (
        a.sm_pct < b.sm_pct
        or a.fixed_bytes(kv_mode) < b.fixed_bytes(kv_mode)
        or a.capacity_rps > b.capacity_rps
        or (kv_mode is KVMode.POOLED and a.kv_bytes_per_rps < b.kv_bytes_per_rps)
    )
    return no_worse and better


def prune(options: list[EngineOption], kv_mode: KVMode) -> list[EngineOption]:
    unique = list({(o.gpu_type, o.tp, o.sm_pct, o.max_batch): o for o in options}.values())
    return [
        o for o in unique
        if not any(
            p is not o and p.gpu_type == o.gpu_type and p.tp == o.tp and _dominates(p, o, kv_mode)
            for p in unique
        )
    ]


def engine_options(
    inst: Instance, latency: LatencyModel, *, prune_dominated: bool = True
) -> dict[str, tuple[EngineOption, ...]]:
    """Options per model name.

    Raises:
        SpecError: a model has no option at all; the message says whether its weights do not
            fit or its SLO is below the fastest possible latency, and what to change.
    """
    gpu_types = {n.gpu.name: n.gpu for n in inst.cluster.nodes}
    # a TP group lives inside one node: the largest node of a GPU type bounds its TP degree
    largest = {t: max(n.num_gpus for n in inst.cluster.nodes if n.gpu.name == t)
               for t in gpu_types}
    result = {}
    for idx, m in enumerate(inst.models):
        found: list[EngineOption] = []
        for name, gpu in gpu_types.items():
            for tp in m.tp_choices:
                if tp <= largest[name] and m.spec.arch.check_tp(tp) is None:
                    found += _options_for(inst, m, gpu, tp, latency)
        if not found:
            raise _why_no_option(inst, idx, m, latency)
        result[m.name] = tuple(prune(found, inst.settings.kv_mode) if prune_dominated else found)
    return result


def _why_no_option(inst: Instance, idx: int, m: ModelDemand, latency: LatencyModel
                   ) -> SpecError:
    field = f"models[{idx}] ({m.name})"
    st = inst.settings
    nodes = inst.cluster.nodes
    shapes = [(n.gpu, t) for n in nodes for t in m.tp_choices
              if t <= n.num_gpus and m.spec.arch.check_tp(t) is None]
    if not shapes:
        bad = [t for t in m.tp_choices if m.spec.arch.check_tp(t) is None]
        why = (f"tp {bad} need more GPUs than any node has ({max(n.num_gpus for n in nodes)})"
               if bad else m.spec.arch.check_tp(m.tp_choices[0]))
        return SpecError(f"{field}.tp: no allowed TP degree can be used: {why}",
                         hint="allow a TP degree that divides the heads and fits a node")
    fits = [(g, t) for g, t in set(shapes)
            if m.spec.weight_bytes(t) + st.engine_overhead_bytes
            < usable_bytes(g, st.memory_utilization)]
    if not fits:
        g, t = max(shapes, key=lambda gt: (usable_bytes(gt[0], 1) - m.spec.weight_bytes(gt[1])))
        return SpecError(
            f"{field}.weights: {m.spec.precision.weights.value} weights need "
            f"{m.spec.weight_bytes(t) / GIB:.1f} GiB per GPU at tp={t} on {g.name}, more than "
            f"the {usable_bytes(g, st.memory_utilization) / GIB:.1f} GiB usable there",
            hint="allow a larger tp (within a node), or serve it in fp8 or int4",
        )
    floors = [(fastest_latency(latency, EngineShape(g, m.spec, t), m.lengths), g, t)
              for g, t in fits]
    safety = st.slo_safety
    (ttft, _), g, t = min(floors, key=lambda f: f[0][0])
    if ttft > m.slo.ttft_s * safety:
        return SpecError(
            f"{field}.slo.ttft_ms: {m.slo.ttft_s * 1e3:.0f} ms is below the fastest possible "
            f"TTFT {ttft * 1e3:.0f} ms ({g.name}, tp={t}, 100% SMs, planning at {safety:.0%} "
            "of the SLO)",
            hint=f"set ttft_ms >= {math.ceil(ttft / safety * 1e3)} or shorten prompts",
        )
    (_, tpot), g, t = min(floors, key=lambda f: f[0][1])
    if tpot > m.slo.tpot_s * safety:
        return SpecError(
            f"{field}.slo.tpot_ms: {m.slo.tpot_s * 1e3:.1f} ms is below the fastest possible "
            f"TPOT {tpot * 1e3:.1f} ms ({g.name}, tp={t}, 100% SMs, planning at {safety:.0%} "
            "of the SLO)",
            hint=f"set tpot_ms >= {math.ceil(tpot / safety * 1e3)} or allow a larger tp",
        )
    return SpecError(
        f"{field}: no engine configuration meets its SLOs with the KV memory left after weights",
        hint="relax the SLOs, shorten requests or allow a larger tp",
    )
