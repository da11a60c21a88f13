"""One engine under vLLM-style continuous batching, stepped by the cluster simulator.

Each step runs every decoding sequence one token forward and spends what is left of the token
budget on prefill (chunked: a long prompt spans steps). Step time is the latency model's decode
step for the decoding batch plus its prefill time for the chunk. KV is counted in tokens: a
running request holds prompt + generated tokens plus half a block; when a step would exceed
the KV budget, the newest decoding requests are preempted (vLLM's recompute mode: back to the
front of the queue, to prefill prompt + generated tokens again).

Cost per step is O(log n) in the running set, not O(batch): decoders sit in a heap keyed by
the step at which they finish, and context sums are kept incrementally. That is what lets a
core simulate a million requests in under a minute.

Optional hooks, each ``None`` unless the cluster enables it (one attribute test per step):
``pool`` (KV Slab pool: ``kv_tokens`` changes over time, grown on demand, ``kvpool.py``),
``hbm`` (HBM-bandwidth interference stretches steps, ``interference.py``), ``tracer`` (Chrome
trace, ``chrome_trace.py``) and ``first_tokens`` (requests whose first token came in the last
step, for the local scheduler).

A client that gives up (``cancel``) frees its request's batch slot and KV at the next step
boundary, as vLLM aborts a request whose connection closed: under overload, timed-out
requests stop taking steps and KV from the ones still being waited for.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fineserve.profiles.latency import EngineShape, LatencyModel

HALF_BLOCK = 8  # tokens: mean unused tail of a request's last 16-token block


@dataclass(slots=True)
class SimRequest:
    index: int
    model: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    first_token_s: float = math.nan
    finished_s: float = math.nan
    prefilled: int = 0  # prompt tokens (incl. recomputed output) already prefilled
    generated: int = 0  # output tokens emitted before the current admission
    preemptions: int = 0
    engine: str = ""
    admitted_s: float = math.nan  # first time the engine scheduled it (end of queueing)
    cancelled: bool = False  # the client gave up; the engine drops it at a step boundary
    heap_seq: int = -1  # seq of its live decode-heap entry (-1: not decoding)
    heap_finish: int = 0  # the step at which that entry finishes

    @property
    def to_prefill(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass
class EngineSim:
    name: str
    shape: EngineShape
    sm_pct: float
    max_batch: int
    kv_tokens: float  # KV budget in tokens (per rank: bytes / bytes-per-token)
    latency: LatencyModel
    token_budget: int = 2048  # vLLM max_num_batched_tokens
    waiting: deque = field(default_factory=deque)
    prefilling: list = field(default_factory=list)  # admitted, prompt not done
    _heap: list = field(default_factory=list)  # (finish step, seq, request)
    _gone: set = field(default_factory=set)  # ids of preempted heap entries
    step_no: int = 0
    decoding: int = 0
    ctx_sum: int = 0  # sum of contexts of decoding requests
    kv_used: float = 0.0
    busy: bool = False  # a step is in flight
    preemptions: int = 0
    _seq: int = 0
    _cache: dict = field(default_factory=dict)
    _pending: tuple = ()
    gpus: tuple = ()  # global GPU ids (ranks)
    pool: Any = None  # SlabPools when KV is pooled
    hbm: Any = None  # HbmShare when interference is modelled
    sms: Any = None  # SmShare when the plan oversubscribes SMs under MPS (smshare.py)
    tracer: Any = None  # ChromeTrace when a trace is written
    first_tokens: list | None = None  # filled per step when a local scheduler listens
    weight_bytes: float = 0.0  # per rank, read once per step (interference)
    kv_token_bytes: float = 0.0  # per rank (interference)
    # the latency model whose step is the step alone (the profile, no calibration): HBM
    # demand is bytes over that time, as the interference fit defines it (None: the step's)
    demand_latency: Any = None
    # the calibrated model without its common co-location factor, and the engines sharing
    # the GPU: the step is interpolated between the two by how busy those are
    # (``SimOptions.colocation_when_busy``, colocation.py; None: the calibrated step)
    solo_latency: Any = None
    neighbours: Any = None
    _scache: dict = field(default_factory=dict)
    _acache: dict = field(default_factory=dict)
    _debt: float = 0.0  # on-demand KV growth latency owed by the next step
    _demand: float | None = None  # HBM demand of the step in flight
    # vllm:num_requests_waiting as exported: what the last step left unscheduled. vLLM adds
    # arrivals to its queue between steps and publishes the gauge at a step's end, so a
    # request that came in during a step is never counted; ``len(waiting)`` would count it
    # (and a gateway reading the gauge would see a queue the engine never had).
    waiting_gauge: int = 0
    _cancels: list = field(default_factory=list)  # cancelled, not yet dropped
    cancelled: int = 0  # requests dropped because their client gave up

    # -- latency with memoisation (contexts bucketed to 32 tokens; the share is the engine's
    # own unless SM contention lowers it for a step, then part of the key)
    def _decode_s(self, batch: int, ctx: float, sm: float | None = None,
                  solo: bool = False) -> float:
        key = (batch, int(ctx) >> 5) if sm is None else (batch, int(ctx) >> 5, sm)
        cache, lat = (self._scache, self.solo_latency) if solo else (self._cache, self.latency)
        t = cache.get(key)
        if t is None:
            t = lat.decode_step(self.shape, batch, max(1.0, float(key[1] << 5)),
                                self.sm_pct if sm is None else sm).seconds
            cache[key] = t
        return t

    def _prefill_s(self, tokens: int, sm: float | None = None) -> float:
        b = -((tokens + 15) >> 4)  # 16-token buckets, negative keys: no clash
        key = b if sm is None else (b, sm)
        t = self._cache.get(key)
        if t is None:
            t = self.latency.prefill(self.shape, max(1, -b << 4),
                                     self.sm_pct if sm is None else sm).seconds
            self._cache[key] = t
        return t

    def _alone_s(self, tokens: int, sm: float | None) -> float:
        """The step as ``demand_latency`` (the profile) times it: the engine alone on its GPU,
        before any calibration for co-location (memoised like ``_decode_s``)."""
        share = self.sm_pct if sm is None else sm
        key = (self.decoding, int(self.ctx_sum / max(self.decoding, 1)) >> 5,
               (tokens + 15) >> 4, share)
        t = self._acache.get(key)
        if t is None:
            lat = self.demand_latency
            t = (lat.decode_step(self.shape, self.decoding, max(1.0, float(key[1] << 5)),
                                 share).seconds if self.decoding else 0.0)
            if tokens:
                t += lat.prefill(self.shape, max(1, key[2] << 4), share).seconds
            self._acache[key] = t
        return t

    def check_integrity(self) -> None:
        """Raise AssertionError if the incremental bookkeeping drifted (called by tests and
        at the end of every simulation)."""
        live = [e for e in self._heap if e[1] not in self._gone]
        assert self.decoding == len(live), (self.name, self.decoding, len(live))
        assert self.decoding >= 0 and self.ctx_sum >= 0, (self.name, self.ctx_sum)
        if self.idle:
            assert self.ctx_sum == 0 and abs(self.kv_used) < 1e-6, (self.name, self.kv_used)
            assert not self._cancels, (self.name, len(self._cancels))

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.decoding)

    def arrive(self, req: SimRequest) -> None:
        req.engine = self.name
        self.waiting.append(req)

    def waiting_tokens(self) -> int:
        """KV tokens the queue would need (O(queue): for policy ticks, not per step)."""
        return sum(r.to_prefill + 1 + HALF_BLOCK for r in self.waiting)

    def _fits(self, need: float) -> bool:
        """Whether ``need`` more KV tokens fit, growing a pooled lease on demand."""
        short = self.kv_used + need - self.kv_tokens
        if self.pool is not None and short > -self.pool.ahead_tokens(self):
            self._debt = max(self._debt, self.pool.grow_now(self, short))
            short = self.kv_used + need - self.kv_tokens
        return short <= 0

    def cancel(self, req: SimRequest) -> None:
        """The client of ``req`` (queued or running here) went away: drop it before the next
        step is planned (vLLM aborts between steps), freeing its slot and KV."""
        req.cancelled = True
        self._cancels.append(req)

    def _drop_cancelled(self) -> None:
        for req in self._cancels:
            if not math.isnan(req.finished_s):
                continue  # it finished in the step that was in flight
            self.cancelled += 1
            if req.heap_seq >= 0:  # decoding: release like a preemption, never requeued
                self._release_decoder(req)
            elif req in self.prefilling:  # admitted: its reservation goes back
                self.prefilling.remove(req)
                self.kv_used -= req.to_prefill + 1 + HALF_BLOCK
            else:
                self.waiting.remove(req)
        self._cancels.clear()

    def _release_decoder(self, req: SimRequest) -> None:
        """Take a decoding ``req`` out of the batch (preempted or cancelled): its heap entry
        is dropped lazily, its KV freed; ``req.generated`` counts the tokens it produced."""
        self._gone.add(req.heap_seq)
        self.decoding -= 1
        req.generated = req.output_tokens - (req.heap_finish - self.step_no)
        req.heap_seq = -1
        ctx = req.prompt_tokens + req.generated
        self.ctx_sum -= ctx
        self.kv_used -= ctx + HALF_BLOCK

    def start_step(self, now: float) -> float:
        """Plan one step at ``now``; returns when it ends."""
        if self._cancels:  # (normally dropped when the previous step ended)
            self._drop_cancelled()
        budget = self.token_budget - self.decoding
        chunks: list[tuple[SimRequest, int]] = []
        for req in self.prefilling:  # continue chunked prefills first
            if budget <= 0:
                break
            take = min(req.to_prefill - req.prefilled, budget)
            chunks.append((req, take))
            budget -= take
        while self.waiting and budget > 0 and (
                len(self.prefilling) + self.decoding < self.max_batch):
            req = self.waiting[0]
            need = req.to_prefill + 1 + HALF_BLOCK
            if not self._fits(need) and (self.decoding or self.prefilling):
                break  # wait for memory; an empty engine admits anyway (a lone request)
            self.waiting.popleft()
            if req.admitted_s != req.admitted_s:  # nan: first admission ends its queueing
                req.admitted_s = now
            self.kv_used += need
            self.prefilling.append(req)
            take = min(req.to_prefill - req.prefilled, budget)
            chunks.append((req, take))
            budget -= take
        self.waiting_gauge = len(self.waiting)
        tokens = sum(t for _, t in chunks)
        sm = None
        if self.sms is not None:
            eff = self.sms.begin(self.gpus, self.sm_pct)  # every step, ended in finish_step
            sm = None if eff >= self.sm_pct else eff
        d = 0.0
        if self.decoding:
            ctx = self.ctx_sum / self.decoding
            d = self._decode_s(self.decoding, ctx, sm)
            if self.neighbours is not None and (w := self.neighbours.busy(self)) < 1:
                d0 = self._decode_s(self.decoding, ctx, sm, solo=True)
                d = d0 + w * (d - d0)
        duration = d + (self._prefill_s(tokens, sm) if tokens else 0.0)
        if self._debt:
            duration += self._debt
            self._debt = 0.0
        if self.hbm is not None and duration > 0:
            moved = self.weight_bytes + (self.ctx_sum + tokens) * self.kv_token_bytes
            alone = (self._alone_s(tokens, sm) if self.demand_latency is not None
                     else duration)
            duration, self._demand = self.hbm.begin(self.gpus, duration, moved,
                                                    self.decoding > 0, alone)
        if self.tracer is not None:
            self.tracer.step(self, now, duration, self.decoding, tokens)
        self._pending = tuple(chunks)
        self.busy = True
        return now + duration

    def finish_step(self, now: float) -> list[SimRequest]:
        """Apply the step that ends at ``now``; returns the requests that completed."""
        self.step_no += 1
        self.busy = False
        if self._demand is not None:
            self.hbm.end(self.gpus, self._demand)
            self._demand = None
        if self.sms is not None:
            self.sms.end(self.gpus, self.sm_pct)
        done: list[SimRequest] = []
        # every decoding sequence produced a token
        self.ctx_sum += self.decoding
        self.kv_used += self.decoding
        heap = self._heap
        while heap and heap[0][0] <= self.step_no:
            _, seq, req = heapq.heappop(heap)
            if seq in self._gone:
                self._gone.discard(seq)
                continue
            self._complete(req, now, done)
        for req, take in self._pending:
            req.prefilled += take
            if req.prefilled >= req.to_prefill:
                self.prefilling.remove(req)
                if math.isnan(req.first_token_s):
                    req.first_token_s = now  # the prefill step emits the first token
                    if self.first_tokens is not None:
                        self.first_tokens.append(req)
                emitted = req.generated + 1
                remaining = req.output_tokens - emitted
                if remaining <= 0:
                    req.generated = emitted
                    self.kv_used -= req.to_prefill + HALF_BLOCK
                    req.finished_s = now
                    done.append(req)
                    continue
                req.generated = emitted
                self._seq += 1
                req.heap_seq, req.heap_finish = self._seq, self.step_no + remaining
                heapq.heappush(heap, (req.heap_finish, self._seq, req))
                self.decoding += 1
                self.ctx_sum += req.prompt_tokens + req.generated
        self._pending = ()
        if self._cancels:
            self._drop_cancelled()
            done = [r for r in done if not r.cancelled]  # the client saw a timeout instead
            if self.first_tokens:
                self.first_tokens[:] = [r for r in self.first_tokens if not r.cancelled]
        if self.kv_used > self.kv_tokens and self.decoding and not self._fits(0):
            self._preempt()
        return done

    def _complete(self, req: SimRequest, now: float, done: list[SimRequest]) -> None:
        self.decoding -= 1
        ctx = req.prompt_tokens + req.output_tokens
        self.ctx_sum -= ctx
        self.kv_used -= ctx + HALF_BLOCK
        req.generated = req.output_tokens
        req.heap_seq = -1
        req.finished_s = now
        done.append(req)

    def _preempt(self) -> None:
        """Evict the most recently admitted decoders until KV fits (recompute mode)."""
        live = sorted((e for e in self._heap if e[1] not in self._gone), key=lambda e: -e[1])
        for _, _, req in live:
            if self.kv_used <= self.kv_tokens or self.decoding <= 1:
                break
            self._release_decoder(req)
            req.prefilled = 0
            req.preemptions += 1
            self.preemptions += 1
            self.waiting.appendleft(req)
