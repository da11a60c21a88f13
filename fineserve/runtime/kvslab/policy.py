"""Where the pool's memory goes: per-engine slab targets, pure (no I/O, no clock).

The unit of value is an SLO-meeting token: a slab of engine i holds
``t_i = slab_bytes_i / bytes_per_token_i`` tokens, so engines of different KV precision are
compared in tokens per byte (an fp8 KV engine gets twice the tokens from the same bytes).
The k-th slab of an engine covers its tokens ``[(k-1) t, k t)``; its value is the expected
number of those tokens that are needed,

    value_i(k) = slo_weight_i * integral_{(k-1)t}^{kt} P(D_i > x) dx,

where D_i is the engine's KV demand in tokens: tokens wanted now (running and waiting
contexts) are needed for certain, and beyond that demand follows a normal tail around its
recent mean (``stats.py``). value_i(k) never increases with k, so filling the pool greedily by
value per byte is optimal for equal slab sizes and within one slab per engine otherwise (a
knapsack rounding; tests compare with exhaustive search).

Tiers (the H100 acceptance run, docs/kv-slab.md): memory goes first to the tokens held by
engines without a queue (taking them back needs their requests to finish, a drain makes vLLM
preempt them), then to tokens wanted now (running + waiting), and only then to the forecast
tail, each tier by value per byte. A forecast (a 30 s EWMA) never outranks another engine's
present demand: without the tiers an idle fp8 engine's stale mean, worth 2 tokens per bf16
byte, kept slabs a hot bf16 engine needed, and a backlogged fp8 engine pushed running bf16
engines below the blocks they held.

Fair share: within an equal share of the pool (pool / engines, in bytes), demand now is
served before anyone's demand beyond it, whatever its value per byte: an engine asking no
more than the static equal split would give it is never starved by another's backlog (the
acceptance run's fp8 backlog, worth 2 tokens per bf16 byte, kept the bf16 engines' new
requests waiting 12 s). Above the shares, value per byte decides (``fair_share=False``: from
the floors).

Stability: slabs an engine already holds are worth ``1 + hysteresis`` times more, so a
challenger needs a clear advantage before memory moves, and an engine losing memory gives it
back gradually (a fraction of the gap per tick), so an idle engine is drained over a few ticks,
not at once. Floors are always honoured and ``sum(target * slab_bytes) <= pool_bytes``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fineserve.runtime.kvslab.errors import FloorsExceedPool, KvSlabError


@dataclass(frozen=True, slots=True)
class EngineKvDemand:
    """What the policy knows about one engine on the GPU.

    ``slab_bytes`` is one slab: whole 2 MiB granules in every layer's K and V tensors.
    ``demand_mean_tokens`` / ``demand_std_tokens`` are recent demand statistics (EWMA); with
    the defaults only the tokens wanted now count.
    """

    engine_id: str
    bytes_per_token: int
    slab_bytes: int
    floor_slabs: int
    max_slabs: int
    held_slabs: int
    used_tokens: int
    demand_tokens: int  # tokens wanted now: running + waiting contexts
    slo_weight: float = 1.0
    demand_mean_tokens: float = 0.0
    demand_std_tokens: float = 0.0

    @property
    def tokens_per_slab(self) -> float:
        return self.slab_bytes / self.bytes_per_token


@dataclass(frozen=True, slots=True)
class KvTargets:
    """Slabs each engine should hold, and a one-line reason per engine."""

    slabs: Mapping[str, int]
    reason: Mapping[str, str]

    def bytes(self, engines: Sequence[EngineKvDemand]) -> int:
        return sum(self.slabs[e.engine_id] * e.slab_bytes for e in engines)


@dataclass(frozen=True, slots=True)
class PolicyParams:
    hysteresis: float = 0.10  # held slabs count this much more than a challenger's
    reclaim_fraction: float = 0.5  # share of the gap to its ideal an engine gives back per tick
    min_reclaim_slabs: int = 1  # ... but at least this many slabs
    min_fill: float = 0.01  # a slab expected to be needed below this fraction is not targeted
    fair_share: bool = True  # demand now within pool / engines is served before any beyond it

    def __post_init__(self) -> None:
        if self.hysteresis < 0:
            raise KvSlabError(f"hysteresis must be >= 0, got {self.hysteresis}")
        if not 0 < self.reclaim_fraction <= 1:
            raise KvSlabError(f"reclaim_fraction must be in (0, 1], got {self.reclaim_fraction}")
        if self.min_reclaim_slabs < 1:
            raise KvSlabError(f"min_reclaim_slabs must be >= 1, got {self.min_reclaim_slabs}")
        if not 0 <= self.min_fill < 1:
            raise KvSlabError(f"min_fill must be in [0, 1), got {self.min_fill}")


def _tail_integral(a: float, b: float, center: float, std: float) -> float:
    """integral_a^b P(N(center, std) > x) dx (std 0: the length of [a, b) below center)."""
    if b <= a:
        return 0.0
    if std <= 0:
        return max(0.0, min(b, center) - a)

    def antiderivative(x: float) -> float:  # d/dz (z Q(z) - phi(z)) = Q(z)
        # far tails in closed form: a tiny std would overflow z and give inf * 0 = nan
        if x - center > 40 * std:
            return 0.0
        if center - x > 40 * std:
            return x - center
        z = (x - center) / std
        q = 0.5 * math.erfc(z / math.sqrt(2))
        phi = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return std * (z * q - phi)

    return max(0.0, antiderivative(b) - antiderivative(a))


def certain_tokens(e: EngineKvDemand, k: int) -> float:
    """Tokens wanted now (running + waiting) that fall in the engine's k-th slab (1-based)."""
    t = e.tokens_per_slab
    return max(0.0, min(k * t, float(max(e.demand_tokens, 0))) - (k - 1) * t)


def expected_needed_tokens(e: EngineKvDemand, k: int) -> float:
    """Expected needed tokens in the engine's k-th slab (1-based), before weighting: those
    wanted now and the forecast tail beyond them."""
    t = e.tokens_per_slab
    a, b = (k - 1) * t, k * t
    now = float(max(e.demand_tokens, 0))
    center = max(now, e.demand_mean_tokens)
    return certain_tokens(e, k) + _tail_integral(max(a, now), b, center, e.demand_std_tokens)


def slab_value(e: EngineKvDemand, k: int, params: PolicyParams) -> float:
    """Weighted value of the k-th slab in tokens; 0 below the ``min_fill`` cut."""
    need = expected_needed_tokens(e, k)
    if need < params.min_fill * e.tokens_per_slab:
        return 0.0
    return e.slo_weight * need


def certain_value(e: EngineKvDemand, k: int, params: PolicyParams) -> float:
    """Weighted tokens of the k-th slab wanted now (running + waiting), no forecast."""
    return e.slo_weight * certain_tokens(e, k)


def _held_value(e: EngineKvDemand, k: int, params: PolicyParams) -> float:
    return e.slo_weight * e.tokens_per_slab  # a full slab of held tokens


def protected_slabs(e: EngineKvDemand) -> int:
    """Slabs holding the tokens of an engine that runs all it wants (no queue): draining them
    cannot finish before its requests do and makes vLLM preempt them, so no other engine's
    demand takes them. An engine with a queue (demand beyond its tokens by more than a slab)
    competes with all it holds: as its requests end, draining slabs return to the pool
    instead of going to its queue."""
    used = max(e.used_tokens, 0)
    if e.demand_tokens > used + e.tokens_per_slab:
        return 0
    return min(e.max_slabs, math.ceil(used / e.tokens_per_slab - 1e-9))


def _tiered(
    pool_bytes: int,
    engines: Sequence[EngineKvDemand],
    lower: Sequence[int],
    upper: Sequence[int],
    incumbent: Sequence[int],
    params: PolicyParams,
) -> list[int]:
    """Within ``[lower, upper]``: the slabs holding tokens, demand now within an equal share,
    demand now beyond it, then the tail - each tier by value per byte."""
    held_now = [min(max(lo, protected_slabs(e)), up)
                for e, lo, up in zip(engines, lower, upper, strict=True)]
    alloc = _greedy(pool_bytes, engines, lower, held_now, incumbent, params, _held_value)
    if params.fair_share:
        fair = [min(up, max(a, pool_bytes // len(engines) // e.slab_bytes))
                for e, a, up in zip(engines, alloc, upper, strict=True)]
        alloc = _greedy(pool_bytes, engines, alloc, fair, incumbent, params, certain_value)
    alloc = _greedy(pool_bytes, engines, alloc, upper, incumbent, params, certain_value)
    return _greedy(pool_bytes, engines, alloc, upper, incumbent, params, slab_value)


def _greedy(
    pool_bytes: int,
    engines: Sequence[EngineKvDemand],
    lower: Sequence[int],
    upper: Sequence[int],
    incumbent: Sequence[int],
    params: PolicyParams,
    value: Callable[[EngineKvDemand, int, PolicyParams], float],
) -> list[int]:
    """Start every engine at ``lower``; add slabs by ``value`` per byte up to ``upper``."""
    alloc = list(lower)
    budget = pool_bytes - sum(n * e.slab_bytes for n, e in zip(alloc, engines, strict=True))
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        k = alloc[i] + 1
        if k > upper[i]:
            return
        e = engines[i]
        v = value(e, k, params)
        if v <= 0:
            return
        if k <= incumbent[i]:
            v *= 1 + params.hysteresis
        heapq.heappush(heap, (-v / e.slab_bytes, i))

    for i in range(len(engines)):
        push(i)
    while heap:
        _, i = heapq.heappop(heap)
        if engines[i].slab_bytes > budget:
            continue  # this engine's slabs no longer fit; smaller ones may
        alloc[i] += 1
        budget -= engines[i].slab_bytes
        push(i)
    return alloc


def _validate(pool_bytes: int, engines: Sequence[EngineKvDemand]) -> None:
    ids = [e.engine_id for e in engines]
    if len(set(ids)) != len(ids):
        raise KvSlabError(f"duplicate engine_id in {sorted(ids)}")
    if pool_bytes < 0:
        raise KvSlabError(f"pool_bytes must be >= 0, got {pool_bytes}")
    for e in engines:
        if e.bytes_per_token <= 0 or e.slab_bytes <= 0:
            raise KvSlabError(f"{e.engine_id}: bytes_per_token and slab_bytes must be > 0")
        if not 0 <= e.floor_slabs <= e.max_slabs:
            raise KvSlabError(
                f"{e.engine_id}: need 0 <= floor_slabs ({e.floor_slabs}) <= max_slabs "
                f"({e.max_slabs})")
        if e.slo_weight <= 0:
            raise KvSlabError(f"{e.engine_id}: slo_weight must be > 0, got {e.slo_weight}")
    floors = sum(e.floor_slabs * e.slab_bytes for e in engines)
    if floors > pool_bytes:
        raise FloorsExceedPool(
            f"KV floors need {floors} bytes but the pool has {pool_bytes}",
            hint="lower the engines' floors, move an engine, or enlarge the pool headroom")


def compute_targets(
    pool_bytes: int,
    engines: Sequence[EngineKvDemand],
    previous: KvTargets | None = None,
    params: PolicyParams = PolicyParams(),  # noqa: B008 - frozen, shared default is safe
) -> KvTargets:
    """Slab targets for every engine: floors, then value per byte, moved gradually.

    Args:
        pool_bytes: bytes of the pool (GPU memory minus non-KV footprints minus headroom).
        engines: one demand record per engine, unique ``engine_id``.
        previous: last tick's targets (default: what each engine holds now).
        params: hysteresis and reclaim speed.
    Returns:
        ``KvTargets`` with ``floor <= target <= max`` and total bytes <= ``pool_bytes``.
    Raises:
        FloorsExceedPool: the floors alone exceed the pool.
        KvSlabError: malformed input (the message names the engine and field).
    """
    _validate(pool_bytes, engines)
    engines = sorted(engines, key=lambda e: e.engine_id)
    floors = [e.floor_slabs for e in engines]
    caps = [e.max_slabs for e in engines]
    prev = [
        min(max(previous.slabs.get(e.engine_id, e.held_slabs) if previous else e.held_slabs,
                e.floor_slabs), e.max_slabs)
        for e in engines
    ]
    ideal = _tiered(pool_bytes, engines, floors, caps, prev, params)
    lower, upper, reclaiming = [], [], []
    for p, want in zip(prev, ideal, strict=True):
        if want < p:  # give back gradually: a share of the gap per tick
            step = max(params.min_reclaim_slabs, math.ceil(params.reclaim_fraction * (p - want)))
            keep = max(want, p - step)
            lower.append(keep)
            upper.append(keep)
            reclaiming.append(True)
        else:
            lower.append(p)
            upper.append(want)
            reclaiming.append(False)
    if sum(n * e.slab_bytes for n, e in zip(lower, engines, strict=True)) > pool_bytes:
        final = ideal  # the pool shrank or engines joined: no room to move gradually
        reclaiming = [w < p for p, w in zip(prev, ideal, strict=True)]
    else:
        final = _tiered(pool_bytes, engines, lower, upper, prev, params)
    reasons = {
        e.engine_id: _reason(e, n, w, r)
        for e, n, w, r in zip(engines, final, ideal, reclaiming, strict=True)
    }
    return KvTargets({e.engine_id: n for e, n in zip(engines, final, strict=True)}, reasons)


def _reason(e: EngineKvDemand, target: int, ideal: int, reclaiming: bool) -> str:
    want = math.ceil(e.demand_tokens / e.tokens_per_slab)
    if reclaiming:
        return f"reclaiming: {target} slabs now, {ideal} when done"
    if target == e.max_slabs and want > target:
        return f"capped at max_slabs={e.max_slabs} (demand {e.demand_tokens} tokens)"
    if target == e.floor_slabs and want <= target:
        return f"floor ({e.floor_slabs} slabs covers demand)"
    if want > target:
        return f"pool short: demand {want} slabs, target {target}"
    return f"demand: {want} slabs now, {target - want} ahead for bursts"
