"""Turn chosen engines (from the ILP or a greedy baseline) into a ``Plan``.

Shared by every method so that plans differ only in the choices made: traffic split, KV
floors, engine ids and unplaced-traffic reasons are computed the same way for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fineserve.planner.options import EngineOption, TpGroup, usable_bytes
from fineserve.planner.schema import EnginePlacement, Instance, KVMode, Plan, SolveReport, Unplaced
from fineserve.planner.traffic import balance_traffic


@dataclass(frozen=True, slots=True)
class Choice:
    option: EngineOption
    group: TpGroup


def pool_floor_bytes(inst: Instance, option: EngineOption, rate_rps: float) -> int:
    """Per-rank KV floor of an engine in a pooled GPU: KV for its load plus burst margin."""
    margin = 1 + inst.settings.pool_burst_margin
    return math.ceil(option.kv_bytes_per_rps * rate_rps * margin)


def assemble_plan(
    inst: Instance,
    choices: list[Choice],
    placed_rps: dict[str, float],
    report: SolveReport,
    all_options: dict[str, tuple[EngineOption, ...]] | None = None,
    solver_rates: list[float] | None = None,
) -> Plan:
    """Build the plan: balance traffic, size KV, name engines, explain unplaced traffic."""
    rates = balance_traffic(inst, choices, placed_rps, solver_rates)
    engines = []
    counter: dict[str, int] = {}
    for c, rate in sorted(zip(choices, rates, strict=True),
                          key=lambda cr: (cr[0].option.model, cr[0].group.gpus)):
        o = c.option
        n = counter.get(o.model, 0)
        counter[o.model] = n + 1
        kv = o.kv_static_bytes if inst.settings.kv_mode is KVMode.STATIC else (
            pool_floor_bytes(inst, o, rate)
        )
        engines.append(EnginePlacement(
            engine_id=f"{o.model}-{n}", model=o.model, node=c.group.node, gpus=c.group.gpus,
            sm_pct=o.sm_pct, max_batch=o.max_batch, weight_bytes=o.weight_bytes,
            overhead_bytes=o.overhead_bytes, kv_bytes=kv, capacity_rps=o.capacity_rps,
            rate_rps=rate, estimated=o.estimated,
        ))
    served = {m.name: 0.0 for m in inst.models}
    for e in engines:
        served[e.model] += e.rate_rps
    unplaced = tuple(
        Unplaced(m.name, m.rate_rps - served[m.name],
                 explain_unplaced(inst, engines, m.name, all_options))
        for m in inst.models
        if served[m.name] < m.rate_rps * (1 - 1e-6) - 1e-9
    )
    return Plan(inst, tuple(engines), unplaced, report)


def explain_unplaced(
    inst: Instance,
    engines: list[EnginePlacement],
    model: str,
    all_options: dict[str, tuple[EngineOption, ...]] | None,
) -> str:
    """Name the binding resource and roughly how many more GPUs the model needs."""
    gpus = inst.cluster.gpus
    used = {g for e in engines for g in e.gpus}
    st = inst.settings
    sm = [sum(e.sm_pct for e in engines if g.gpu_id in e.gpus) for g in gpus]
    mem = [
        sum(e.memory_bytes for e in engines if g.gpu_id in e.gpus)
        / usable_bytes(g.spec, st.memory_utilization)
        for g in gpus
    ]
    if len(used) < len(gpus):
        return (f"{len(gpus) - len(used)} GPUs are idle, yet no option fits the remaining "
                "traffic within the SLOs")
    sm_fill = sum(sm) / (100 * st.sm_oversubscription * len(gpus))
    mem_fill = sum(mem) / len(gpus)
    binding = "SM shares" if sm_fill >= mem_fill else "GPU memory"
    text = (f"cluster full: all {len(gpus)} GPUs used ({sm_fill:.0%} of SM shares, "
            f"{mem_fill:.0%} of memory); binding: {binding}")
    demand = next(m for m in inst.models if m.name == model)
    if all_options and all_options.get(model):
        best = max(all_options[model], key=lambda o: o.capacity_rps / o.tp)
        served = sum(e.rate_rps for e in engines if e.model == model)
        more = math.ceil((demand.rate_rps - served) * st.min_headroom / best.capacity_rps)
        text += f"; about {more * best.tp} more GPU(s) would serve it"
    return text
