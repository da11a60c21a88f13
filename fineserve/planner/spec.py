"""The planning spec (YAML): cluster, models with rates and SLOs, planner settings.

Parsed with pydantic (unknown keys rejected, so typos are caught), then turned into the
frozen ``Instance``. Any problem becomes one ``SpecError`` line naming the field path,
e.g. ``spec.yaml: models[2].slo.ttft_ms: must be greater than 0``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fineserve.errors import FineserveError, SpecError
from fineserve.planner.schema import (
    Cluster,
    Instance,
    KVMode,
    LengthStats,
    ModelDemand,
    NodeSpec,
    Objective,
    PlannerSettings,
    Slo,
)
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import GIB, gpu_spec
from fineserve.profiles.precision import Precision

Positive = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SloIn(_Strict):
    ttft_ms: Positive
    tpot_ms: Positive


class ModelIn(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    model: str = Field(min_length=1)
    weights: str = "bf16"
    kv: str = "bf16"
    rate: Annotated[float, Field(gt=0, le=1e6)]  # requests per second
    slo: SloIn
    tp: list[Annotated[int, Field(ge=1, le=64)]] = Field(default=[1, 2, 4, 8], min_length=1)
    prompt_tokens: Annotated[float, Field(gt=0, le=1e6)] | None = None
    output_tokens: Annotated[float, Field(gt=0, le=1e6)] | None = None


class NodeIn(_Strict):
    name: str | None = None
    gpu: str = "H100-SXM-80GB"
    gpus: Annotated[int, Field(ge=1, le=64)] = 8
    cost_per_gpu: Annotated[float, Field(gt=0, le=1e6)] = 1.0


class ClusterIn(_Strict):
    gpu: str = "H100-SXM-80GB"
    nodes: Annotated[int, Field(ge=1, le=1024)] | Annotated[list[NodeIn], Field(min_length=1)] = 1
    gpus_per_node: Annotated[int, Field(ge=1, le=64)] = 8
    cost_per_gpu: Annotated[float, Field(gt=0, le=1e6)] = 1.0


class WorkloadIn(_Strict):
    prompt_tokens: Annotated[float, Field(gt=0, le=1e6)] = 512
    output_tokens: Annotated[float, Field(gt=0, le=1e6)] = 256


class PlannerIn(_Strict):
    kv_mode: KVMode = KVMode.POOLED
    objective: Objective = Objective.LEXICOGRAPHIC
    sm_levels: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default=list(range(10, 101, 10)), min_length=1)
    batch_levels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default=[8, 16, 32, 64, 128, 256], min_length=1)
    headroom_weight: Annotated[float, Field(ge=0)] = 1.0
    sm_oversubscription: Annotated[float, Field(ge=1, le=4)] = 1.0
    memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.92
    engine_overhead_gib: Annotated[float, Field(ge=0)] = 3.0
    kv_margin: Annotated[float, Field(ge=0, le=4)] = 0.2
    pool_burst_margin: Annotated[float, Field(ge=0, le=4)] = 0.25
    max_engines_per_gpu: Annotated[int, Field(ge=1, le=48)] = 8
    # below 1 a model would be planned to receive more traffic than it can serve
    min_headroom: Annotated[float, Field(ge=1, le=100)] = 1.0
    headroom_cap: Annotated[float, Field(gt=0, le=1000)] = 10.0
    slo_safety: Annotated[float, Field(gt=0, le=1)] = 0.9
    time_limit_s: Positive = 30.0
    num_workers: Annotated[int, Field(ge=1, le=64)] = 8
    seed: int = 0

    @model_validator(mode="after")
    def _caps(self) -> PlannerIn:
        if self.headroom_cap < self.min_headroom:
            raise ValueError("headroom_cap must be >= min_headroom")
        return self


class SpecIn(_Strict):
    cluster: ClusterIn = ClusterIn()
    workload: WorkloadIn = WorkloadIn()
    models: list[ModelIn] = Field(min_length=1)
    planner: PlannerIn = PlannerIn()

    @model_validator(mode="after")
    def _unique(self) -> SpecIn:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dup)}")
        return self


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.startswith("constrained-")):
            continue  # pydantic names union branches in the location: not a field
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "spec"


def parse_spec(data: object, source: str = "spec") -> Instance:
    """Validate a parsed YAML document and build the instance."""
    try:
        spec = SpecIn.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a list given where int | list is allowed: the list branch's error is the real one
        errors = [e for e in errors if not any(
            isinstance(p, str) and p.startswith("constrained-int") for p in e["loc"])] or errors
        # a misspelt key also makes the real key "missing": report the misspelling
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against docs/spec.md)"
        raise SpecError(f"{source}: {_where(err['loc'])}: {msg}") from None
    return _to_instance(spec, source)


def _to_instance(spec: SpecIn, source: str) -> Instance:
    models = []
    for i, m in enumerate(spec.models):
        field = f"{source}: models[{i}]"
        try:
            arch = resolve_arch(m.model, field=f"{field}.model")
            precision = Precision.parse(m.weights, m.kv)
        except FineserveError as exc:
            if exc.message.startswith(source):
                raise
            # precision errors name their key; config.json errors name the file
            text = exc.message if exc.message.startswith(("weights", "kv")) else (
                f"model ({exc.message})")
            raise SpecError(f"{field}.{text}", exc.hint) from None
        models.append(ModelDemand(
            name=m.name, ref=m.model, spec=ModelSpec(arch, precision), rate_rps=m.rate,
            slo=Slo(m.slo.ttft_ms / 1e3, m.slo.tpot_ms / 1e3),
            lengths=LengthStats(m.prompt_tokens or spec.workload.prompt_tokens,
                                m.output_tokens or spec.workload.output_tokens),
            tp_choices=tuple(sorted(set(m.tp))),
        ))
    return Instance(tuple(models), _cluster(spec.cluster, source), _settings(spec.planner))


def _cluster(c: ClusterIn, source: str) -> Cluster:
    if isinstance(c.nodes, int):
        gpu = gpu_spec(c.gpu, field=f"{source}: cluster.gpu")
        nodes = [NodeSpec(f"node{i}", gpu, c.gpus_per_node, c.cost_per_gpu)
                 for i in range(c.nodes)]
    else:
        nodes = [NodeSpec(n.name or f"node{i}",
                          gpu_spec(n.gpu, field=f"{source}: cluster.nodes[{i}].gpu"),
                          n.gpus, n.cost_per_gpu) for i, n in enumerate(c.nodes)]
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise SpecError(f"{source}: cluster.nodes: node names must be unique")
    return Cluster(tuple(nodes))


def _settings(p: PlannerIn) -> PlannerSettings:
    return PlannerSettings(
        sm_levels=tuple(sorted(set(p.sm_levels))),
        batch_levels=tuple(sorted(set(p.batch_levels))),
        kv_mode=p.kv_mode, objective=p.objective, headroom_weight=p.headroom_weight,
        sm_oversubscription=p.sm_oversubscription, memory_utilization=p.memory_utilization,
        engine_overhead_bytes=int(p.engine_overhead_gib * GIB), kv_margin=p.kv_margin,
        pool_burst_margin=p.pool_burst_margin, max_engines_per_gpu=p.max_engines_per_gpu,
        min_headroom=p.min_headroom, headroom_cap=p.headroom_cap, slo_safety=p.slo_safety,
        time_limit_s=p.time_limit_s, num_workers=p.num_workers, seed=p.seed,
    )


def read_yaml(path: str | Path, what: str = "spec") -> object:
    """Parse a YAML file; unreadable files and YAML errors become one-line SpecErrors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None


def spec_from_data(data: object, path: str | Path) -> Instance:
    """An already-parsed spec document (see ``read_yaml``)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with 'models' (and 'cluster', 'planner')")
    return parse_spec(data, source=path.name)


def load_spec(path: str | Path) -> Instance:
    return spec_from_data(read_yaml(path, "spec"), path)


EXAMPLE_NAME = "example-mixed-h100.yaml"


def example_spec_text() -> str:
    return resources.files("fineserve").joinpath(f"data/{EXAMPLE_NAME}").read_text()


def load_example() -> Instance:
    """The bundled example: a mixed-precision model set on a small H100 cluster."""
    return parse_spec(yaml.safe_load(example_spec_text()), source=EXAMPLE_NAME)
