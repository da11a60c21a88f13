"""Pool sizing and the manager tick that turns ledger rows into targets.

There is no mandatory manager process: every engine's background thread calls
``PoolManager.maybe_tick``; the ledger lock elects one caller per interval (``retarget``).
``run_manager`` is the same tick in a loop for a standalone per-GPU process (the deploy
runtime may prefer it: it keeps ticking while every engine is busy or wedged).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fineserve.runtime.kvslab.errors import KvSlabError
from fineserve.runtime.kvslab.ledger import EngineLease, Ledger, PoolState
from fineserve.runtime.kvslab.policy import EngineKvDemand, KvTargets, PolicyParams, compute_targets

GRANULE = 2 << 20  # CUDA VMM granularity on H100 (measured, docs/gpu-host.md)


def pool_bytes(gpu_total_bytes: int, non_kv_bytes: Sequence[int], headroom_bytes: int) -> int:
    """Pool = GPU memory - every engine's non-KV footprint - headroom, rounded to granules.

    Non-KV footprint = weights + activations + CUDA graphs + context (MPS) of one engine.
    Headroom absorbs what nobody declared (allocator caches, NCCL, fragmentation); without it
    a ``cuMemCreate`` inside a granted lease can fail.

    Raises:
        KvSlabError: nothing is left for the pool (the message gives the numbers).
    """
    if gpu_total_bytes <= 0 or headroom_bytes < 0 or any(b < 0 for b in non_kv_bytes):
        raise KvSlabError("gpu_total_bytes must be > 0, headroom and footprints >= 0")
    left = gpu_total_bytes - sum(non_kv_bytes) - headroom_bytes
    left -= left % GRANULE
    if left <= 0:
        raise KvSlabError(
            f"no memory left for the KV pool: {gpu_total_bytes} B GPU - "
            f"{sum(non_kv_bytes)} B non-KV - {headroom_bytes} B headroom",
            hint="place fewer engines on this GPU or lower the headroom")
    return left


def demand_of(e: EngineLease) -> EngineKvDemand:
    return EngineKvDemand(
        engine_id=e.engine_id, bytes_per_token=e.bytes_per_token, slab_bytes=e.slab_bytes,
        floor_slabs=e.floor_slabs, max_slabs=e.max_slabs, held_slabs=e.held_slabs,
        used_tokens=e.used_tokens, demand_tokens=e.demand_tokens, slo_weight=e.slo_weight,
        demand_mean_tokens=e.demand_mean_tokens, demand_std_tokens=e.demand_std_tokens)


def targets_for(state: PoolState, params: PolicyParams) -> KvTargets:
    """Policy on a ledger snapshot; stale engines are pinned at what they hold."""
    live = [demand_of(e) for e in state.engines if not e.stale]
    stale_bytes = sum(e.reserved_bytes for e in state.engines if e.stale)
    floors = sum(d.floor_slabs * d.slab_bytes for d in live)
    previous = KvTargets({e.engine_id: e.target_slabs for e in state.engines}, {})
    # floors were checked against the whole pool at registration: they win over stale excess
    budget = max(state.pool_bytes - stale_bytes, floors)
    return compute_targets(budget, live, previous, params)


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    tick_s: float = 0.5  # how often targets are recomputed
    heartbeat_timeout_s: float = 10.0  # silent this long: stale (no grants, target frozen)
    params: PolicyParams = field(default_factory=PolicyParams)

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or self.heartbeat_timeout_s <= 0:
            raise KvSlabError("tick_s and heartbeat_timeout_s must be > 0")


class PoolManager:
    """Reap dead engines and recompute targets at most once per ``tick_s``, pool-wide."""

    def __init__(self, ledger: Ledger, config: ManagerConfig = ManagerConfig()) -> None:  # noqa: B008
        self.ledger = ledger
        self.config = config
        self.last_targets: KvTargets | None = None

    def maybe_tick(self, now: float) -> Mapping[str, int] | None:
        """Run a tick if nobody ran one within ``tick_s``; returns the targets written."""
        self.ledger.reap(now, self.config.heartbeat_timeout_s)

        def compute(st: PoolState) -> Mapping[str, int]:
            self.last_targets = targets_for(st, self.config.params)
            return self.last_targets.slabs

        return self.ledger.retarget(now, self.config.tick_s, compute)


def run_manager(ledger: Ledger, config: ManagerConfig, *, until: Callable[[], bool],
                clock: Callable[[], float] = time.time) -> None:
    """Tick until ``until()`` is true (a standalone per-GPU manager loop)."""
    mgr = PoolManager(ledger, config)
    while not until():
        mgr.maybe_tick(clock())
        time.sleep(config.tick_s / 2)
