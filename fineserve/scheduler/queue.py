"""The bounded wait queue of one engine: dispatch order and expiry order in O(log n).

Two heaps over the same entries: one in dispatch order (on-time before late, then higher
priority, then FIFO by submission) and one in expiry order. Removal (dispatch, expiry,
cancel) marks the entry dead and the other heap drops it when it surfaces (lazy deletion);
when dead entries outnumber live ones both heaps are rebuilt, so memory stays O(live) and
every call stays O(log n) amortised.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

from fineserve.scheduler.types import RequestInfo

ON_TIME = 0
LATE = 1  # deprioritised: predicted to miss its TTFT SLO, served only when nothing on time waits


@dataclass(slots=True, eq=False)
class QueueEntry:
    req: RequestInfo
    klass: int  # ON_TIME or LATE
    seq: int  # submission order: FIFO tie-break
    expire_at_s: float
    alive: bool = True


class WaitQueue:
    """Live entries keyed by request id; see the module docstring for the ordering."""

    __slots__ = ("_by_id", "_order", "_expiry", "_seq", "_ahead", "_dead")

    def __init__(self) -> None:
        self._by_id: dict[str, QueueEntry] = {}
        self._order: list[tuple[int, int, int, QueueEntry]] = []
        self._expiry: list[tuple[float, int, QueueEntry]] = []
        self._seq = 0
        self._ahead: Counter[tuple[int, int]] = Counter()  # (klass, priority) -> live count
        self._dead = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_id

    def push(self, req: RequestInfo, klass: int, expire_at_s: float) -> QueueEntry:
        entry = QueueEntry(req, klass, self._seq, expire_at_s)
        self._seq += 1
        self._by_id[req.request_id] = entry
        heapq.heappush(self._order, (klass, -req.priority, entry.seq, entry))
        heapq.heappush(self._expiry, (expire_at_s, entry.seq, entry))
        self._ahead[(klass, req.priority)] += 1
        return entry

    def ahead_of(self, klass: int, priority: int) -> int:
        """Live entries a new (klass, priority) entry would wait behind.

        O(number of distinct priorities), which is a handful in practice.
        """
        return sum(
            n for (k, p), n in self._ahead.items() if k < klass or (k == klass and p >= priority)
        )

    def peek(self) -> QueueEntry | None:
        order = self._order
        while order and not order[0][3].alive:
            heapq.heappop(order)
        return order[0][3] if order else None

    def pop(self) -> QueueEntry | None:
        entry = self.peek()
        if entry is not None:
            heapq.heappop(self._order)
            self._drop(entry)
        return entry

    def pop_expired(self, now_s: float) -> list[QueueEntry]:
        """Entries whose expiry time is at or before ``now_s``, oldest deadline first."""
        out: list[QueueEntry] = []
        # self._expiry, not a local alias: _drop may rebuild the heap mid-loop.
        while self._expiry and (not self._expiry[0][2].alive or self._expiry[0][0] <= now_s):
            entry = heapq.heappop(self._expiry)[2]
            if entry.alive:
                self._drop(entry)
                out.append(entry)
        return out

    def remove(self, request_id: str) -> QueueEntry | None:
        entry = self._by_id.get(request_id)
        if entry is not None:
            self._drop(entry)
        return entry

    def _drop(self, entry: QueueEntry) -> None:
        entry.alive = False
        del self._by_id[entry.req.request_id]
        key = (entry.klass, entry.req.priority)
        self._ahead[key] -= 1
        if not self._ahead[key]:
            del self._ahead[key]
        self._dead += 1
        if self._dead > 64 and self._dead > 2 * len(self._by_id):
            self._compact()

    def _compact(self) -> None:
        self._order = [t for t in self._order if t[3].alive]
        self._expiry = [t for t in self._expiry if t[2].alive]
        heapq.heapify(self._order)
        heapq.heapify(self._expiry)
        self._dead = 0

    def check_integrity(self) -> None:
        """Raise AssertionError if the heaps and the id map disagree (tests call this)."""
        live_order = {t[3].req.request_id for t in self._order if t[3].alive}
        live_expiry = {t[2].req.request_id for t in self._expiry if t[2].alive}
        if live_order != set(self._by_id) or live_expiry != set(self._by_id):
            raise AssertionError("wait queue heaps disagree with the id map")
        if sum(self._ahead.values()) != len(self._by_id):
            raise AssertionError("wait queue priority counts disagree with the id map")
