"""One engine's local scheduler: in-flight limit + bounded queue + admission.

The caller (gateway or simulator) owns time and I/O and drives five events::

    submit(req, now)          -> ADMIT (dispatch now) | QUEUE (wait for poll) | REJECT (429)
    poll(now)                 -> ids to dispatch now, (id, REJECT) for queued requests that expired
    on_first_token(id, now)   first streamed token seen
    on_finish(id, now, n, ok) request over (also failed / cancelled in flight): frees the slot
    on_engine_state(snap)     vLLM /metrics scrape

Call ``poll`` after every QUEUE verdict, on_finish, cancel and on_engine_state, and on a
periodic tick (expiry). Every call is O(log queue) amortised; none scans the queue. The
policy (``fcfs`` / ``deadline`` / ``adaptive``) decides only the limit and whether a request
can still meet its TTFT deadline; see ``docs/scheduler.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fineserve.scheduler.estimator import ServiceEstimator
from fineserve.scheduler.queue import LATE, ON_TIME, WaitQueue
from fineserve.scheduler.registry import make_policy
from fineserve.scheduler.types import (
    Decision,
    EngineSnapshot,
    RequestInfo,
    SchedulerConfig,
    SchedulerStats,
    SloTargets,
    Verdict,
)

if TYPE_CHECKING:
    from fineserve.scheduler.arbiter import GpuArbiter

ADMIT = Decision(Verdict.ADMIT)


@dataclass(slots=True)
class _Flight:
    dispatch_s: float
    prompt_tokens: int
    running: int  # in flight at dispatch, counting this one
    epoch: int  # the policy's epoch at dispatch: feedback from older epochs is stale
    predicted_s: float | None  # the fit's dispatch-to-first-token prediction at dispatch
    first_token_s: float | None = None


class EngineScheduler:
    """One per engine: adaptive in-flight limit + bounded queue + admission."""

    def __init__(
        self,
        engine_id: str,
        slo: SloTargets,
        config: SchedulerConfig,
        *,
        arbiter: GpuArbiter | None = None,
        priority: int = 0,
    ) -> None:
        """Args:
        engine_id: the engine's name (for messages and the arbiter).
        slo: the served model's TTFT / TPOT objectives.
        config: policy and bounds.
        arbiter: the GPU's arbiter when several engines share one GPU (see arbiter.py).
        priority: the model's priority on that GPU (``ModelRoute.priority``; higher first).
        """
        self.engine_id = engine_id
        self.slo = slo
        self.config = config
        self.priority = priority
        self._est = ServiceEstimator(config.est_prefill_s_per_token)
        self._policy = make_policy(slo, config, self._est)
        self._queue = WaitQueue()
        self._flights: dict[str, _Flight] = {}
        self._admitted = self._rejected = self._expired = 0
        self._cancelled = self._finished = self._deprioritised = 0
        # Results of an arbiter pass not yet handed out by this engine's poll().
        self._granted: list[str] = []
        self._expired_out: list[tuple[str, Decision]] = []
        self._arbiter = arbiter
        self._saturated_finish_s: float | None = None  # last finish of a saturated engine
        if arbiter is not None:
            arbiter.attach(self)

    # -- the contract ---------------------------------------------------------------------

    def submit(self, req: RequestInfo, now_s: float) -> Decision:
        """Admit, queue or reject a new request.

        Raises:
            ValueError: ``req.request_id`` is already queued or in flight here.
        """
        rid = req.request_id
        if rid in self._flights or rid in self._queue:
            raise ValueError(
                f"request_id {rid!r} is already queued or in flight on {self.engine_id}"
            )
        ahead = self._queue.ahead_of(ON_TIME, req.priority)
        verdict = self._policy.assess(req, now_s, len(self._flights), ahead)
        if verdict.on_time:
            klass = ON_TIME
        elif self.config.late == "deprioritise":
            klass, ahead = LATE, self._queue.ahead_of(LATE, req.priority)
        else:
            self._rejected += 1
            return Decision(
                Verdict.REJECT,
                f"cannot meet the TTFT SLO ({verdict.lateness_s:.3f} s late)",
                max(self.config.min_retry_after_s, verdict.lateness_s),
            )
        if ahead == 0 and self._has_slot():
            self._dispatch(req, now_s)
            return ADMIT if klass == ON_TIME else Decision(Verdict.ADMIT, "late")
        if len(self._queue) >= self.config.max_queue:
            self._rejected += 1
            return Decision(Verdict.REJECT, "queue full", self._retry_after())
        expire_at = req.arrival_s + self.slo.ttft_s - verdict.prefill_s
        if klass == LATE:
            expire_at = req.arrival_s + self.slo.ttft_s * self.config.late_timeout_factor
            self._deprioritised += 1
        elif not self._policy.expires_queued:
            expire_at = float("inf")
        self._queue.push(req, klass, expire_at)
        return Decision(Verdict.QUEUE, "late: deprioritised" if klass == LATE else "")

    def poll(self, now_s: float) -> tuple[list[str], list[tuple[str, Decision]]]:
        """Expire queued requests past their deadline, then fill free slots from the queue.

        Returns:
            (request ids to dispatch now, (request id, REJECT decision) of expired requests).
            With an arbiter, the GPU-wide pass also fills the other engines' next poll().
        """
        if self._arbiter is not None:
            self._arbiter.run(now_s)
        else:
            self.expire(now_s)
            while self.dispatchable():
                self.dispatch_head(now_s)
        return self.poll_buffers()

    def on_first_token(self, request_id: str, now_s: float) -> None:
        flight = self._flights.get(request_id)
        if flight is None or flight.first_token_s is not None:
            return
        flight.first_token_s = now_s
        engine_ttft = now_s - flight.dispatch_s
        if flight.predicted_s is not None:  # before the fit learns from this very sample
            self._est.prefill_err.add(engine_ttft - flight.predicted_s)
        self._est.observe_prefill(flight.prompt_tokens, flight.running, engine_ttft)
        self._policy.on_first_token(engine_ttft, flight.epoch, now_s)

    def on_finish(self, request_id: str, now_s: float, output_tokens: int, ok: bool) -> None:
        """A dispatched request ended (ok=False: failed or cancelled); frees its slot.

        Unknown ids are ignored; a still-queued id is treated as ``cancel``.
        """
        flight = self._flights.pop(request_id, None)
        if flight is None:
            self.cancel(request_id, now_s)
            return
        self._observe_gap(now_s)
        self._release(request_id)
        tpot = None
        if ok and flight.first_token_s is not None and output_tokens > 1:
            tpot = (now_s - flight.first_token_s) / (output_tokens - 1)
        if ok:
            self._est.observe_finish(now_s - flight.dispatch_s, tpot)
        self._policy.on_finish(tpot, ok, flight.epoch, now_s)

    def on_engine_state(self, snap: EngineSnapshot) -> None:
        self._policy.on_engine_state(snap, len(self._flights))

    def cancel(self, request_id: str, now_s: float) -> None:
        """The client went away. Safe for queued, in-flight (= failed finish) and unknown ids."""
        if self._queue.remove(request_id) is not None:
            self._cancelled += 1
        elif request_id in self._flights:
            self.on_finish(request_id, now_s, 0, False)

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            in_flight=len(self._flights),
            queued=len(self._queue),
            limit=self._policy.limit,
            admitted=self._admitted,
            rejected=self._rejected,
            expired=self._expired,
            cancelled=self._cancelled,
            finished=self._finished,
            deprioritised=self._deprioritised,
            ttft_est_s=self._est.ttft.value,
            tpot_est_s=self._est.tpot.value,
        )

    # -- additions ------------------------------------------------------------------------

    @property
    def policy_name(self) -> str:
        return self._policy.name

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reject_queued(self, now_s: float, reason: str) -> list[tuple[str, Decision]]:
        """Reject everything queued (graceful shutdown: stop admitting, keep the in-flight)."""
        out = []
        while (entry := self._queue.pop()) is not None:
            self._expired += 1
            decision = Decision(Verdict.REJECT, reason, self._retry_after())
            out.append((entry.req.request_id, decision))
        return out

    def check_integrity(self) -> None:
        """Raise AssertionError on inconsistent bookkeeping (tests call it after every step)."""
        self._queue.check_integrity()
        stray = [rid for rid in self._granted if rid not in self._flights]
        if stray:
            raise AssertionError(f"granted ids not in flight: {stray}")
        if self._admitted != len(self._flights) + self._finished:
            raise AssertionError("admitted != in flight + finished")

    # -- used by GpuArbiter -------------------------------------------------------------

    def dispatchable(self) -> bool:
        """A queued request exists and this engine's own limit has room for it."""
        return len(self._queue) > 0 and len(self._flights) < self._policy.limit

    def dispatch_head(self, now_s: float) -> str:
        entry = self._queue.pop()
        if entry is None:
            raise RuntimeError(f"dispatch_head on {self.engine_id} with an empty queue")
        self._dispatch(entry.req, now_s)
        self._granted.append(entry.req.request_id)
        return entry.req.request_id

    def poll_buffers(self) -> tuple[list[str], list[tuple[str, Decision]]]:
        """Hand out (and forget) what dispatch and expiry produced since the last call."""
        granted, expired = self._granted, self._expired_out
        self._granted, self._expired_out = [], []
        return granted, expired

    # -- internals ------------------------------------------------------------------------

    def _has_slot(self) -> bool:
        if len(self._flights) >= self._policy.limit:
            return False
        return self._arbiter is None or self._arbiter.may_take(self)

    def _observe_gap(self, now_s: float) -> None:
        """Time since the previous finish, when the engine was saturated throughout."""
        if len(self._flights) + 1 < self._policy.limit:  # counting the one just finished
            self._saturated_finish_s = None
            return
        if self._saturated_finish_s is not None:
            self._est.gap.add(now_s - self._saturated_finish_s)
        self._saturated_finish_s = now_s

    def _dispatch(self, req: RequestInfo, now_s: float) -> None:
        running = len(self._flights) + 1
        predicted = None
        if self._policy.predicts and self._est.ttft.count:
            predicted = self._est.prefill_s(req.prompt_tokens, running)
        self._flights[req.request_id] = _Flight(
            now_s, req.prompt_tokens, running, self._policy.epoch, predicted
        )
        self._admitted += 1
        if self._arbiter is not None:
            self._arbiter.taken()
        self._policy.on_dispatch(len(self._flights), now_s)

    def _release(self, request_id: str) -> None:
        self._finished += 1
        if self._arbiter is not None:
            self._arbiter.released()
        if self._granted and request_id in self._granted:  # cancelled before poll handed it out
            self._granted.remove(request_id)

    def expire(self, now_s: float) -> None:
        """Move queued requests past their expiry time to the next poll's REJECT list."""
        for entry in self._queue.pop_expired(now_s):
            self._expired += 1
            why = "TTFT deadline" if entry.klass == ON_TIME else "late timeout"
            decision = Decision(
                Verdict.REJECT, f"expired: queued past the {why}", self._retry_after()
            )
            self._expired_out.append((entry.req.request_id, decision))

    def _retry_after(self) -> float:
        """Seconds until the present backlog would have drained through the limit."""
        if self._est.service.count == 0:
            wait = self.slo.ttft_s
        else:
            backlog = len(self._flights) + len(self._queue) + 1 - self._policy.limit
            wait = self._est.slot_wait_s(backlog, self._policy.limit)
        return max(self.config.min_retry_after_s, wait)
