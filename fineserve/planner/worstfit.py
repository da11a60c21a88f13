"""Worst-fit-decreasing baseline: engines sized first, then spread over the whole cluster.

Each model's capacity (rate x ``min_headroom``) is cut into engines of its most efficient
option - the most capacity per unit of the scarcer GPU resource, SM share or memory with
the pooled-KV floor for the traffic the engine carries - and a last, smallest option that
covers the remainder. Engines are packed largest first, each onto the group whose fullest
GPU is least full. Spreading rather than stacking is what the max-headroom objective wants
(which also raises the capacity factor while all still packs), and a plan that places all
traffic is a warm start the ILP keeps (``api.best_greedy``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fineserve.planner.assemble import Choice, assemble_plan, pool_floor_bytes
from fineserve.planner.options import EngineOption, TpGroup, tp_groups, usable_bytes
from fineserve.planner.schema import Instance, KVMode, Objective, Plan, SolveReport

Options = dict[str, tuple[EngineOption, ...]]


@dataclass(frozen=True, slots=True)
class _Engine:
    option: EngineOption
    rate: float  # traffic it carries in this packing, req/s (its KV floor is sized for it)


class _Load:
    """SM and memory shares used per GPU, and which models each GPU holds."""

    def __init__(self, inst: Instance) -> None:
        st = inst.settings
        self.inst = inst
        self.sm_cap = 100 * st.sm_oversubscription
        self.mem_cap = {g.gpu_id: usable_bytes(g.spec, st.memory_utilization)
                        for g in inst.cluster.gpus}
        self.sm = {g: 0.0 for g in self.mem_cap}
        self.mem = {g: 0.0 for g in self.mem_cap}
        self.models: dict[int, set[str]] = {g: set() for g in self.mem_cap}

    def fits(self, u: TpGroup, e: _Engine) -> bool:
        limit = self.inst.settings.max_engines_per_gpu
        need = _rank_bytes(self.inst, e.option, e.rate)
        return all(self.sm[g] + e.option.sm_pct <= self.sm_cap + 1e-9
                   and self.mem[g] + need <= self.mem_cap[g]
                   and len(self.models[g]) < limit
                   and e.option.model not in self.models[g] for g in u.gpus)

    def fullness(self, u: TpGroup) -> float:
        return max(max(self.sm[g] / self.sm_cap, self.mem[g] / self.mem_cap[g])
                   for g in u.gpus)

    def add(self, u: TpGroup, e: _Engine) -> None:
        need = _rank_bytes(self.inst, e.option, e.rate)
        for g in u.gpus:
            self.sm[g] += e.option.sm_pct
            self.mem[g] += need
            self.models[g].add(e.option.model)


def _rank_bytes(inst: Instance, o: EngineOption, rate: float) -> float:
    """Per-rank bytes: fixed memory plus, when pooled, the KV floor for the engine's rate."""
    if inst.settings.kv_mode is KVMode.STATIC:
        return o.fixed_bytes(KVMode.STATIC)
    return o.fixed_bytes(KVMode.POOLED) + pool_floor_bytes(inst, o, rate)


def _size(inst: Instance, o: EngineOption, rate: float) -> float:
    """Share of one GPU's scarcer resource a rank of ``o`` carrying ``rate`` takes."""
    st = inst.settings
    gpu = next(g.spec for g in inst.cluster.gpus if g.spec.name == o.gpu_type)
    return max(o.sm_pct / (100 * st.sm_oversubscription),
               _rank_bytes(inst, o, rate) / usable_bytes(gpu, st.memory_utilization))


def _engines(inst: Instance, opts: tuple[EngineOption, ...], rate: float, h: float
             ) -> list[_Engine]:
    """Engines covering ``rate`` x ``h``: the most efficient option repeated, the smallest
    option of its TP and GPU type covering what is left. Each carries its cover / h."""
    if not opts or max(o.capacity_rps for o in opts) <= 0:
        return []
    best = max(opts, key=lambda o: o.capacity_rps / (o.tp * _size(inst, o, o.capacity_rps / h)))
    out, need = [], rate * h
    while need > 1e-9:
        cover = [o for o in opts if (o.tp, o.gpu_type) == (best.tp, best.gpu_type)
                 and o.capacity_rps >= need]
        o = best if need >= best.capacity_rps or not cover else min(
            cover, key=lambda o: _size(inst, o, need / h))
        out.append(_Engine(o, min(need, o.capacity_rps) / h))
        need -= o.capacity_rps
    return out


def worst_fit_plan(inst: Instance, options: Options) -> Plan:
    """Worst-fit-decreasing packing of per-model engines over every GPU. Under the
    max-headroom objective the capacity factor is raised (bisection, up to the headroom
    cap) while everything still packs."""
    t0 = time.perf_counter()
    st = inst.settings
    lo = st.min_headroom
    best = _pack(inst, options, lo)
    if st.objective is Objective.MAX_HEADROOM and _all_served(inst, best[2]):
        hi = max(lo, st.headroom_cap)
        for _ in range(12):
            if hi - lo <= 0.005 * lo:
                break
            mid = (lo + hi) / 2
            trial = _pack(inst, options, mid)
            if _all_served(inst, trial[2]):
                lo, best = mid, trial
            else:
                hi = mid
    choices, rates, served = best
    placed = {m.name: min(m.rate_rps, served[m.name]) for m in inst.models}
    report = SolveReport("worst-fit", "HEURISTIC", time.perf_counter() - t0)
    return assemble_plan(inst, choices, placed, report, options, rates)


def _all_served(inst: Instance, served: dict[str, float]) -> bool:
    return all(served[m.name] >= m.rate_rps * (1 - 1e-9) for m in inst.models)


def _pack(inst: Instance, options: Options, factor: float
          ) -> tuple[list[Choice], list[float], dict[str, float]]:
    """Engines of every model for capacity rate x ``factor``, packed worst fit: the chosen
    engines, their rates and the traffic served per model."""
    load = _Load(inst)
    engines = [e for m in inst.models
               for e in _engines(inst, options[m.name], m.rate_rps, factor)]
    engines.sort(key=lambda e: (-e.option.tp, -_size(inst, e.option, e.rate)))
    groups = {t: tp_groups(inst.cluster, t) for t in {e.option.tp for e in engines}}
    choices, rates = [], []
    served = {m.name: 0.0 for m in inst.models}
    for e in engines:
        fits = [u for u in groups[e.option.tp]
                if u.gpu_type == e.option.gpu_type and load.fits(u, e)]
        if not fits:
            continue
        u = min(fits, key=load.fullness)
        load.add(u, e)
        choices.append(Choice(e.option, u))
        rates.append(e.rate)
        served[e.option.model] += e.rate
    return choices, rates, served
