"""An engine's lease: through the GPU's pool ledger, or local (no pool, grow to the maximum).

``LedgerLease.publish`` is called every few milliseconds by the background thread; it writes
to the ledger only every ``publish_s`` (heartbeat + demand statistics) and runs the pool-wide
manager tick from there (the ledger lock elects one engine per interval).
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

    def acquire(self, n: int) -> int:
        k = max(0, min(n, self.num_slabs - self.held))
        self.held += k
        return k

    def release(self, n: int) -> None:
        self.held -= n

    def publish(self, used_tokens: int, demand_tokens: int) -> int:
        return self.num_slabs


class LedgerLease:
    """Lease through the pool ledger; ``join`` registers and acquires the floor."""

    def __init__(self, ledger: Ledger, engine_id: str, *, publish_s: float,
                 manager: ManagerConfig, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.engine_id = ledger, engine_id
        self.publish_s, self.clock = publish_s, clock
        self.manager = PoolManager(ledger, manager)
        self.stats = DemandStats()
        self._last = float("-inf")
        self.target = 1

    def join(self, reg: EngineRegistration, slabs: int, wait_s: float,
             sleep: Callable[[float], None] = time.sleep) -> None:
        """Register and acquire ``slabs`` (the floor): waits up to ``wait_s`` for other
        engines to drain memory targeted to this one.

        Raises:
            FloorsExceedPool: the floor does not fit, or was not freed in time.
        """
        self.ledger.register(reg, self.clock())
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

    def publish(self, used_tokens: int, demand_tokens: int) -> int:
        now = self.clock()
        if now - self._last < self.publish_s:
            return self.target
        self._last = now
        self.stats.update(now, demand_tokens)
        row = self.ledger.publish(
            self.engine_id, now, used_tokens=used_tokens, demand_tokens=demand_tokens,
            demand_mean_tokens=self.stats.mean, demand_std_tokens=self.stats.std)
        self.target = row.target_slabs
        if self.manager.maybe_tick(now) is not None:
            row = self.ledger.snapshot().engine(self.engine_id) or row
            self.target = row.target_slabs
        return self.target

    def leave(self) -> None:
        self.ledger.deregister(self.engine_id)
