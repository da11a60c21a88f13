"""The runtime's local scheduler (``fineserve.scheduler``) in front of each simulated engine.

The same ``EngineScheduler`` and ``GpuArbiter`` the gateway builds (``runtime/gateway/
upstream.py``: max_batch as the limit's start and ceiling, ``SchedulerConfig.for_engine``;
one arbiter per GPU holding several engines), driven by simulated time: ``submit`` on
arrival, ``on_first_token`` and ``on_finish`` after each step, ``on_engine_state`` with the
engine's running / waiting (as vLLM exports it: ``EngineSim.waiting_gauge``) / KV usage /
preemption count on every tick, and ``poll`` after each of these. Requests a scheduler
rejects or expires become 429 records (drops, SLO misses).
"""

from __future__ import annotations

from fineserve.planner.schema import Slo
from fineserve.scheduler import (
    EngineScheduler,
    EngineSnapshot,
    GpuArbiter,
    RequestInfo,
    SchedulerConfig,
    SloTargets,
    Verdict,
)
from fineserve.sim.engine import EngineSim, SimRequest

Out = tuple[list[SimRequest], list[tuple[SimRequest, str]]]  # (dispatch now, rejected + why)


class Admission:
    def __init__(self, engines: list[EngineSim], placements: dict, slos: dict[str, Slo],
                 config: SchedulerConfig, limit_at_batch: bool = True) -> None:
        on_gpu: dict[int, list[EngineSim]] = {}
        for e in engines:
            on_gpu.setdefault(e.gpus[0], []).append(e)
        self.arbiters = {g: GpuArbiter(str(g)) for g, es in on_gpu.items() if len(es) > 1}
        self.engines = {e.name: e for e in engines}
        self.sched: dict[str, EngineScheduler] = {}
        for e in engines:
            p = placements[e.name]
            slo = slos[p.model]
            self.sched[e.name] = EngineScheduler(
                e.name, SloTargets(slo.ttft_s, slo.tpot_s),
                config.for_engine(p.max_batch, ceiling=limit_at_batch),
                arbiter=self.arbiters.get(e.gpus[0]))
            e.first_tokens = []
        # engines whose grants an event on this engine may release (same arbiter)
        self.neighbours = {e.name: [x.name for x in on_gpu[e.gpus[0]]]
                           if e.gpus[0] in self.arbiters else [e.name] for e in engines}
        self.held: dict[str, SimRequest] = {}  # queued in a scheduler, by request id

    def engine_of(self, req: SimRequest) -> EngineSim:
        return self.engines[req.engine]

    def submit(self, eng: EngineSim, req: SimRequest, now: float) -> Out:
        req.engine = eng.name
        rid = str(req.index)
        d = self.sched[eng.name].submit(
            RequestInfo(rid, req.model, req.prompt_tokens, req.output_tokens, now), now)
        if d.verdict is Verdict.ADMIT:
            return [req], []
        if d.verdict is Verdict.REJECT:
            return [], [(req, f"rejected: {d.reason}")]
        self.held[rid] = req
        return self._poll([eng.name], now)

    def after_step(self, eng: EngineSim, done: list[SimRequest], now: float) -> Out:
        sched = self.sched[eng.name]
        for req in eng.first_tokens or ():
            sched.on_first_token(str(req.index), now)
        eng.first_tokens = []
        for req in done:
            sched.on_finish(str(req.index), now, req.output_tokens, True)
        return self._poll(self.neighbours[eng.name], now) if done else ([], [])

    def cancel(self, req: SimRequest, now: float) -> bool:
        """The client of ``req`` gave up: True if it was still queued here (now removed);
        False if it was dispatched (then ``on_cancel`` once the engine is told)."""
        rid = str(req.index)
        if self.held.pop(rid, None) is None:
            return False
        self.sched[req.engine].cancel(rid, now)
        return True

    def on_cancel(self, req: SimRequest, now: float) -> Out:
        """A dispatched request was abandoned: its slot is free (as the gateway's release of
        a failed request); whatever that lets through goes now."""
        self.sched[req.engine].on_finish(str(req.index), now, 0, False)
        return self._poll(self.neighbours[req.engine], now)

    def tick(self, now: float) -> Out:
        for name, sched in self.sched.items():
            e = self.engines[name]
            usage = min(1.0, e.kv_used / e.kv_tokens) if e.kv_tokens > 0 else 1.0
            sched.on_engine_state(EngineSnapshot(
                now, e.decoding + len(e.prefilling), e.waiting_gauge if e.busy else len(e.waiting),
                usage, e.preemptions))
        return self._poll(list(self.sched), now)

    def _poll(self, names: list[str], now: float) -> Out:
        go: list[SimRequest] = []
        rejected: list[tuple[SimRequest, str]] = []
        for name in names:
            ids, expired = self.sched[name].poll(now)
            go += [self.held.pop(i) for i in ids]
            rejected += [(self.held.pop(i), f"expired: {d.reason}") for i, d in expired]
        return go, rejected

    def check_integrity(self) -> None:
        for s in self.sched.values():
            s.check_integrity()
        for a in self.arbiters.values():
            a.check_integrity()
        assert not self.held, f"{len(self.held)} requests still queued at the end"
