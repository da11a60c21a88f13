"""Greedy baselines, returning the same ``Plan`` as the ILP:

* ``static``: one model per GPU (or TP group), 100% SMs, replicas until the rate is covered -
  what vLLM users do today.
* ``muxserve``: MuxServe-style - models by compute demand (rate x parameters), each replica on
  the used GPU with the most free SM share that fits the smallest share covering what is left.
* ``kv-pressure``: FineServe's / Prism's heuristic - models by KV demand, each on the GPU with
  the lowest KV pressure (demand over free memory); co-located engines split SMs evenly (the
  seed code never partitions SMs); replicas go to the worst-covered model.
* ``worst-fit``: engines sized per model, packed largest first onto the least-full GPU
  (``worstfit.py``): the spread-out plan the max-headroom objective starts from.

They share ``GreedyState`` for memory/SM bookkeeping and choose among ``engine_options``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from fineserve.planner.assemble import Choice, assemble_plan
from fineserve.planner.options import EngineOption, TpGroup, tp_groups, usable_bytes
from fineserve.planner.schema import Instance, KVMode, ModelDemand, Plan, SolveReport
from fineserve.planner.worstfit import worst_fit_plan

Options = dict[str, tuple[EngineOption, ...]]


@dataclass
class GreedyState:
    inst: Instance
    options: Options
    choices: list[Choice] = field(default_factory=list)
    _by_gpu: dict[int, list[Choice]] = field(default_factory=dict)

    def add(self, c: Choice) -> None:
        self.choices.append(c)
        for g in c.group.gpus:
            self._by_gpu.setdefault(g, []).append(c)

    def replace_on(self, gpus: tuple[int, ...], new: list[Choice]) -> None:
        """Drop every engine touching ``gpus`` and add ``new``."""
        gone = {id(c) for g in gpus for c in self._by_gpu.get(g, [])}
        self.choices = [c for c in self.choices if id(c) not in gone]
        self._by_gpu = {}
        for c in self.choices:
            for g in c.group.gpus:
                self._by_gpu.setdefault(g, []).append(c)
        for c in new:
            self.add(c)

    def engines_on(self, g: int) -> list[Choice]:
        return self._by_gpu.get(g, [])

    def mem_need(self, o: EngineOption) -> float:
        """Per-rank memory. Pooled KV floors are sized for the most traffic the engine can
        get (its capacity, or its model's whole rate), so any later traffic split fits."""
        st = self.inst.settings
        if st.kv_mode is KVMode.STATIC:
            return o.fixed_bytes(KVMode.STATIC)
        most = min(o.capacity_rps, self.inst.model(o.model).rate_rps)
        kv = o.kv_bytes_per_rps * most * (1 + st.pool_burst_margin)
        return o.fixed_bytes(KVMode.POOLED) + kv

    def free_mem(self, g: int) -> float:
        spec = self.inst.cluster.gpus[g].spec
        used = sum(self.mem_need(c.option) for c in self.engines_on(g))
        return usable_bytes(spec, self.inst.settings.memory_utilization) - used

    def free_sm(self, g: int) -> int:
        cap = math.floor(100 * self.inst.settings.sm_oversubscription + 1e-9)
        return cap - sum(c.option.sm_pct for c in self.engines_on(g))

    def can_host(self, group: TpGroup, o: EngineOption) -> bool:
        st = self.inst.settings
        return all(
            self.free_sm(g) >= o.sm_pct
            and self.free_mem(g) >= self.mem_need(o)
            and len(self.engines_on(g)) < st.max_engines_per_gpu
            and all(c.option.model != o.model for c in self.engines_on(g))
            for g in group.gpus
        )

    def is_free(self, group: TpGroup) -> bool:
        return all(not self.engines_on(g) for g in group.gpus)

    def capacity(self, model: str) -> float:
        return sum(c.option.capacity_rps for c in self.choices if c.option.model == model)

    def used_gpus(self) -> set[int]:
        return {g for c in self.choices for g in c.group.gpus}

    def free_groups(self, tp: int, gpu_type: str) -> list[TpGroup]:
        return [u for u in tp_groups(self.inst.cluster, tp)
                if u.gpu_type == gpu_type and self.is_free(u)]

    def finish(self, method: str, t0: float) -> Plan:
        h = self.inst.settings.min_headroom
        placed = {m.name: min(m.rate_rps, self.capacity(m.name) / max(1.0, h))
                  for m in self.inst.models}
        report = SolveReport(method, "HEURISTIC", time.perf_counter() - t0)
        return assemble_plan(self.inst, self.choices, placed, report, self.options)


def _need(st: GreedyState, m: ModelDemand) -> float:
    return m.rate_rps * st.inst.settings.min_headroom - st.capacity(m.name)


def _full_gpu_option(opts: tuple[EngineOption, ...]) -> EngineOption:
    """Best capacity per GPU: smallest TP that serves, most SMs, largest batch."""
    return max(opts, key=lambda o: (o.capacity_rps / o.tp, -o.tp, o.sm_pct))


def _open_group(st: GreedyState, o: EngineOption) -> TpGroup | None:
    """Lowest free aligned group of o's size (buddy order keeps used GPUs a prefix)."""
    groups = [u for u in st.free_groups(o.tp, o.gpu_type) if st.can_host(u, o)]
    return groups[0] if groups else None


def static_plan(inst: Instance, options: Options) -> Plan:
    """One model per GPU group at 100% SMs."""
    t0 = time.perf_counter()
    st = GreedyState(inst, options)
    order = sorted(inst.models, key=lambda m: -_full_gpu_option(options[m.name]).tp)
    for m in order:
        o = _full_gpu_option(options[m.name])
        while _need(st, m) > 1e-9:
            u = _open_group(st, o)
            if u is None:
                break
            st.add(Choice(o, u))
    return st.finish("static", t0)


def muxserve_plan(inst: Instance, options: Options) -> Plan:
    """MuxServe-style: heaviest compute demand first, least SM share that covers the need."""
    t0 = time.perf_counter()
    st = GreedyState(inst, options)
    order = sorted(inst.models, key=lambda m: -m.rate_rps * m.spec.arch.total_params)
    for m in order:
        while (need := _need(st, m)) > 1e-9:
            placed = _place_on_used(st, options[m.name], need) or _place_on_new(
                st, options[m.name], need)
            if not placed:
                break
    return st.finish("muxserve", t0)


def _smallest_covering(opts: list[EngineOption], need: float) -> EngineOption | None:
    if not opts:
        return None
    covering = [o for o in opts if o.capacity_rps >= need]
    if covering:
        return min(covering, key=lambda o: (o.tp, o.sm_pct, o.fixed_bytes(KVMode.STATIC)))
    return max(opts, key=lambda o: (o.capacity_rps, -o.sm_pct))


def _place_on_used(st: GreedyState, opts: tuple[EngineOption, ...], need: float) -> bool:
    used = st.used_gpus()
    best: tuple[int, Choice] | None = None
    for tp in sorted({o.tp for o in opts}):
        for u in tp_groups(st.inst.cluster, tp):
            if not all(g in used for g in u.gpus):
                continue
            fitting = [o for o in opts if o.tp == tp and o.gpu_type == u.gpu_type
                       and o.capacity_rps >= need and st.can_host(u, o)]
            o = _smallest_covering(fitting, need)
            if o is None:  # sharing only pays when one engine covers what is left
                continue
            free = min(st.free_sm(g) for g in u.gpus)
            if best is None or free > best[0]:
                best = (free, Choice(o, u))
    if best is None:
        return False
    st.add(best[1])
    return True


def _place_on_new(st: GreedyState, opts: tuple[EngineOption, ...], need: float) -> bool:
    for tp in sorted({o.tp for o in opts}):
        # the least SM share that covers the need, else the biggest engine
        for o in sorted((o for o in opts if o.tp == tp),
                        key=lambda o: (o.capacity_rps < need,
                                       o.sm_pct if o.capacity_rps >= need else -o.capacity_rps)):
            u = _open_group(st, o)
            if u is not None:
                st.add(Choice(o, u))
                return True
    return False


def kv_pressure_plan(inst: Instance, options: Options) -> Plan:
    """FineServe/Prism KV-pressure greedy with even SM splits between co-located engines."""
    t0 = time.perf_counter()
    st = GreedyState(inst, options)

    def kv_demand(m: ModelDemand) -> float:
        return m.rate_rps * m.lengths.resident_tokens * m.spec.kv_bytes_per_token()

    for m in sorted(inst.models, key=lambda m: -kv_demand(m)):
        _add_replica_lowest_pressure(st, m, kv_demand)
    for _ in range(4 * inst.cluster.num_gpus):  # replicas for the worst-covered model
        short = [m for m in inst.models if _need(st, m) > 1e-9]
        if not short:
            break
        worst = min(short, key=lambda m: st.capacity(m.name) / m.rate_rps)
        if not _add_replica_lowest_pressure(st, worst, kv_demand):
            break
    return st.finish("kv-pressure", t0)


def _even_share(st: GreedyState, k: int) -> int:
    """Largest SM level not above an even split between k engines."""
    fair = math.floor(100 * st.inst.settings.sm_oversubscription / k + 1e-9)
    levels = [s for s in st.inst.settings.sm_levels if s <= fair]
    return max(levels) if levels else 0


def _best_at(opts: tuple[EngineOption, ...], gpu_type: str, tp: int, max_sm: int,
             mem: float, st: GreedyState) -> EngineOption | None:
    fit = [o for o in opts if o.gpu_type == gpu_type and o.tp == tp and o.sm_pct <= max_sm
           and st.mem_need(o) <= mem]
    return max(fit, key=lambda o: (o.capacity_rps, -o.sm_pct)) if fit else None


def _add_replica_lowest_pressure(st: GreedyState, m: ModelDemand, kv_demand) -> bool:
    """Put one more engine of m where KV pressure is lowest; re-split SMs on that GPU."""
    opts = st.options[m.name]
    tp = min(o.tp for o in opts)
    best: tuple[float, TpGroup, list[Choice]] | None = None
    for u in tp_groups(st.inst.cluster, tp):
        resident = list({id(c): c for g in u.gpus for c in st.engines_on(g)}.values())
        if any(c.option.model == m.name for c in resident):
            continue
        if tp > 1 and resident:
            continue  # TP engines get their group alone, as in the seed code
        if any(c.group.gpus != u.gpus for c in resident):
            continue
        if len(resident) + 1 > st.inst.settings.max_engines_per_gpu:
            continue
        plan = _resplit(st, u, [*[c.option for c in resident], None], m.name, opts)
        if plan is None:
            continue
        pressure = sum(kv_demand(st.inst.model(c.option.model)) for c in resident) + kv_demand(m)
        free = usable_bytes(st.inst.cluster.gpus[u.gpus[0]].spec,
                            st.inst.settings.memory_utilization)
        score = pressure / free
        if best is None or score < best[0]:
            best = (score, u, plan)
    if best is None:
        return False
    _, u, plan = best
    st.replace_on(u.gpus, plan)
    return True


def _resplit(st: GreedyState, u: TpGroup, current: list, new_model: str,
             new_opts: tuple[EngineOption, ...]) -> list[Choice] | None:
    """Options for all engines on group u after an even SM split, or None if they don't fit."""
    share = _even_share(st, len(current))
    if share == 0:
        return None
    spec = st.inst.cluster.gpus[u.gpus[0]].spec
    mem = usable_bytes(spec, st.inst.settings.memory_utilization)
    out = []
    for o in current:
        model = new_model if o is None else o.model
        opts = new_opts if o is None else st.options[model]
        pick = _best_at(opts, u.gpu_type, u.gpus.__len__(), share, mem, st)
        if pick is None:
            return None
        mem -= st.mem_need(pick)
        out.append(Choice(pick, u))
    return out if mem >= 0 else None


METHODS = {"static": static_plan, "muxserve": muxserve_plan, "kv-pressure": kv_pressure_plan,
           "worst-fit": worst_fit_plan}
