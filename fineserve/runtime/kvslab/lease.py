"""An engine's lease: through the GPU's pool ledger, or local (no pool, grow to the maximum).

``LedgerLease.publish`` is called by the background thread whenever ``due()`` (every
``publish_s``). A ledger write is a locked JSON read-modify-write of every engine's row (~0.3
ms of Python holding the GIL of vLLM's scheduler), so it writes only when the demand or the
tokens used moved by a slab's tokens since the last write, or the last write is
``refresh_s`` old (heartbeat; demand statistics for the manager's next tick); otherwise it
re-reads its target only if the file changed (one ``stat``). The pool-wide manager tick runs
from there at most every ``tick_s / 2`` (the ledger lock elects one engine per interval).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fineserve.runtime.kvslab.errors import FloorsExceedPool
from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
from fineserve.runtime.kvslab.pool import ManagerConfig, PoolManager
from fineserve.runtime.kvslab.stats import DemandStats


class LocalLease:
    """No pool: every slab of the engine's virtual maximum may be mapped; never shrinks."""

    def __init__(self, num_slabs: int, held: int = 0) -> None:
        self.num_slabs, self.held = num_slabs, held
        self._read = False

    def acquire(self, n: int) -> int:
        k = max(0, min(n, self.num_slabs - self.held))
        self.held += k
        return k

    def release(self, n: int) -> None:
        self.held -= n

    def due(self) -> bool:
        """Once: the target never changes, so the demand need not be read again."""
        return not self._read

    def publish(self, used_tokens: int, demand_tokens: int) -> int:
        self._read = True
        return self.num_slabs


class LedgerLease:
    """Lease through the pool ledger; ``join`` registers and acquires the floor."""

    def __init__(self, ledger: Ledger, engine_id: str, *, publish_s: float,
                 manager: ManagerConfig, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.engine_id = ledger, engine_id
        self.publish_s, self.clock = publish_s, clock
        self.manager = PoolManager(ledger, manager)
        self.stats = DemandStats()
        self.refresh_s = max(publish_s, min(manager.tick_s, manager.heartbeat_timeout_s / 4))
        self._last = float("-inf")
        self._sent = (float("-inf"), 0, 0)  # when, used, demand of the last ledger write
        self._slab_tokens = 1  # known after join
        self._seen: tuple[int, int] | None = None  # ledger file version last read
        self._tick_at = float("-inf")
        self.target = 1

    def join(self, reg: EngineRegistration, slabs: int, wait_s: float,
             sleep: Callable[[float], None] = time.sleep) -> None:
        """Register and acquire ``slabs`` (the floor): waits up to ``wait_s`` for other
        engines to drain memory targeted to this one.

        Raises:
            FloorsExceedPool: the floor does not fit, or was not freed in time.
        """
        self.ledger.register(reg, self.clock())
        self._slab_tokens = max(1, reg.slab_bytes // reg.bytes_per_token)
        deadline = self.clock() + wait_s
        got = 0
        while True:
            got += self.ledger.acquire(self.engine_id, slabs - got, self.clock())
            if got >= slabs:
                return
            if self.clock() >= deadline:
                self.ledger.release(self.engine_id, got, self.clock())
                self.ledger.deregister(self.engine_id)
                raise FloorsExceedPool(
                    f"{self.engine_id}: only {got} of {slabs} floor slabs came free in {wait_s} s",
                    hint="check for stale engines in the ledger or raise the pool headroom")
            self.manager.maybe_tick(self.clock())
            sleep(0.05)

    def acquire(self, n: int) -> int:
        return self.ledger.acquire(self.engine_id, n, self.clock())

    def release(self, n: int) -> None:
        self.ledger.release(self.engine_id, n, self.clock())

    def due(self) -> bool:
        """Every ``publish_s``: the caller reads the demand only then."""
        return self.clock() - self._last >= self.publish_s

    def publish(self, used_tokens: int, demand_tokens: int) -> int:
        if not self.due():
            return self.target
        now = self._last = self.clock()
        self.stats.update(now, demand_tokens)
        sent_at, sent_used, sent_demand = self._sent
        if (now - sent_at >= self.refresh_s
                or abs(used_tokens - sent_used) >= self._slab_tokens
                or abs(demand_tokens - sent_demand) >= self._slab_tokens):
            row = self.ledger.publish(
                self.engine_id, now, used_tokens=used_tokens, demand_tokens=demand_tokens,
                demand_mean_tokens=self.stats.mean, demand_std_tokens=self.stats.std)
            self._sent, self._seen = (now, used_tokens, demand_tokens), self.ledger.version()
            self.target = row.target_slabs
        elif self.ledger.version() != self._seen:  # another engine or a tick wrote
            self._read_target()
        if now >= self._tick_at:
            self._tick_at = now + self.manager.config.tick_s / 2
            if self.manager.maybe_tick(now) is not None:
                self._read_target()
        return self.target

    def _read_target(self) -> None:
        self._seen = self.ledger.version()  # before the read: a later write is seen next time
        row = self.ledger.snapshot().engine(self.engine_id)
        if row is not None:
            self.target = row.target_slabs

    def leave(self) -> None:
        self.ledger.deregister(self.engine_id)
