"""Plan files (YAML): what ``fineserve deploy`` reads and ``fineserve plan -o`` writes.

Layout: ``gpus`` lists each GPU with its engines (what the runtime launches), ``models`` the
per-model view (rates, SLOs, capacity, headroom, traffic split), ``solver`` how it was found,
and ``instance`` everything needed to re-validate or re-plan. Bytes are written as integers
so a round trip is exact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from fineserve.errors import SpecError
from fineserve.planner.schema import (
    Cluster,
    EnginePlacement,
    Instance,
    KVMode,
    LengthStats,
    ModelDemand,
    NodeSpec,
    Objective,
    Plan,
    PlannerSettings,
    Slo,
    SolveReport,
    StageReport,
    Unplaced,
)
from fineserve.planner.spec import read_yaml, spec_from_data
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.precision import Precision

FORMAT_VERSION = 1
GIB = 2**30


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    inst = plan.instance
    gpus = []
    for g in inst.cluster.gpus:
        on = plan.engines_on(g.gpu_id)
        gpus.append({
            "id": g.gpu_id, "node": g.node, "index": g.local_index, "type": g.spec.name,
            "sm_pct": sum(e.sm_pct for e in on),
            "memory_gib": round(sum(e.memory_bytes for e in on) / GIB, 2),
            "engines": [e.engine_id for e in on],
        })
    models = {}
    for m in inst.models:
        engines = plan.engines_of(m.name)
        placed = sum(e.rate_rps for e in engines)
        models[m.name] = {
            "rate_rps": m.rate_rps,
            "capacity_rps": round(plan.capacity_of(m.name), 4),
            "headroom": round(plan.headroom_of(m.name), 4),
            "traffic": {e.engine_id: round(e.rate_rps / placed, 6) if placed else 0.0
                        for e in engines},
        }
    return {
        "fineserve_plan": FORMAT_VERSION,
        "kv_mode": plan.kv_mode.value,
        "summary": {
            "gpus_used": len(plan.gpus_used), "gpus_total": inst.cluster.num_gpus,
            "cost": plan.cost, "min_headroom": round(plan.min_headroom, 4),
        },
        "solver": _report_to_dict(plan.report),
        "engines": [dataclasses.asdict(e) | {"gpus": list(e.gpus)} for e in plan.engines],
        "gpus": gpus,
        "models": models,
        "unplaced": [dataclasses.asdict(u) for u in plan.unplaced],
        "instance": instance_to_dict(inst),
    }


def _report_to_dict(r: SolveReport) -> dict[str, Any]:
    return {
        "method": r.method, "status": r.status, "seconds": round(r.seconds, 3), "note": r.note,
        "gap": None if r.gap != r.gap else round(r.gap, 6),  # NaN -> unknown
        "stages": [dataclasses.asdict(s) for s in r.stages],
    }


def instance_to_dict(inst: Instance) -> dict[str, Any]:
    st = dataclasses.asdict(inst.settings)
    st["kv_mode"], st["objective"] = inst.settings.kv_mode.value, inst.settings.objective.value
    st["sm_levels"], st["batch_levels"] = list(st["sm_levels"]), list(st["batch_levels"])
    return {
        "cluster": [{"name": n.name, "gpu": n.gpu.name, "gpus": n.num_gpus,
                     "cost_per_gpu": n.cost_per_gpu} for n in inst.cluster.nodes],
        "models": [{
            "name": m.name, "ref": m.ref, "arch": m.spec.arch.name,
            "weights": m.spec.precision.weights.value, "kv": m.spec.precision.kv.value,
            "rate_rps": m.rate_rps, "ttft_s": m.slo.ttft_s, "tpot_s": m.slo.tpot_s,
            "prompt_mean": m.lengths.prompt_mean, "output_mean": m.lengths.output_mean,
            "tp_choices": list(m.tp_choices),
        } for m in inst.models],
        "settings": st,
    }


def instance_from_dict(d: dict[str, Any]) -> Instance:
    nodes = tuple(NodeSpec(n["name"], gpu_spec(n["gpu"]), n["gpus"], n["cost_per_gpu"])
                  for n in d["cluster"])
    models = tuple(ModelDemand(
        name=m["name"], ref=m["ref"],
        spec=ModelSpec(resolve_arch(m["ref"]), Precision.parse(m["weights"], m["kv"])),
        rate_rps=m["rate_rps"], slo=Slo(m["ttft_s"], m["tpot_s"]),
        lengths=LengthStats(m["prompt_mean"], m["output_mean"]),
        tp_choices=tuple(m["tp_choices"]),
    ) for m in d["models"])
    st = dict(d["settings"])
    st["kv_mode"], st["objective"] = KVMode(st["kv_mode"]), Objective(st["objective"])
    st["sm_levels"], st["batch_levels"] = tuple(st["sm_levels"]), tuple(st["batch_levels"])
    return Instance(models, Cluster(nodes), PlannerSettings(**st))


def plan_from_dict(d: dict[str, Any]) -> Plan:
    if d.get("fineserve_plan") != FORMAT_VERSION:
        raise SpecError(f"plan: fineserve_plan must be {FORMAT_VERSION}, "
                        f"got {d.get('fineserve_plan')!r}", hint="re-run fineserve plan")
    inst = instance_from_dict(d["instance"])
    engines = tuple(EnginePlacement(**{**e, "gpus": tuple(e["gpus"])}) for e in d["engines"])
    unplaced = tuple(Unplaced(**u) for u in d["unplaced"])
    s = d["solver"]
    report = SolveReport(s["method"], s["status"], s["seconds"],
                         tuple(StageReport(**st) for st in s["stages"]), s.get("note", ""))
    return Plan(inst, engines, unplaced, report)


def dump_plan(plan: Plan) -> str:
    return yaml.safe_dump(plan_to_dict(plan), sort_keys=False, width=100)


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(dump_plan(plan))


def plan_from_data(data: object, path: str | Path) -> Plan:
    """An already-parsed plan document; a malformed one is a SpecError naming the file."""
    try:
        return plan_from_dict(data)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"{path}: not a FineServe plan ({type(exc).__name__}: {exc})",
                        hint="re-run fineserve plan -o") from None


def load_plan(path: str | Path) -> Plan:
    """Read a plan file. Raises SpecError naming the problem (missing key, bad value)."""
    return plan_from_data(read_yaml(path, "plan"), path)


def load_models(path: str | Path) -> tuple[ModelDemand, ...]:
    """The models of a plan file or of a planning spec, whichever ``path`` holds."""
    data = read_yaml(path, "spec or plan")
    if isinstance(data, dict) and "fineserve_plan" in data:
        return plan_from_data(data, path).models
    return spec_from_data(data, path).models
