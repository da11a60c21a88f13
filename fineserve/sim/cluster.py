"""Run a plan against a trace: route requests to engines, step engines, collect records.

The loop is Vidur-style but flat for speed: one heap of events, the trace read in order.
Heap entries are ``(time, kind, seq, payload)``; kinds: 0 a step ends, 1 an idle engine wakes,
2 the periodic tick (KV policy, local-scheduler state and expiry, KV samples), 3 a delayed
action (a KV grow becoming usable, a drained slab returning). At equal times: step ends, then
arrivals, then the rest - requests arriving together are batched together.

Routing follows the plan's traffic split with smooth weighted round robin (deterministic).
Memory, interference and admission are what ``SimOptions`` selects (``docs/simulator.md``):
KV static per engine or a KV Slab pool per GPU (``kvpool.py``), HBM interference between
co-located engines (``interference.py``) or time slicing without MPS (``timeslice.py``), and
the runtime's local scheduler
(``fineserve.scheduler``) in front of each engine; rejected requests are recorded as 429s.
With ``request_timeout_s`` each client gives up that long after sending, as the replay client
does: the request leaves the local scheduler's queue or is aborted in its engine (freeing its
slot and KV, ``EngineSim.cancel``) and is recorded as a timeout error.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from fineserve.metrics.summary import RequestRecord
from fineserve.planner.options import usable_bytes
from fineserve.planner.schema import KVMode, Plan
from fineserve.profiles.latency import EngineShape, LatencyModel
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.admission import Admission
from fineserve.sim.chrome_trace import ChromeTrace
from fineserve.sim.colocation import Neighbours
from fineserve.sim.engine import EngineSim, SimRequest
from fineserve.sim.interference import HbmShare, InterferenceParams
from fineserve.sim.kvpool import KvSample, PoolParams, SlabPools, StaticKv
from fineserve.sim.smshare import SmShare, needed
from fineserve.sim.stepscale import profiled, without_colocation
from fineserve.sim.timeslice import TimeSliceShare
from fineserve.workload.trace import Trace

KV_MODES = ("plan", "static", "pooled")
SHARING = ("mps", "time-sliced")


@dataclass(frozen=True, slots=True)
class SimOptions:
    token_budget: int = 2048  # vLLM max_num_batched_tokens
    kv: str = "plan"  # "plan" (the plan's kv_mode) | "static" | "pooled"
    pool: PoolParams = field(default_factory=PoolParams)
    interference: InterferenceParams | None = None  # None: co-located engines do not interact
    # HBM demand over the profiled step (the fit's definition) rather than the calibrated one
    demand_from_profile: bool = False
    # under MPS, the calibrated step's common co-location factor (decode_scale, over the
    # model's step and the per-sequence term) applies only in proportion to how busy the
    # engine's neighbours are at that step: the SM-share-weighted fraction of the other
    # engines on its GPU with work (colocation.py); no effect on time slicing or an
    # uncalibrated latency model
    colocation_when_busy: bool = False
    sharing: str = "mps"  # "mps" (SM shares) | "time-sliced" (--no-mps: engines take turns)
    scheduler: SchedulerConfig | None = None  # None: every request goes straight to its engine
    tick_s: float = 0.5  # local-scheduler state and expiry; KV policy uses pool.interval_s
    # each engine's in-flight limit capped at its batch cap, as the gateway does
    # (SchedulerConfig.for_engine); False replays gateways before it (only max_limit capped)
    limit_at_batch: bool = True
    max_samples: int = 1000  # KV samples per GPU over the run (spaced evenly)
    chrome_trace: bool = False
    # the client gives up on a request this long after sending it (None: it waits forever);
    # the gateway then cancels it and vLLM aborts it, so it stops holding a slot and KV
    request_timeout_s: float | None = None
    # under MPS, engines whose SM shares sum past 100% on a GPU share the SMs while they
    # compute at once (smshare.py); no effect on a plan within 100% per GPU
    sm_contention: bool = True

    def __post_init__(self) -> None:
        t = self.request_timeout_s
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"request_timeout_s must be a positive number, got {t}")


class _Router:
    """Smooth weighted round robin over a model's engines (nginx's algorithm)."""

    def __init__(self, engines: list[EngineSim], weights: list[float]):
        self.engines, self.weights = engines, weights
        self.current = [0.0] * len(engines)
        self.total = sum(weights)

    def pick(self) -> EngineSim:
        for k, w in enumerate(self.weights):
            self.current[k] += w
        best = max(range(len(self.engines)), key=self.current.__getitem__)
        self.current[best] -= self.total
        return self.engines[best]


@dataclass(frozen=True)
class SimResult:
    records: list[RequestRecord]
    duration_s: float
    preemptions: dict[str, int]
    steps: dict[str, int]
    kv_samples: tuple[KvSample, ...] = ()
    kv_mode: str = "static"
    trace: ChromeTrace | None = None


def _pooled(plan: Plan, opts: SimOptions) -> bool:
    return opts.kv == "pooled" or (opts.kv == "plan" and plan.kv_mode is KVMode.POOLED)


def _static_kv_tokens(plan: Plan, e, shape: EngineShape) -> float:
    """Static partition. A pooled plan's engines get their floor plus an equal share of the
    GPU's unreserved memory: the same bytes as the pool, split once. (A TP > 1 engine of a
    pooled plan simulated pooled keeps its floor: ``_World`` resets it, as deploy does.)"""
    per_token = shape.model.kv_bytes_per_token(e.tp)
    if plan.kv_mode is KVMode.STATIC:
        return e.kv_bytes / per_token
    gpu = plan.cluster.gpus[e.gpus[0]]
    on = plan.engines_on(gpu.gpu_id)
    spare = usable_bytes(gpu.spec, plan.instance.settings.memory_utilization) - sum(
        x.memory_bytes for x in on)
    return (e.kv_bytes + max(0, spare) / len(on)) / per_token


class _World:
    """Engines, routers and the optional memory / interference / admission models."""

    def __init__(self, plan: Plan, latency: LatencyModel, opts: SimOptions) -> None:
        if opts.kv not in KV_MODES:
            raise ValueError(f"kv mode must be one of {KV_MODES}, got {opts.kv!r}")
        specs = {m.name: m.spec for m in plan.models}
        self.routers: dict[str, _Router] = {}
        self.engines: list[EngineSim] = []
        placements = {}
        for m in plan.models:
            engines, weights = [], []
            for e in plan.engines_of(m.name):
                shape = EngineShape(plan.cluster.gpus[e.gpus[0]].spec, specs[m.name], e.tp)
                eng = EngineSim(e.engine_id, shape, e.sm_pct, e.max_batch,
                                _static_kv_tokens(plan, e, shape), latency, opts.token_budget)
                eng.gpus = e.gpus
                eng.weight_bytes = float(e.weight_bytes)
                eng.kv_token_bytes = float(shape.model.kv_bytes_per_token(e.tp))
                engines.append(eng)
                weights.append(max(e.rate_rps, 1e-9))
                placements[e.engine_id] = e
            if engines:
                self.routers[m.name] = _Router(engines, weights)
                self.engines += engines
        self.by_name = {e.name: e for e in self.engines}
        self.pooled = _pooled(plan, opts)
        self.kv: SlabPools | StaticKv | _PoolsAndStatic
        if self.pooled:
            # deploy keeps TP > 1 engines off the pool (the slab map is per process): their
            # plan KV is a static cache, and the pool of each of their GPUs is that much less
            fixed = [e for e in self.engines if placements[e.name].tp > 1]
            for e in fixed:
                e.kv_tokens = placements[e.name].kv_bytes / e.kv_token_bytes
            pools = _make_pools(plan, [e for e in self.engines if e not in fixed],
                                placements, opts.pool)
            self.kv = (_PoolsAndStatic(pools, StaticKv([(e, e.gpus) for e in fixed]))
                       if fixed else pools)
        else:
            self.kv = StaticKv([(e, e.gpus) for e in self.engines])
        if opts.sharing not in SHARING:
            raise ValueError(f"sharing must be one of {SHARING}, got {opts.sharing!r}")
        self.hbm: HbmShare | TimeSliceShare | None = None
        if opts.sharing == "time-sliced":  # turns on the whole GPU replace MPS interference
            self.hbm = TimeSliceShare({g for e in self.engines for g in e.gpus})
            for e in self.engines:
                e.hbm = self.hbm
        elif opts.interference is not None:
            used = {g for e in self.engines for g in e.gpus}
            self.hbm = HbmShare({g: plan.cluster.gpus[g].spec.hbm_bytes_per_s for g in used},
                                opts.interference)
            alone = profiled(latency) if opts.demand_from_profile else None
            for e in self.engines:
                e.hbm = self.hbm
                if alone is not None and alone is not latency:
                    e.demand_latency = alone
        solo = (without_colocation(latency)
                if opts.colocation_when_busy and opts.sharing == "mps" else None)
        if solo is not None:
            neighbours = Neighbours(self.engines)
            for e in self.engines:
                e.solo_latency, e.neighbours = solo, neighbours
        self.sms: SmShare | None = None
        shares: dict[int, list[float]] = {}
        for e in self.engines:
            for g in e.gpus:
                shares.setdefault(g, []).append(e.sm_pct)
        if opts.sharing == "mps" and opts.sm_contention and needed(shares):
            self.sms = SmShare(shares.keys())
            for e in self.engines:
                e.sms = self.sms
        self.tracer = ChromeTrace() if opts.chrome_trace else None
        for e in self.engines:
            e.tracer = self.tracer
        self.admission = None
        if opts.scheduler is not None:
            slos = {m.name: m.slo for m in plan.models}
            self.admission = Admission(self.engines, placements, slos, opts.scheduler,
                                       opts.limit_at_batch)

    def engine(self, name: str) -> EngineSim:
        return self.by_name[name]

    def check_integrity(self) -> None:
        for e in self.engines:
            e.check_integrity()
        self.kv.check_integrity()
        if self.hbm is not None:
            self.hbm.check_integrity()
        if self.sms is not None:
            self.sms.check_integrity()
        if self.admission is not None:
            self.admission.check_integrity()


class _PoolsAndStatic:
    """A pooled plan with TP > 1 engines: the pools of the TP = 1 engines, the static caches
    of the others; samples per GPU add both."""

    def __init__(self, pools: SlabPools, static: StaticKv) -> None:
        self.pools, self.static = pools, static

    def tick(self, now: float) -> list:
        return self.pools.tick(now)

    def sample(self, now: float) -> list[KvSample]:
        by_gpu: dict[int, KvSample] = {}
        for s in self.pools.sample(now) + self.static.sample(now):
            o = by_gpu.get(s.gpu)
            by_gpu[s.gpu] = s if o is None else KvSample(
                now, s.gpu, o.capacity_bytes + s.capacity_bytes, o.held_bytes + s.held_bytes,
                o.used_bytes + s.used_bytes, o.rounding_bytes + s.rounding_bytes)
        return [by_gpu[g] for g in sorted(by_gpu)]

    def check_integrity(self) -> None:
        self.pools.check_integrity()
        self.static.check_integrity()


def _make_pools(plan: Plan, engines: list[EngineSim], placements: dict, params: PoolParams
                ) -> SlabPools:
    """One pool per GPU of ``engines``: usable memory less every engine's weights and
    overhead, and less the whole memory of engines not in ``engines`` (static KV)."""
    util = plan.instance.settings.memory_utilization
    used = sorted({g for e in engines for g in e.gpus})
    pooled = {e.name for e in engines}
    pool_bytes = {}
    for g in used:
        non_kv = sum(x.weight_bytes + x.overhead_bytes if x.engine_id in pooled
                     else x.memory_bytes for x in plan.engines_on(g))
        pool_bytes[g] = max(0, usable_bytes(plan.cluster.gpus[g].spec, util) - non_kv)
    pools = SlabPools(pool_bytes, params)
    floor_of_plan = plan.kv_mode is KVMode.POOLED  # a static plan's reservations are no floors
    for e in engines:
        pools.attach(e, e.gpus, placements[e.name].kv_bytes if floor_of_plan else 0)
    return pools


def simulate(plan: Plan, trace: Trace, latency: LatencyModel, *, token_budget: int = 2048,
             options: SimOptions | None = None) -> SimResult:
    """Simulate ``plan`` serving ``trace``; ``options`` default to static-free defaults with
    ``token_budget`` (KV as the plan says, no interference, no local scheduler)."""
    opts = options if options is not None else SimOptions(token_budget=token_budget)
    w = _World(plan, latency, opts)
    arrivals = trace.arrival_s.tolist()
    models = trace.model.tolist()
    prompts = trace.prompt_tokens.tolist()
    outputs = trace.output_tokens.tolist()
    records: list[RequestRecord | None] = [None] * len(arrivals)
    adm = w.admission
    heap: list[tuple[float, int, int, object]] = []
    seq, i, n, now = 0, 0, len(arrivals), 0.0
    sample_every = max(opts.tick_s, trace.duration_s / max(1, opts.max_samples))
    periodic = adm is not None or w.pooled or opts.max_samples > 0
    next_policy = next_sample = 0.0
    samples: list[KvSample] = []
    if periodic and n:
        heapq.heappush(heap, (arrivals[0], 2, 0, None))

    def wake(eng: EngineSim) -> None:
        nonlocal seq
        if eng.idle and not eng.busy:
            eng.busy = True  # a wake is pending
            seq += 1
            heapq.heappush(heap, (now, 1, seq, eng))

    timeout = opts.request_timeout_s
    # (deadline, request) in arrival order: one timeout for all, so deadlines come sorted and
    # the loop only looks at the earliest one still live (no heap event per request)
    deadlines: deque[tuple[float, SimRequest]] = deque()

    def give_up(req: SimRequest) -> None:
        """The client's timeout: drop ``req`` where it is, unless it already ended."""
        if records[req.index] is not None:
            return
        if adm is None or not adm.cancel(req, now):  # not (any more) in the local queue
            w.engine(req.engine).cancel(req)
            if adm is not None:
                _drain(adm.on_cancel(req, now), records, dispatch)
        records[req.index] = _record(req, error=TIMEOUT_ERROR)

    def dispatch(req: SimRequest) -> None:
        eng = adm.engine_of(req) if adm is not None else None
        assert eng is not None
        wake(eng)
        eng.arrive(req)

    while i < n or heap:
        if deadlines:  # clients that give up before the next event (after one at that time)
            while deadlines and records[deadlines[0][1].index] is not None:
                deadlines.popleft()  # ended in time
            nxt = min(heap[0][0] if heap else math.inf, arrivals[i] if i < n else math.inf)
            if deadlines and deadlines[0][0] < nxt:
                now = deadlines[0][0]
                while deadlines and deadlines[0][0] <= now:
                    give_up(deadlines.popleft()[1])
                continue
        if heap and (i >= n or heap[0][0] < arrivals[i]
                     or (heap[0][0] == arrivals[i] and heap[0][1] == 0)):
            now, kind, _, obj = heapq.heappop(heap)
            if kind <= 1:
                eng = obj
                if kind == 0:
                    done = eng.finish_step(now)  # type: ignore[union-attr]
                    for req in done:  # (a cancelled request is never in ``done``)
                        records[req.index] = _record(req)
                    if adm is not None:
                        _drain(adm.after_step(eng, done, now), records, dispatch)
                if not eng.idle:  # type: ignore[union-attr]
                    seq += 1
                    heapq.heappush(heap, (eng.start_step(now), 0, seq, eng))  # type: ignore
            elif kind == 2:
                if adm is not None:
                    _drain(adm.tick(now), records, dispatch)
                if w.pooled and now >= next_policy:
                    next_policy = now + opts.pool.interval_s
                    for at, action in w.kv.tick(now):
                        seq += 1
                        heapq.heappush(heap, (at, 3, seq, action))
                if opts.max_samples > 0 and now >= next_sample:
                    next_sample = now + sample_every
                    samples += w.kv.sample(now)
                if i < n or heap:
                    heapq.heappush(heap, (now + opts.tick_s, 2, 0, None))
            else:
                obj(now)  # type: ignore[operator]
            continue
        now = arrivals[i]
        router = w.routers.get(models[i])
        if router is None:  # model unplaced in this plan: counts as an error
            records[i] = RequestRecord(i, models[i], now, now, prompts[i], outputs[i],
                                       status=503, error="no engine for model")
        else:
            eng = router.pick()
            req = SimRequest(i, models[i], now, prompts[i], outputs[i])
            if timeout is not None:
                deadlines.append((now + timeout, req))
            if adm is None:
                wake(eng)
                eng.arrive(req)
            else:
                _drain(adm.submit(eng, req, now), records, dispatch)
        i += 1
    w.check_integrity()
    done = [r for r in records if r is not None]
    if w.tracer is not None:
        w.tracer.requests(done)
    return SimResult(done, now, {e.name: e.preemptions for e in w.engines},
                     {e.name: e.step_no for e in w.engines}, tuple(samples),
                     "pooled" if w.pooled else "static", w.tracer)


def _drain(out: tuple[list[SimRequest], list[tuple[SimRequest, str]]],
           records: list[RequestRecord | None], dispatch) -> None:
    go, rejected = out
    for req in go:
        dispatch(req)
    for req, why in rejected:
        records[req.index] = RequestRecord(req.index, req.model, req.arrival_s, req.arrival_s,
                                           req.prompt_tokens, req.output_tokens, status=429,
                                           error=why)


TIMEOUT_ERROR = "TimeoutError (client)"


def _record(req: SimRequest, error: str = "") -> RequestRecord:
    """A finished request, or (``error``) one its client gave up on: no tokens count."""
    queued = req.admitted_s - req.arrival_s if not math.isnan(req.admitted_s) else math.nan
    return RequestRecord(req.index, req.model, req.arrival_s, req.arrival_s, req.prompt_tokens,
                         req.output_tokens, status=200, first_token_s=req.first_token_s,
                         finished_s=math.nan if error else req.finished_s,
                         tokens_received=0 if error else req.output_tokens, error=error,
                         queued_s=queued)


__all__ = ["KV_MODES", "SimOptions", "SimResult", "simulate"]
