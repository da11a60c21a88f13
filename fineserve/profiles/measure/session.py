"""How a profiling session spends its time: engines started in waves, measured one at a time.

Engine starts dominated the 2026-11-26 H100 session (6 starts, ~340 of 472 s; docs/profiler.md).
Under MPS an idle engine holds memory but no SMs, so every engine of a wave starts at once and
they are then measured one after another while the others idle; nothing is measured while any
engine starts (a start runs GPU work: dummy weights, profiling run, CUDA graph capture).

- **Waves** (``plan_waves``): consecutive engines, in measuring order, while their device
  memory (weights + KV + overhead) fits ``capacity``; a big model gets a wave of its own.
  An engine already started once is sized by what it held then (``measured_memory``), never
  below the plan: the catalog's int4 weight bytes were 3x under what the unquantized dummy
  GPTQ engines held on 2026-11-26, and a wave of six went out of memory.
- **Compile groups**: engines differing only in SM share compile the same graph, so the first
  start of a group in a session (the leader) pays torch.compile and fills the cache; the rest
  of the group start after the leaders are up and load it (starting them together would
  compile the same graph in parallel and race on the cache).
- **Estimates** (``point_seconds``, ``estimate_session``): point costs from a latency model
  (the measured or shipped profile, else the roofline) and the measuring method's run counts;
  start costs from the session logs. Pure code: the runner executes the waves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fineserve.profiles.catalog import ModelSpec
from fineserve.profiles.latency import EngineShape, LatencyModel
from fineserve.profiles.measure.records import PREFILL, EngineRecord, PointSpec
from fineserve.profiles.measure.timing import (
    MIN_DECODE_TOKENS,
    decode_prompt_tokens,
    window_tokens,
)

GIB = 1 << 30
OVERHEAD_BYTES = 2 * GIB  # CUDA context, graphs, workspaces (<= 1.3 GiB seen on the H100)
CONTEXT_BYTES = GIB  # outside torch's allocator: CUDA context, NCCL, cuBLAS workspaces
CAPACITY_SHARE = 0.9  # of device memory that a wave's engines may hold together
# From the 2026-11-26 logs (Llama-3.1-8B, vLLM 0.26, H100): process start + vLLM import
# ~10 s outside start_s; start_s 22-36 s with a warm compile cache, 60-79 s cold; shutdown
# ~4 s. Compile and graph capture grow with the number of layers (32 for the 8B).
PROCESS_S, WARM_START_S, COLD_EXTRA_S, SHUTDOWN_S = 10.0, 30.0, 45.0, 4.0
RUN_OVERHEAD_S = 0.03  # one generate call outside its engine steps (submit, IPC, outputs)
WARMUP_S = 3.0  # warm-up shapes and the fixed-cost probe of each engine


@dataclass(frozen=True, slots=True)
class EngineCost:
    """One engine of a session: what it holds and what it costs."""

    key: str  # EngineLabel.key
    model: str
    compile_group: str  # engines whose compiled graph is the same (all but the SM share)
    memory_bytes: int
    start_s: float  # process start + engine start with a warm compile cache + shutdown
    compile_s: float  # extra for the first start of its compile group in a session
    measure_s: float
    # warm-up and its first point: what a start must leave time for to be of any use
    first_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Wave:
    """Engines started together, then measured in order."""

    engines: tuple[EngineCost, ...]
    leaders: tuple[str, ...]  # keys started first: cold compile groups' first engines
    start_s: float  # leaders up, then the rest up

    @property
    def measure_s(self) -> float:
        return sum(e.measure_s for e in self.engines)

    @property
    def total_s(self) -> float:
        return self.start_s + self.measure_s


@dataclass(frozen=True, slots=True)
class SessionEstimate:
    waves: tuple[Wave, ...]
    sequential_s: float  # the same engines started one by one (the runner before waves)

    @property
    def total_s(self) -> float:
        return sum(w.total_s for w in self.waves)

    def by_model(self) -> tuple[tuple[str, float], ...]:
        """(model, seconds) in measuring order; a shared wave's start is split by engines."""
        out: dict[str, float] = {}
        for wave in self.waves:
            share = wave.start_s / len(wave.engines)
            for e in wave.engines:
                out[e.model] = out.get(e.model, 0.0) + share + e.measure_s
        return tuple(out.items())


def plan_waves(
    engines: Sequence[EngineCost], capacity_bytes: float, *, parallel: bool = True,
    warm: frozenset[str] = frozenset(),
) -> tuple[Wave, ...]:  # fmt: skip
    """Split ``engines`` (in measuring order) into waves; ``warm``: compile groups whose cache
    is already filled. Without ``parallel`` every engine is a wave of its own.

    An engine larger than ``capacity_bytes`` alone still gets its own wave (whether it fits
    the GPU at all is vLLM's to say, as before).
    """
    groups: list[list[EngineCost]] = []
    for e in engines:
        last = groups[-1] if groups else None
        fits = last is not None and sum(x.memory_bytes for x in last) + e.memory_bytes \
            <= capacity_bytes
        if parallel and fits and last is not None:
            last.append(e)
        else:
            groups.append([e])
    waves, seen = [], set(warm)
    for group in groups:
        leaders: dict[str, EngineCost] = {}
        for e in group:
            if e.compile_group not in seen and e.compile_group not in leaders:
                leaders[e.compile_group] = e
        rest = [e for e in group if e.key not in {x.key for x in leaders.values()}]
        first = max((e.start_s + e.compile_s for e in leaders.values()), default=0.0)
        second = max((e.start_s for e in rest), default=0.0)
        seen |= set(leaders)
        waves.append(Wave(tuple(group), tuple(e.key for e in leaders.values()), first + second))
    return tuple(waves)


def estimate_session(
    engines: Sequence[EngineCost], capacity_bytes: float, *, parallel: bool = True,
    warm: frozenset[str] = frozenset(),
) -> SessionEstimate:  # fmt: skip
    waves = plan_waves(engines, capacity_bytes, parallel=parallel, warm=warm)
    one_by_one = plan_waves(engines, capacity_bytes, parallel=False, warm=warm)
    return SessionEstimate(waves, sum(w.total_s for w in one_by_one))


def measured_memory(records: Sequence[EngineRecord], tp: int) -> int | None:
    """Device memory an engine of these records (one precision) held at ``tp``: the largest
    of NVML's footprint, torch's reserved memory + ``CONTEXT_BYTES``, and weights + KV +
    ``OVERHEAD_BYTES``, over its started, non-stale engines. None: never started."""
    sizes = []
    for r in records:
        if r.error is not None or r.stale or r.label.tp != tp:
            continue
        parts = [r.footprint_bytes or 0,
                 (r.torch_reserved_bytes + CONTEXT_BYTES) if r.torch_reserved_bytes else 0,
                 (r.weight_bytes + r.kv_cache_bytes + OVERHEAD_BYTES)
                 if r.weight_bytes and r.kv_cache_bytes else 0]
        if max(parts):
            sizes.append(max(parts))
    return max(sizes, default=None)


def measured_starts(records: Sequence[EngineRecord], tp: int) -> tuple[float, float] | None:
    """(warm start incl. process start and shutdown, cold compile extra) from the engines of
    these records (one precision) started at ``tp``: the shortest start is taken as warm, the
    longest as cold. None: never started. The layer-scaled guess (``start_seconds``) put the
    70B at 89 s warm and 202 s cold; session 6 recorded 33 s and 73-75 s."""
    starts = [r.start_s for r in records
              if r.error is None and not r.stale and r.label.tp == tp and r.start_s > 0]
    if not starts:
        return None
    return PROCESS_S + min(starts) + SHUTDOWN_S, max(starts) - min(starts)


def start_seconds(num_layers: int) -> tuple[float, float]:
    """(warm start incl. process start and shutdown, cold compile extra) for a model."""
    scale = max(1.0, num_layers / 32)
    return PROCESS_S + WARM_START_S * scale + SHUTDOWN_S, COLD_EXTRA_S * scale


SETTLE_RUNS_EXPECTED = 2  # worker._settle stops after two runs that agree (6 at most)


def point_seconds(
    point: PointSpec, latency: LatencyModel, shape: EngineShape, sm_pct: float, *,
    blocker_tokens: int, decode_tokens: int, decode_window_s: float = 0.0,
) -> float:  # fmt: skip
    """Wall time of one grid point as the worker measures it: one untimed run (prefill: at
    least two settling runs before it, ``worker._settle``), then ``repeats`` x ``samples``
    timed runs, and the batch-1 cross-check. With
    ``decode_window_s``, decode runs are sized as the worker sizes them from the untimed run
    (``timing.window_tokens``, the step budget taken as ``blocker_tokens``)."""
    runs = point.repeats * max(1, point.samples) + 1
    if point.phase == PREFILL:
        runs += SETTLE_RUNS_EXPECTED
        blocker = latency.prefill(shape, blocker_tokens, sm_pct).seconds
        batch = latency.prefill(shape, point.tokens, sm_pct, point.batch).seconds
        total = runs * (blocker + batch + RUN_OVERHEAD_S)
        if point.batch == 1:  # 3 lone prompts (engine.lone_ttft)
            total += 3 * (batch + RUN_OVERHEAD_S)
        return total
    step = latency.decode_step(shape, point.batch, point.tokens, sm_pct).seconds

    def run(n: int) -> float:
        prompt = decode_prompt_tokens(point.tokens, n)
        return latency.prefill(shape, prompt, sm_pct, point.batch).seconds + n * step \
            + RUN_OVERHEAD_S

    n = decode_tokens
    first = run(n)
    if decode_window_s > 0:
        first = run(min(MIN_DECODE_TOKENS, decode_tokens))
        n = window_tokens(step, decode_window_s, point.batch, point.tokens, blocker_tokens,
                          decode_tokens)
    total = first + (runs - 1) * run(n)
    if point.batch == 1:  # engine.lone_decode: n tokens, then 1
        total += run(n) + run(1)
    return total


def engine_measure_seconds(
    points: Sequence[PointSpec], latency: LatencyModel, shape: EngineShape, sm_pct: float, *,
    blocker_tokens: int, decode_tokens: int, decode_window_s: float = 0.0,
) -> float:  # fmt: skip
    return WARMUP_S + sum(
        point_seconds(p, latency, shape, sm_pct, blocker_tokens=blocker_tokens,
                      decode_tokens=decode_tokens, decode_window_s=decode_window_s)
        for p in points)  # fmt: skip


def engine_cost(
    spec: ModelSpec, tp: int, sm_pct: float, key: str, points: Sequence[PointSpec],
    latency: LatencyModel, shape: EngineShape, *, kv_cache_bytes: int, blocker_tokens: int,
    decode_tokens: int, decode_window_s: float = 0.0,
) -> EngineCost:  # fmt: skip
    """The cost of one planned engine (``runner.plan_engines`` gives its sizes)."""
    warm, cold = start_seconds(spec.arch.num_layers)
    group = f"{spec.arch.name}@{spec.precision.name}/tp{tp}"
    timing = dict(blocker_tokens=blocker_tokens, decode_tokens=decode_tokens,
                  decode_window_s=decode_window_s)
    return EngineCost(
        key, spec.arch.name, group, spec.weight_bytes(tp) + kv_cache_bytes + OVERHEAD_BYTES,
        warm, cold, engine_measure_seconds(points, latency, shape, sm_pct, **timing),
        engine_measure_seconds(points[:1], latency, shape, sm_pct, **timing),
    )  # fmt: skip


def shard(items: Sequence[tuple[str, float]], n: int) -> tuple[tuple[str, ...], ...]:
    """Split named jobs of estimated seconds over ``n`` GPUs, longest first onto the least
    loaded (LPT: within 4/3 of the best makespan). Each GPU keeps the input order.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"shard over {n} GPUs")
    loads = [0.0] * n
    owner: dict[str, int] = {}
    for name, seconds in sorted(items, key=lambda kv: -kv[1]):
        i = min(range(n), key=lambda k: (loads[k], k))
        owner[name] = i
        loads[i] += seconds
    return tuple(tuple(name for name, _ in items if owner[name] == i) for i in range(n))
