"""KV memory per GPU in the simulator: static partitions, or one KV Slab pool per GPU.

Static: each engine owns its plan reservation (``kv_bytes``) for the whole run.

Pooled: the GPU's pool is its usable memory minus every engine's weights and overhead (per
rank). An engine holds whole *slabs* - 2 MiB granules in every layer's K and V tensors
(``kvslab.layout.slab_bytes_for``), so slab bytes differ per engine and precision - and can
use ``held x tokens_per_slab`` tokens. Every ``interval_s`` the runtime's own policy
(``fineserve.runtime.kvslab.policy.compute_targets``, the same code) sets a target per engine
from its demand (running + waiting tokens, with EWMA statistics as the runtime publishes):

* grow (``grow_ahead_slabs`` set, the runtime's default): as the runtime's engine does, a
  slab is mapped whenever fewer than ``grow_ahead_slabs`` slabs' tokens are free, whatever the
  target; so vLLM's KV usage gauge, which the adaptive scheduler reads, runs close to full.
  Eager (``None``): up to the target at every tick, usable ``grow_latency_s`` later;
* shrink: only slabs holding no tokens go; the engine stops using them at once and the pool
  gets them back ``shrink_latency_s`` later (drain, then unmap);
* on demand: an engine that cannot admit or must preempt maps what it lacks synchronously if
  the pool has room, and that step takes ``sync_grow_latency_s`` longer.

Every grow obeys the ledger's grant rule (``ledger.py``): engine i may hold k more slabs while
``(reserved_i + k) slab_i + sum_{j != i} max(reserved_j, target_j) slab_j <= pool``, so it
borrows only memory no other engine is targeted for (before the first tick: any free memory).

A TP engine holds the same slabs on every rank, so each of its GPUs' pools must have room,
and its target is the smallest its pools give. Memory that an engine holds but fills with no
token is *stranded*; the part of it due to rounding up to whole slabs (at most one slab per
engine) is reported as slab rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fineserve.runtime.kvslab.layout import slab_bytes_for
from fineserve.runtime.kvslab.policy import (
    EngineKvDemand,
    KvTargets,
    PolicyParams,
    compute_targets,
)
from fineserve.runtime.kvslab.stats import DemandStats

if TYPE_CHECKING:
    from fineserve.sim.engine import EngineSim

KV_PLANES = 2  # K and V tensors (FlashAttention layout): one granule in each, every layer


@dataclass(frozen=True, slots=True)
class PoolParams:
    interval_s: float = 0.5  # policy tick
    grow_latency_s: float = 0.004  # background map: slabs usable this long after the target rises
    sync_grow_latency_s: float = 0.004  # on-demand map, added to the step that needed it
    shrink_latency_s: float = 0.02  # drain + unmap before freed slabs return to the pool
    # The runtime maps lazily: a slab when fewer than this many slabs' tokens are free
    # (FINESERVE_KVSLAB_GROW_AHEAD, default 1; its 5 ms poll is modelled as immediate), the
    # policy's target only caps what it keeps (drains above it). None: map up to the target
    # at every policy tick (the eager model, which reports a lower KV usage than deployed).
    grow_ahead_slabs: float | None = 1.0
    policy: PolicyParams = field(default_factory=PolicyParams)

    def __post_init__(self) -> None:
        g = self.grow_ahead_slabs
        if g is not None and not (math.isfinite(g) and g >= 0):
            raise ValueError(f"pool.grow_ahead_slabs must be >= 0 or None, got {g}")


@dataclass(frozen=True, slots=True)
class KvSample:
    """KV memory of one GPU at one instant (bytes per GPU, i.e. per rank for TP engines)."""

    t: float
    gpu: int
    capacity_bytes: int  # pool, or the sum of static reservations
    held_bytes: int  # leased to engines (static: reserved); growing and draining included
    used_bytes: int  # holding tokens of running requests
    rounding_bytes: int  # slab rounding: held-and-usable tail of each engine's last slab

    @property
    def utilisation(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    @property
    def stranded(self) -> float:
        """Fraction of the GPU's KV memory held by an engine but holding no token."""
        return (self.held_bytes - self.used_bytes) / self.capacity_bytes if self.capacity_bytes \
            else 0.0


@dataclass(slots=True, eq=False)
class _Lease:
    """One engine's slabs in the pools of its GPUs (the same count on every rank)."""

    eng: EngineSim
    gpus: tuple[int, ...]
    bytes_per_token: int
    slab_bytes: int
    tokens_per_slab: int
    floor: int
    max_slabs: int
    held: int  # usable
    growing: int = 0  # taken from the pool, not yet usable
    draining: int = 0  # no longer usable, not yet back in the pool
    stats: DemandStats = field(default_factory=DemandStats)

    @property
    def reserved(self) -> int:
        return self.held + self.growing + self.draining

    def in_use_slabs(self) -> int:
        return math.ceil(self.eng.kv_used / self.tokens_per_slab - 1e-9)


def slab_geometry(eng: EngineSim) -> tuple[int, int, int]:
    """(bytes per token, slab bytes, tokens per slab) of an engine, per rank."""
    spec, tp = eng.shape.model, eng.shape.tp
    page = spec.page_size_bytes(tp)
    slab = slab_bytes_for(page, KV_PLANES, spec.arch.num_layers)
    per_token = spec.kv_bytes_per_token(tp)
    return per_token, slab, slab // per_token


Event = tuple[float, Callable[[float], None]]


class SlabPools:
    """Every GPU's pool; engines call ``grow_now`` on their slow path, the cluster ``tick``."""

    def __init__(self, pool_bytes: dict[int, int], params: PoolParams) -> None:
        self.params = params
        self.pool_bytes = pool_bytes
        self.leases: dict[str, _Lease] = {}
        self.on_gpu: dict[int, list[_Lease]] = {g: [] for g in pool_bytes}
        self.previous: dict[int, KvTargets | None] = dict.fromkeys(pool_bytes)
        self._inputs: dict[int, tuple] = {}  # policy inputs of the last tick, in slabs
        self.grows = self.shrinks = self.sync_grows = 0

    def attach(self, eng: EngineSim, gpus: tuple[int, ...], floor_bytes: int) -> None:
        per_token, slab, tps = slab_geometry(eng)
        most = min(self.pool_bytes[g] for g in gpus) // slab
        floor = min(floor_bytes // slab, most)
        lease = _Lease(eng, gpus, per_token, slab, tps, floor, most, held=0)
        self.leases[eng.name] = lease
        for g in gpus:
            self.on_gpu[g].append(lease)
        start = min(floor, min(self.free(g) for g in gpus) // slab)
        lease.held = start
        eng.kv_tokens = float(start * tps)
        eng.pool = self

    def free(self, g: int) -> int:
        return self.pool_bytes[g] - sum(x.reserved * x.slab_bytes for x in self.on_gpu[g])

    def room(self, lease: _Lease) -> int:
        """Slabs ``lease`` may add under the grant rule, on every one of its GPUs."""
        out = lease.max_slabs - lease.reserved
        for g in lease.gpus:
            prev = self.previous[g]
            claimed = sum(max(x.reserved, prev.slabs.get(x.eng.name, 0) if prev else 0)
                          * x.slab_bytes for x in self.on_gpu[g] if x is not lease)
            out = min(out, (self.pool_bytes[g] - claimed) // lease.slab_bytes - lease.reserved)
        return max(0, out)

    # -- engine slow path
    def ahead_tokens(self, eng: EngineSim) -> float:
        """Free tokens the runtime keeps mapped ahead of demand (0: eager model)."""
        g = self.params.grow_ahead_slabs
        return 0.0 if g is None else g * self.leases[eng.name].tokens_per_slab

    def grow_now(self, eng: EngineSim, short_tokens: float) -> float:
        """Map slabs for ``short_tokens`` more tokens (plus the grow-ahead margin) if every
        rank's pool has room (fewer if only some fit). Returns the latency added to the
        engine's step: none when the tokens fitted already (a background map ahead)."""
        lease = self.leases[eng.name]
        want = math.ceil((short_tokens + self.ahead_tokens(eng)) / lease.tokens_per_slab - 1e-9)
        n = min(want, self.room(lease))
        if n <= 0:
            return 0.0
        lease.held += n
        eng.kv_tokens += n * lease.tokens_per_slab
        if short_tokens <= 0:
            self.grows += 1
            return 0.0
        self.sync_grows += 1
        return self.params.sync_grow_latency_s

    # -- periodic policy
    def tick(self, now: float) -> list[Event]:
        """Run the policy on every pool; returns (time, action) events for grows and drains."""
        target: dict[str, int] = {}
        for g, leases in self.on_gpu.items():
            if not leases:
                continue
            demands = [self._demand(x, now) for x in leases]
            # Same inputs at slab resolution and every engine at its target: the policy would
            # answer the same, so skip it (it is most of a pooled simulation's cost).
            key = tuple((round(d.demand_tokens / d.tokens_per_slab),
                         round(d.demand_mean_tokens / d.tokens_per_slab),
                         round(d.demand_std_tokens / d.tokens_per_slab), d.held_slabs)
                        for d in demands)
            prev = self.previous[g]
            if prev is not None and key == self._inputs.get(g) and all(
                    prev.slabs[d.engine_id] == d.held_slabs for d in demands):
                got = prev
            else:
                got = compute_targets(self.pool_bytes[g], demands, prev, self.params.policy)
                self._inputs[g] = key
            self.previous[g] = got
            for name, n in got.slabs.items():
                target[name] = min(target.get(name, n), n)
        events: list[Event] = []
        lazy = self.params.grow_ahead_slabs is not None
        for name, n in target.items():
            lease = self.leases[name]
            if n > lease.held + lease.growing and not lazy:
                events += self._grow(lease, n - lease.held - lease.growing, now)
            elif n < lease.held:
                events += self._shrink(lease, lease.held - n, now)
        return events

    def _demand(self, x: _Lease, now: float) -> EngineKvDemand:
        eng = x.eng
        want = int(eng.kv_used + eng.waiting_tokens())
        x.stats.update(now, want)
        return EngineKvDemand(
            engine_id=eng.name, bytes_per_token=x.bytes_per_token, slab_bytes=x.slab_bytes,
            floor_slabs=x.floor, max_slabs=x.max_slabs, held_slabs=x.held + x.growing,
            used_tokens=int(eng.kv_used), demand_tokens=want,
            demand_mean_tokens=x.stats.mean, demand_std_tokens=x.stats.std)

    def _grow(self, lease: _Lease, n: int, now: float) -> list[Event]:
        n = min(n, self.room(lease))
        if n <= 0:
            return []
        lease.growing += n
        self.grows += 1

        def ready(_: float) -> None:
            lease.growing -= n
            lease.held += n
            lease.eng.kv_tokens += n * lease.tokens_per_slab

        return [(now + self.params.grow_latency_s, ready)]

    def _shrink(self, lease: _Lease, n: int, now: float) -> list[Event]:
        keep = math.ceil(self.ahead_tokens(lease.eng) / lease.tokens_per_slab - 1e-9)
        n = min(n, lease.held - lease.in_use_slabs() - keep, lease.held - lease.floor)
        if n <= 0:
            return []
        lease.held -= n
        lease.draining += n
        lease.eng.kv_tokens -= n * lease.tokens_per_slab
        self.shrinks += 1

        def released(_: float) -> None:
            lease.draining -= n

        return [(now + self.params.shrink_latency_s, released)]

    # -- observation
    def sample(self, now: float) -> list[KvSample]:
        out = []
        for g, leases in self.on_gpu.items():
            if not leases:
                continue
            held = sum(x.reserved * x.slab_bytes for x in leases)
            used = sum(int(x.eng.kv_used) * x.bytes_per_token for x in leases)
            rounding = sum(
                (x.in_use_slabs() * x.tokens_per_slab - int(x.eng.kv_used)) * x.bytes_per_token
                for x in leases if x.eng.kv_used > 0)
            out.append(KvSample(now, g, self.pool_bytes[g], held, used, max(0, rounding)))
        return out

    def check_integrity(self) -> None:
        """Raise AssertionError if the pools' accounting drifted."""
        for g, leases in self.on_gpu.items():
            assert self.free(g) >= 0, (g, self.free(g))
            for x in leases:
                assert x.held >= 0 and x.growing >= 0 and x.draining >= 0, x.eng.name
                assert x.reserved <= x.max_slabs, (x.eng.name, x.reserved, x.max_slabs)
                assert abs(x.eng.kv_tokens - x.held * x.tokens_per_slab) < 1e-6, x.eng.name


class StaticKv:
    """Static partitions: only observation (each engine keeps its reservation)."""

    def __init__(self, engines: list[tuple[EngineSim, tuple[int, ...]]]) -> None:
        self.on_gpu: dict[int, list[tuple[EngineSim, int]]] = {}  # (engine, KV bytes/token)
        for eng, gpus in engines:
            per_token = eng.shape.model.kv_bytes_per_token(eng.shape.tp)
            for g in gpus:
                self.on_gpu.setdefault(g, []).append((eng, per_token))

    def tick(self, now: float) -> list[Event]:
        return []

    def sample(self, now: float) -> list[KvSample]:
        out = []
        for g, engs in self.on_gpu.items():
            cap = sum(int(e.kv_tokens) * b for e, b in engs)
            used = sum(int(min(e.kv_used, e.kv_tokens)) * b for e, b in engs)
            out.append(KvSample(now, g, cap, cap, used, 0))
        return out

    def check_integrity(self) -> None:
        return None
