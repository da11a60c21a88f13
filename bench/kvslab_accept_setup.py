"""What both modes of the acceptance bench share, decided before anything runs: the best
static split of the KV memory, the two plans (static split / one pool of the same bytes) and
the trace.

Best static split: among equal bytes, proportional to mean offered KV (rate) and proportional
to peak offered KV, each above the same floors, the one serving the most offered KV on this
run's own trace in a fluid model (per second: sum over engines of min(offered, share)).
Picked before anything runs; the pooled results never enter the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.kvslab_accept_trace import (
    GIB,
    MIB,
    Engine,
    TraceShape,
    engines,
    make_trace,
    offered_kv,
)
from fineserve.planner.schema import (
    EnginePlacement,
    KVMode,
    LengthStats,
    ModelDemand,
    Plan,
    PlannerSettings,
    hand_plan,
)
from fineserve.profiles.gpus import gpu_spec
from fineserve.workload.trace import Trace

GPU = "H100-SXM-80GB"
OVERHEAD = 3 * GIB
MAX_BATCH = 256


def split(kv_bytes: int, floors: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Floors first, the rest by ``weights``, in 2 MiB units; sums to exactly ``kv_bytes``
    (a multiple of 2 MiB; the rounding remainder goes to the largest share)."""
    rest = kv_bytes - sum(floors.values())
    if rest < 0:
        raise ValueError(f"KV of {kv_bytes} B is below the engines' floors "
                         f"({sum(floors.values())} B): raise --kv-gib")
    total = sum(weights.values()) or 1.0
    out = {n: floors[n] + int(rest * weights[n] / total) // (2 * MIB) * (2 * MIB)
           for n in floors}
    out[max(out, key=out.__getitem__)] += kv_bytes - sum(out.values())
    return out


def candidate_splits(kv_bytes: int, floors: dict[str, int], offered: dict[str, list[float]]
                     ) -> dict[str, dict[str, int]]:
    return {"equal": split(kv_bytes, floors, {n: 1.0 for n in floors}),
            "rate": split(kv_bytes, floors, {n: sum(v) for n, v in offered.items()}),
            "peak": split(kv_bytes, floors, {n: max(v) for n, v in offered.items()})}


def served_share(shares: dict[str, int], offered: dict[str, list[float]]) -> float:
    """Fraction of the offered KV-seconds that fits the shares."""
    want = sum(sum(v) for v in offered.values())
    got = sum(min(x, shares[n]) for n, v in offered.items() for x in v)
    return float(got / want) if want else 1.0


def best_split(kv_bytes: int, floors: dict[str, int], offered: dict[str, list[float]]
               ) -> tuple[str, dict[str, int], dict[str, float]]:
    cands = candidate_splits(kv_bytes, floors, offered)
    scores = {k: served_share(s, offered) for k, s in cands.items()}
    name = max(scores, key=lambda k: (scores[k], k == "equal"))
    return name, cands[name], scores


def make_plan(es: tuple[Engine, ...], kv: dict[str, int], pooled: bool, kv_total: int,
              rates: dict[str, float], gpu_bytes: int, shape: TraceShape) -> Plan:
    """Static: ``kv`` reserved per engine. Pooled: ``kv`` are floors; memory_utilization makes
    the pool (``gpu_bytes`` - the GPU's memory as NVML reports it, which deploy uses - x it
    - weights - overheads, in granules) ``kv_total`` (+ at most one granule)."""
    gpu = gpu_spec(GPU)
    models, placed = [], []
    for e in es:
        models.append(ModelDemand(e.name, e.ref, e.spec, rates[e.name], e.slo,
                                  LengthStats(shape.prompt_mean, shape.output_mean), (1,)))
        placed.append(EnginePlacement(f"{e.name}-0", e.name, "node0", (0,), e.sm_pct,
                                      MAX_BATCH, e.spec.weight_bytes(1), OVERHEAD, kv[e.name],
                                      2 * rates[e.name], rates[e.name], estimated=True))
    non_kv = sum(p.weight_bytes + p.overhead_bytes for p in placed)
    util = (kv_total + non_kv + 2 * MIB) / gpu_bytes  # + one granule: rounding down
    settings = PlannerSettings(kv_mode=KVMode.POOLED if pooled else KVMode.STATIC,
                               memory_utilization=round(util, 6))
    return hand_plan(models, placed, gpu, nodes=("node0",), settings=settings,
                     method="kvslab-accept", note="bench/kvslab_accept.py")


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything both modes share, decided before the first deployment."""

    engines: tuple[Engine, ...]
    shape: TraceShape
    floors: dict[str, int]
    split_name: str
    static_kv: dict[str, int]
    split_scores: dict[str, float]
    trace: Trace
    rates: dict[str, float]
    gpu_bytes: int  # device memory (NVML on the GPU host; the catalog's for --dry-run)

    @property
    def kv_total(self) -> int:
        """The KV memory both modes share (the trace shape's)."""
        return self.shape.kv_bytes


def make_setup(shape: TraceShape, seed: int, gpu_bytes: int) -> Setup:
    es = engines()
    floors = {e.name: e.floor_bytes(shape.max_model_len) for e in es}
    trace = make_trace(es, shape, seed)
    offered = offered_kv(trace, es, shape.tpot_guess)
    name, shares, scores = best_split(shape.kv_bytes, floors, offered)
    rates = {e.name: max(1e-3, float((trace.model == e.name).sum()) / shape.duration_s)
             for e in es}
    return Setup(es, shape, floors, name, shares, scores, trace, rates, gpu_bytes)


def plan_for(setup: Setup, mode: str) -> Plan:
    """The plan of ``mode`` ("static" | "pooled")."""
    kv = setup.static_kv if mode == "static" else setup.floors
    return make_plan(setup.engines, kv, mode == "pooled", setup.kv_total, setup.rates,
                     setup.gpu_bytes, setup.shape)


def write_plans(setup: Setup, work: Path) -> dict[str, Path]:
    from fineserve.planner.planfile import save_plan

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for mode in ("static", "pooled"):
        out[mode] = work / f"plan-{mode}.yaml"
        save_plan(plan_for(setup, mode), out[mode])
    return out


def gib(d: dict[str, int]) -> dict[str, float]:
    return {k: round(v / GIB, 2) for k, v in d.items()}
