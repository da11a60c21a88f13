"""Check a plan without any solver: recompute memory, SM shares, capacities and traffic.

Runs on every plan (ILP and greedy). It re-derives weight bytes from the catalog (catching the
seed code's TP-unaware weight sizes), recomputes each engine's capacity from the latency model,
and insists that unplaced traffic is listed with a reason rather than silently dropped.
"""

from __future__ import annotations

import math

from fineserve.errors import PlanInvalid
from fineserve.planner.capacity import engine_capacity, kv_bytes_for_batch
from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import EnginePlacement, Instance, KVMode, Plan
from fineserve.profiles.latency import EngineShape, LatencyModel

REL_TOL = 1e-6
KV_TOL_BYTES = 64 * 1024  # rounding slack per engine (ILP works in KiB)


def check_plan(inst: Instance, plan: Plan, latency: LatencyModel) -> list[str]:
    """Every violated constraint, as one line each; empty when the plan is valid."""
    problems: list[str] = []
    gpus = {g.gpu_id: g for g in inst.cluster.gpus}
    names = {m.name for m in inst.models}
    ids = [e.engine_id for e in plan.engines]
    if len(ids) != len(set(ids)):
        problems.append("engine ids are not unique")
    for e in plan.engines:
        if e.model not in names:
            problems.append(f"{e.engine_id}: unknown model {e.model!r}")
            continue
        numbers = (e.rate_rps, e.capacity_rps, e.kv_bytes, e.weight_bytes, e.overhead_bytes)
        if not all(math.isfinite(x) and x >= 0 for x in numbers):
            problems.append(f"{e.engine_id}: rates, capacity and bytes must be finite and >= 0")
            continue
        group_problems = _check_group(inst, e, gpus)
        problems += group_problems or _check_engine(inst, plan, e, latency)
    problems += _check_gpus(inst, plan)
    problems += _check_models(inst, plan)
    return problems


def validate_plan(inst: Instance, plan: Plan, latency: LatencyModel) -> Plan:
    """Return ``plan`` if valid. Raises PlanInvalid naming every violation."""
    problems = check_plan(inst, plan, latency)
    if problems:
        raise PlanInvalid(
            f"plan from {plan.report.method} is invalid: " + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
            hint="this is a bug in the planner; please report it with the spec",
        )
    return plan


def _check_group(inst: Instance, e: EnginePlacement, gpus: dict) -> list[str]:
    tp = e.tp
    if any(g not in gpus for g in e.gpus):
        return [f"{e.engine_id}: GPU ids {e.gpus} outside the cluster"]
    slots = [gpus[g] for g in e.gpus]
    local = [s.local_index for s in slots]
    ok = (
        tp & (tp - 1) == 0
        and len({s.node for s in slots}) == 1
        and slots[0].node == e.node
        and local == list(range(local[0], local[0] + tp))
        and local[0] % tp == 0
    )
    if not ok:
        return [f"{e.engine_id}: GPUs {e.gpus} are not an aligned TP group in one node"]
    demand = inst.model(e.model)
    why = demand.spec.arch.check_tp(tp)
    if why is not None or tp not in demand.tp_choices:
        return [f"{e.engine_id}: tp={tp} not allowed ({why or 'not in tp choices'})"]
    return []


def _check_engine(
    inst: Instance, plan: Plan, e: EnginePlacement, latency: LatencyModel
) -> list[str]:
    st = inst.settings
    m = inst.model(e.model)
    spec = inst.cluster.gpus[e.gpus[0]].spec
    engine = EngineShape(spec, m.spec, e.tp)
    out = []
    if e.weight_bytes != m.spec.weight_bytes(e.tp):
        out.append(f"{e.engine_id}: weight bytes {e.weight_bytes} != catalog "
                   f"{m.spec.weight_bytes(e.tp)} for tp={e.tp}")
    if e.overhead_bytes < st.engine_overhead_bytes:
        out.append(f"{e.engine_id}: overhead below the configured per-engine overhead")
    if e.sm_pct not in st.sm_levels:
        out.append(f"{e.engine_id}: SM share {e.sm_pct}% is not one of the levels")
    kv_limit = e.kv_bytes if plan.kv_mode is KVMode.STATIC else (
        usable_bytes(spec, st.memory_utilization) - e.weight_bytes - e.overhead_bytes
    )
    cap = engine_capacity(latency, engine, e.sm_pct, m.slo, m.lengths, max_batch=e.max_batch,
                          kv_limit_bytes=kv_limit, slo_safety=st.slo_safety,
                          kv_margin=st.kv_margin)
    if cap.rate_rps < e.capacity_rps * (1 - REL_TOL):
        out.append(f"{e.engine_id}: claims {e.capacity_rps:.3f} req/s, recomputed capacity "
                   f"is {cap.rate_rps:.3f}")
    if e.rate_rps > cap.rate_rps * (1 + REL_TOL) + 1e-9:
        out.append(f"{e.engine_id}: routed {e.rate_rps:.3f} req/s above capacity "
                   f"{cap.rate_rps:.3f}")
    if plan.kv_mode is KVMode.STATIC:
        need = kv_bytes_for_batch(engine, e.max_batch, m.lengths, st.kv_margin)
    else:
        need = math.ceil(cap.kv_bytes_per_rps * e.rate_rps * (1 + st.pool_burst_margin))
    if e.kv_bytes + KV_TOL_BYTES < need:
        out.append(f"{e.engine_id}: KV {e.kv_bytes} bytes below the {need} its load needs")
    return out


def _check_gpus(inst: Instance, plan: Plan) -> list[str]:
    st = inst.settings
    out = []
    for g in inst.cluster.gpus:
        on = plan.engines_on(g.gpu_id)
        if not on:
            continue
        sm = sum(e.sm_pct for e in on)
        if sm > 100 * st.sm_oversubscription + 1e-9:
            out.append(f"gpu{g.gpu_id}: SM shares sum to {sm}%")
        mem = sum(e.memory_bytes for e in on)
        cap = usable_bytes(g.spec, st.memory_utilization)
        if mem > cap + KV_TOL_BYTES * len(on):
            out.append(f"gpu{g.gpu_id}: {mem / 2**30:.2f} GiB placed, {cap / 2**30:.2f} usable")
        if len(on) > st.max_engines_per_gpu:
            out.append(f"gpu{g.gpu_id}: {len(on)} engines, limit {st.max_engines_per_gpu}")
        models = [e.model for e in on]
        if len(models) != len(set(models)):
            out.append(f"gpu{g.gpu_id}: two engines of one model")
    return out


def _check_models(inst: Instance, plan: Plan) -> list[str]:
    st = inst.settings
    out = []
    unplaced = {u.model: u for u in plan.unplaced}
    for m in inst.models:
        routed = sum(e.rate_rps for e in plan.engines_of(m.name))
        missing = unplaced[m.name].rate_rps if m.name in unplaced else 0.0
        if abs(routed + missing - m.rate_rps) > 1e-6 * max(1.0, m.rate_rps) + 1e-3:
            out.append(f"{m.name}: routed {routed:.4f} + unplaced {missing:.4f} req/s != "
                       f"offered {m.rate_rps:.4f}")
        if m.name in unplaced and not unplaced[m.name].reason.strip():
            out.append(f"{m.name}: unplaced without a reason")
        capacity = plan.capacity_of(m.name)
        if routed > 0 and capacity < st.min_headroom * routed * (1 - REL_TOL) - 1e-9:
            out.append(f"{m.name}: capacity {capacity:.3f} below {st.min_headroom} x routed "
                       f"{routed:.3f} req/s")
    return out
