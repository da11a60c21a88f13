"""Pick a replica for a request and hold its scheduler slot until the answer is done.

Replicas of a model are tried least loaded first, load being (in flight + queued) / weight,
so under concurrency each engine carries its share of the plan's traffic split; among equally
loaded replicas (always the case at low load) smooth weighted round-robin breaks the tie, so
sequential traffic follows the weights too. The first scheduler that does not REJECT gets the
request; REJECT from all of them is a 429 with the smallest Retry-After.

A QUEUE verdict parks the request on a future that ``poll()`` resolves: with ADMIT when the
scheduler dispatches it, with its REJECT decision when it expires. ``poll()`` runs from a
timer while anything is queued and right after every finish, which frees a slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import NamedTuple

from fineserve.runtime.gateway.upstream import Upstream
from fineserve.scheduler.types import Decision, RequestInfo, Verdict

NO_ENGINE = Decision(Verdict.REJECT, "no_engine", None)  # every replica down: 503
_ADMIT = Decision(Verdict.ADMIT)


class Outcome(NamedTuple):
    upstream: Upstream | None  # None: rejected (429) or no replica up (503)
    decision: Decision
    expired: bool = False  # the rejection came from the queue, at the request's deadline


class _Waiter:
    __slots__ = ("fut", "up")

    def __init__(self, fut: asyncio.Future[Decision], up: Upstream) -> None:
        self.fut = fut
        self.up = up


class Admission:
    """Replica choice and scheduler slots for every model; lives on the gateway's loop."""

    def __init__(self, routes: dict[str, list[Upstream]], poll_interval_s: float) -> None:
        self.routes = routes
        self.upstreams = [u for ups in routes.values() for u in ups]
        self.poll_interval_s = poll_interval_s
        self._by_engine = {u.engine_id: u for u in self.upstreams}
        self._waiters: dict[str, _Waiter] = {}

    def candidates(self, model: str, exclude: Iterable[Upstream] = ()) -> list[Upstream]:
        """Healthy replicas, least loaded per weight first (weighted round-robin on ties)."""
        ups = [u for u in self.routes[model] if u.healthy and u not in exclude]
        if len(ups) < 2:
            return ups
        load = {u: (u.in_flight + u.queued) / u.cfg.weight for u in ups}
        best = min(load.values())
        tied = [u for u in ups if load[u] <= best + 1e-9]
        if len(tied) > 1:
            total = 0.0
            for u in tied:
                u.credit += u.cfg.weight
                total += u.cfg.weight
            first = max(tied, key=lambda u: u.credit)
            first.credit -= total
        else:
            first = tied[0]
        rest = sorted((u for u in ups if u is not first), key=load.__getitem__)
        return [first, *rest]

    async def acquire(self, info: RequestInfo, exclude: Iterable[Upstream] = ()) -> Outcome:
        """A replica whose scheduler admitted ``info`` (the slot is held), or the rejection.

        Cancelling the caller while it waits in a queue removes it from that queue; a slot
        granted in the same instant is given back.
        """
        ups = self.candidates(info.model, exclude)
        if not ups:
            return Outcome(None, NO_ENGINE)
        rejection: Decision | None = None
        now = time.monotonic()
        for up in ups:
            d = up.sched.submit(info, now)
            if d.verdict is Verdict.ADMIT:
                up.in_flight += 1
                return Outcome(up, d)
            if d.verdict is Verdict.QUEUE:
                return await self._wait(info, up)
            if rejection is None or (d.retry_after_s or 0) < (rejection.retry_after_s or 0):
                rejection = d
        assert rejection is not None
        return Outcome(None, rejection)

    async def _wait(self, info: RequestInfo, up: Upstream) -> Outcome:
        rid = info.request_id
        w = _Waiter(asyncio.get_running_loop().create_future(), up)
        self._waiters[rid] = w
        up.queued += 1
        self.poll_one(up, time.monotonic())  # a slot may be free right now
        try:
            d = await w.fut
        except asyncio.CancelledError:
            now = time.monotonic()
            if self._waiters.pop(rid, None) is not None:  # still in the scheduler's queue
                up.queued -= 1
                up.sched.cancel(rid, now)
            elif w.fut.done() and not w.fut.cancelled() and w.fut.result().verdict is Verdict.ADMIT:
                self.release(up, rid, 0, ok=False)  # dispatched as we were cancelled
            raise
        return Outcome(up, d) if d.verdict is Verdict.ADMIT else Outcome(None, d, True)

    def release(self, up: Upstream, request_id: str, output_tokens: int, ok: bool) -> None:
        """The admitted request ended (answered, failed or abandoned): free its slot."""
        now = time.monotonic()
        up.in_flight -= 1
        up.sched.on_finish(request_id, now, output_tokens, ok)
        if up.queued or up.arbiter is not None:
            self.poll_one(up, now)

    def poll_one(self, up: Upstream, now: float) -> None:
        """Dispatch what ``up``'s scheduler (or its GPU's arbiter) releases; answer the expired."""
        if up.arbiter is None:
            dispatch, expired = up.sched.poll(now)
            for rid in dispatch:
                self._grant(up, rid, now)
            for rid, d in expired:
                self._expire(up, rid, d)
            return
        res = up.arbiter.poll(now)  # grants of every engine on the GPU
        for engine, rid in res.dispatch:
            self._grant(self._by_engine[engine], rid, now)
        for engine, rid, d in res.expired:
            self._expire(self._by_engine[engine], rid, d)

    def on_engine_state(self, up: Upstream) -> None:
        """After a /metrics scrape: the limit may have moved."""
        if up.queued or up.arbiter is not None:
            self.poll_one(up, time.monotonic())

    def _grant(self, up: Upstream, rid: str, now: float) -> None:
        w = self._waiters.pop(rid, None)
        if w is None:  # dispatched a request nobody waits for any more
            up.sched.on_finish(rid, now, 0, False)
            return
        up.queued -= 1
        if w.fut.cancelled():  # the client left in this very loop iteration
            up.sched.on_finish(rid, now, 0, False)
            return
        up.in_flight += 1
        w.fut.set_result(_ADMIT)

    def _expire(self, up: Upstream, rid: str, d: Decision) -> None:
        w = self._waiters.pop(rid, None)
        if w is None:
            return
        up.queued -= 1
        if not w.fut.cancelled():
            w.fut.set_result(d)

    def poll(self) -> None:
        if not self._waiters:
            return
        now = time.monotonic()
        for up in self.upstreams:
            if up.queued:
                self.poll_one(up, now)  # (an arbiter's pass covers its GPU; a repeat is cheap)

    async def run_timer(self) -> None:
        """Poll while requests are queued: dispatch freed slots, expire late requests."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            self.poll()
