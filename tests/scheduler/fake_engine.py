"""A small deterministic engine model and event loop, only for the scheduler's unit tests.

Latency depends on the concurrency at dispatch (``n``, counting the new request):
``ttft = ttft_base + ttft_per_inflight * n + ttft_per_token * prompt`` and
``tpot = tpot_base + tpot_per_inflight * n``. Crude, but it has the one property the
scheduler must react to: more in flight means slower first tokens and slower decoding.
Optionally first tokens stop slowing down beyond ``ttft_knee`` in flight (a GPU's step time is
nearly flat in batch size once prefill dominates) and vary by +-``ttft_jitter`` (relative,
seeded): both break the estimator's linear model, as a real engine does.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from fineserve.scheduler import (
    EngineScheduler,
    EngineSnapshot,
    RequestInfo,
    SchedulerConfig,
    SloTargets,
    Verdict,
)


@dataclass(frozen=True)
class FakeEngine:
    ttft_base: float = 0.05
    ttft_per_inflight: float = 0.0
    ttft_per_token: float = 0.0
    tpot_base: float = 0.01
    tpot_per_inflight: float = 0.0
    kv_capacity: int = 10**9  # in-flight requests at which KV usage reads 1.0
    ttft_knee: int = 10**9  # in-flight count beyond which first tokens get no slower
    ttft_jitter: float = 0.0  # relative noise of each first token, uniform in +-jitter
    seed: int = 0


@dataclass
class Outcome:
    arrival: float
    out_tokens: int
    dispatched: float | None = None
    first: float | None = None
    finish: float | None = None
    rejected: bool = False  # at submit or expired from the queue


@dataclass
class RunResult:
    outcomes: dict[str, Outcome]
    limits: list[int]  # the scheduler's limit after every event

    def attainment(self, slo: SloTargets) -> float:
        """Share of dispatched-and-finished requests meeting both SLOs."""
        done = [o for o in self.outcomes.values() if o.finish is not None]
        ok = [o for o in done if meets(o, slo)]
        return len(ok) / len(done) if done else 0.0

    def goodput(self, slo: SloTargets) -> int:
        return sum(o.finish is not None and meets(o, slo) for o in self.outcomes.values())


def meets(o: Outcome, slo: SloTargets) -> bool:
    ttft = o.first - o.arrival
    tpot = (o.finish - o.first) / max(o.out_tokens - 1, 1)
    return ttft <= slo.ttft_s and tpot <= slo.tpot_s


def poisson_arrivals(
    rate: float, duration: float, prompt: int, out: int, seed: int = 0,
    varied_out: bool = False,
) -> list[tuple[RequestInfo, int]]:
    """Poisson arrivals; ``varied_out``: outputs exponential with mean ``out`` (at least 2)."""
    rng = random.Random(seed)
    t, reqs = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return reqs
        n = max(2, int(rng.expovariate(1 / out))) if varied_out else out
        reqs.append((RequestInfo(f"r{len(reqs)}", "m", prompt, n, t), n))


def run_policy(policy: str, slo: SloTargets, engine: FakeEngine,
               arrivals: list[tuple[RequestInfo, int]]) -> RunResult:
    """One engine scheduled by ``policy`` (16 slots to start, a deep queue) over ``arrivals``."""
    cfg = SchedulerConfig(policy=policy, initial_limit=16, max_queue=256)
    return run(EngineScheduler("e0", slo, cfg), engine, arrivals)


def run(
    sched: EngineScheduler,
    engine: FakeEngine,
    arrivals: list[tuple[RequestInfo, int]],
    tick: float = 0.05,
) -> RunResult:
    """Drive ``sched`` with ``arrivals`` against ``engine`` until every request has ended."""
    outcomes: dict[str, Outcome] = {}
    events: list[tuple[float, int, int, str]] = []  # (time, kind, seq, request id)
    seq = 0
    in_flight: set[str] = set()
    limits: list[int] = []
    rng = random.Random(engine.seed)

    def push(t: float, kind: int, rid: str) -> None:
        nonlocal seq
        heapq.heappush(events, (t, kind, seq, rid))
        seq += 1

    def dispatch(rid: str, now: float) -> None:
        in_flight.add(rid)
        o = outcomes[rid]
        o.dispatched = now
        n = len(in_flight)
        ttft = engine.ttft_base + engine.ttft_per_inflight * min(n, engine.ttft_knee)
        ttft += engine.ttft_per_token * prompts[rid]
        ttft *= 1.0 + engine.ttft_jitter * (2.0 * rng.random() - 1.0)
        tpot = engine.tpot_base + engine.tpot_per_inflight * n
        push(now + ttft, 0, rid)
        push(now + ttft + (o.out_tokens - 1) * tpot, 1, rid)

    def poll(now: float) -> None:
        ids, expired = sched.poll(now)
        for rid, _ in expired:
            outcomes[rid].rejected = True
        for rid in ids:
            dispatch(rid, now)

    prompts = {req.request_id: req.prompt_tokens for req, _ in arrivals}
    for req, out in arrivals:
        outcomes[req.request_id] = Outcome(req.arrival_s, out)
        push(req.arrival_s, 2, req.request_id)
    reqs = {req.request_id: req for req, _ in arrivals}
    end = arrivals[-1][0].arrival_s if arrivals else 0.0
    t = 0.0
    while t <= end:
        push(t, 3, "")
        t += tick
    while events:
        now, kind, _, rid = heapq.heappop(events)
        if kind == 0:
            outcomes[rid].first = now
            sched.on_first_token(rid, now)
        elif kind == 1:
            outcomes[rid].finish = now
            in_flight.discard(rid)
            sched.on_finish(rid, now, outcomes[rid].out_tokens, True)
            poll(now)
        elif kind == 2:
            d = sched.submit(reqs[rid], now)
            if d.verdict is Verdict.ADMIT:
                dispatch(rid, now)
            elif d.verdict is Verdict.REJECT:
                outcomes[rid].rejected = True
        else:
            kv = min(1.0, len(in_flight) / engine.kv_capacity)
            sched.on_engine_state(EngineSnapshot(now, len(in_flight), 0, kv))
            poll(now)
        limits.append(sched.stats.limit)
        if not events and (sched.stats.queued or sched.stats.in_flight):
            push(now + tick, 3, "")  # keep ticking until the queue has drained
    return RunResult(outcomes, limits)
