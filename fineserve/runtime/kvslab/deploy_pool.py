"""Deploying a plan on the KV pool: per-GPU pool sizes and ledgers, each engine's floor, virtual
maximum and ``FINESERVE_KVSLAB_*`` variables.

``plan_pools`` is pure (numbers and paths) so the arithmetic is unit-tested; ``create_ledgers``,
``remove_ledgers`` and ``write_plugin_dist`` are the only file operations, called by the
deployment before the first engine starts and after the last one stopped.

Sizing (docs/kv-slab.md): pool of a GPU = its memory x the plan's ``memory_utilization`` minus
every engine's non-KV footprint (weights + overhead; an engine kept static counts whole),
rounded down to 2 MiB granules. An engine's floor is the plan's ``kv_bytes`` rounded up to
whole slabs (what the planner charged it in pooled mode); its virtual maximum, passed as
``--kv-cache-memory-bytes``, is the whole pool rounded down to its slabs: address space is
reserved, not memory, and the pool's grant rule bounds what it maps.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fineserve.planner.schema import EnginePlacement
from fineserve.profiles.catalog import ModelSpec
from fineserve.runtime.kvslab.errors import FloorsExceedPool
from fineserve.runtime.kvslab.layout import GRANULE, slab_bytes_for

ENGINE_PLANES = 1  # vLLM 0.26's CUDA backends (FlashAttention, FlashInfer) are block-major
SHM_DIR = "/dev/shm"


@dataclass(frozen=True, slots=True)
class PooledEngine:
    """One engine backed by the pool of its GPU."""

    engine_id: str
    gpu_index: int  # local (NVML) index
    ledger: str
    slab_bytes: int
    floor_slabs: int
    max_slabs: int

    @property
    def floor_bytes(self) -> int:
        return self.floor_slabs * self.slab_bytes

    @property
    def virtual_bytes(self) -> int:
        """``--kv-cache-memory-bytes``: a whole number of slabs."""
        return self.max_slabs * self.slab_bytes

    def env(self, pythonpath: str) -> tuple[tuple[str, str], ...]:
        return (("FINESERVE_KVSLAB", "1"), ("FINESERVE_KVSLAB_ENGINE_ID", self.engine_id),
                ("FINESERVE_KVSLAB_FLOOR_BYTES", str(self.floor_bytes)),
                ("FINESERVE_KVSLAB_LEDGER", self.ledger), ("PYTHONPATH", pythonpath))


@dataclass(frozen=True, slots=True)
class GpuPool:
    gpu_index: int
    ledger: str
    pool_bytes: int
    engine_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KvPoolPlan:
    pools: tuple[GpuPool, ...]
    engines: tuple[PooledEngine, ...]
    notes: tuple[str, ...]

    def engine(self, engine_id: str) -> PooledEngine | None:
        return next((e for e in self.engines if e.engine_id == engine_id), None)


def ledger_dir(run_dir: Path) -> str:
    """Where the ledgers of the deployment in ``run_dir`` live: /dev/shm (tmpfs: the lock and
    rename are cheap), else the run directory."""
    return SHM_DIR if os.path.isdir(SHM_DIR) else str(Path(run_dir).expanduser().absolute())


def ledger_path(run_dir: Path, gpu_index: int, directory: str | None = None) -> str:
    key = hashlib.sha1(str(Path(run_dir).expanduser().resolve()).encode()).hexdigest()[:10]
    return os.path.join(directory or ledger_dir(run_dir),
                        f"fineserve-kvslab-{key}-gpu{gpu_index}.json")


def engine_slab_bytes(spec: ModelSpec) -> int:
    """Slab of an engine of ``spec`` (TP 1), as the plugin will compute it from vLLM."""
    return slab_bytes_for(spec.page_size_bytes(1), ENGINE_PLANES, spec.arch.num_layers)


def plan_pools(engines: Sequence[EnginePlacement], specs: Mapping[str, ModelSpec],
               gpu_of: Callable[[EnginePlacement], tuple[int, ...]],
               total_bytes: Mapping[int, int], utilization: float,
               ledger_of: Callable[[int], str]) -> KvPoolPlan:
    """Pools for the GPUs of ``engines`` (this host's). TP > 1 engines stay static: the plugin
    serves one process per engine only.

    Args:
        specs: model name -> its spec (precision decides the page size).
        gpu_of: engine -> its local GPU indices.
        total_bytes: local GPU index -> memory.
        utilization: the plan's ``memory_utilization``.
        ledger_of: local GPU index -> ledger path.
    Raises:
        FloorsExceedPool: a GPU's floors, rounded up to slabs, do not fit its pool.
    """
    notes: list[str] = []
    by_gpu: dict[int, list[EnginePlacement]] = {}
    for e in engines:
        for g in gpu_of(e):
            by_gpu.setdefault(g, []).append(e)
    static = [e for e in engines if e.tp > 1]
    if static:
        notes.append("KV pool: TP > 1 engines keep a static KV cache: "
                     + ", ".join(e.engine_id for e in static))
    pools, pooled = [], []
    for g in sorted(by_gpu):
        members = [e for e in by_gpu[g] if e.tp == 1]
        if not members:
            continue
        budget = int(total_bytes[g] * utilization)
        non_kv = sum(e.weight_bytes + e.overhead_bytes if e.tp == 1 else e.memory_bytes
                     for e in by_gpu[g])
        pool = (budget - non_kv) // GRANULE * GRANULE
        rows = []
        for e in members:
            slab = engine_slab_bytes(specs[e.model])
            rows.append((e, slab, max(1, math.ceil(e.kv_bytes / slab))))
        floors = sum(slab * n for _, slab, n in rows)
        if floors > pool:
            raise FloorsExceedPool(
                f"GPU {g}: KV floors of {', '.join(e.engine_id for e, _, _ in rows)} need "
                f"{floors} B in whole slabs, the pool has {max(pool, 0)} B "
                f"({budget} B usable - {non_kv} B weights and overheads)",
                hint="re-plan (the plan's KV floors do not fit in whole slabs), or deploy "
                     "with a static KV cache")
        path = ledger_of(g)
        pools.append(GpuPool(g, path, pool, tuple(e.engine_id for e in members)))
        pooled += [PooledEngine(e.engine_id, g, path, slab, n, pool // slab)
                   for e, slab, n in rows]
        notes.append(f"KV pool on GPU {g}: {pool / 2**30:.1f} GiB shared by "
                     f"{', '.join(e.engine_id for e in members)} (floors "
                     f"{floors / 2**30:.1f} GiB)")
    return KvPoolPlan(tuple(pools), tuple(pooled), tuple(notes))


def create_ledgers(pools: Sequence[GpuPool]) -> None:
    """A fresh ledger per pool; a stale one (a deployment that died) is replaced."""
    from fineserve.runtime.kvslab.ledger import Ledger

    remove_ledgers(pools)
    for p in pools:
        Ledger.create(p.ledger, p.pool_bytes)


def remove_ledgers(pools: Sequence[GpuPool]) -> None:
    for p in pools:
        for path in (p.ledger, p.ledger + ".lock"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


PLUGIN_DIST = "fineserve_kvslab_plugin-0.dist-info"


def plugin_path_dir(run_dir: Path) -> Path:
    """A ``sys.path`` entry holding only a distribution record for the plugin's entry point."""
    return Path(run_dir).expanduser().absolute() / "kvslab-plugin"


def write_plugin_dist(directory: Path) -> None:
    """Make vLLM's entry-point discovery find the plugin in every engine process (API server,
    engine core, forked or spawned) whether or not fineserve is installed in the engine's
    Python (the GPU host runs it from PYTHONPATH): a minimal dist-info on PYTHONPATH is a
    distribution to ``importlib.metadata``."""
    dist = directory / PLUGIN_DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fineserve-kvslab-plugin\n"
                                   "Version: 0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nfineserve_kvslab = fineserve.runtime.kvslab.plugin:register\n")


def engine_pythonpath(run_dir: Path, inherited: str | None) -> str:
    """PYTHONPATH of a pooled engine: the plugin's record, fineserve's import root, then what
    the deployment inherited."""
    import fineserve

    root = str(Path(fineserve.__file__).resolve().parent.parent)
    parts = [str(plugin_path_dir(run_dir)), root, *(inherited.split(os.pathsep)
                                                     if inherited else [])]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))
