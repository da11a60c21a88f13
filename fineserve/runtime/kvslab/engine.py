"""Engine side of the pool: slab map + mapper + block pool + lease, grown and shrunk in time.

Threads: vLLM's scheduler thread calls ``service`` before every ``schedule()`` and
``on_step_finished`` / ``on_blocks_freed`` from its hooks, all under ``lock``; a background
thread calls ``background_once`` every few milliseconds while ``busy()`` (a slab maps, drains
or unmaps, a drain or grow is due) and every ``idle_poll_s`` otherwise, woken at once through
``wake`` when the scheduler's ``service`` sees free blocks fall below the grow-ahead mark.
Everything that touches vLLM's block pool runs under ``lock`` (the background thread takes it
too, so an idle engine - which never schedules - still drains); the slow CUDA calls (map +
zero, unmap) run outside it.

Host cost is the budget (H100 s4: 4.5 % tokens/s lost with the pool steady): every hook runs
on vLLM's scheduler thread and the background thread competes for the GIL, so steady-state
paths are O(1) (``SlabMap`` keeps counts, freed blocks are only scanned while a slab drains,
the demand is read only when the lease will publish it). ``bench/kvslab_host.py`` measures it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fineserve.runtime.kvslab.layout import KvLayout
from fineserve.runtime.kvslab.slabmap import SlabMap, SlabState


class MapError(Exception):
    """The driver refused memory for a slab (``cuMemCreate`` out of memory)."""


class Mapper(Protocol):
    def map_slab(self, slab: int) -> None:
        """Back ``slab`` with zeroed memory in every layer; raise ``MapError`` if none."""

    def unmap_slab(self, slab: int) -> None:
        """Unmap and release ``slab`` (no step may touch it any more)."""


class BlockPoolView(Protocol):
    """What the engine needs from vLLM's block pool (scheduler thread or under ``lock``)."""

    def num_free(self) -> int: ...

    def unpark(self, blocks: range) -> None:
        """Append the free (unreferenced) blocks of ``blocks`` to the free queue: they are
        exactly the parked ones of a slab coming ONLINE."""

    def take_free(self, block_ids: list[int]) -> list[int]:
        """Remove those of ``block_ids`` that sit in the free queue (dropping their prefix
        cache entries); return the ids removed."""

    def used_per_slab(self, blocks_per_slab: int, num_slabs: int) -> list[int]: ...

    def sort_free(self, below: int) -> None:
        """Reorder the free queue by block id, i.e. by slab: allocations fill the lowest
        slabs first. No queued block has an id >= ``below`` (its slab is OFFLINE)."""


class Lease(Protocol):
    def acquire(self, n: int) -> int: ...

    def due(self) -> bool:
        """True if ``publish`` would publish now: only then is the demand read."""

    def release(self, n: int) -> None: ...

    def publish(self, used_tokens: int, demand_tokens: int) -> int:
        """Heartbeat with demand; returns the current target in slabs."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    grow_ahead_blocks: int  # map another slab when fewer free blocks than this are online
    sync_grow: bool = True  # fallback: map on the scheduler thread when a step cannot fit
    retry_after_fail_s: float = 1.0  # after cuMemCreate failed, wait before trying again
    retry_after_refusal_s: float = 0.05  # after the lease refused a grow, wait (a ledger
    # transaction each time; the scheduler would otherwise wake the thread every step)


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """Honest usage: capacity counts only ONLINE slabs, not the virtual maximum."""

    online_blocks: int
    free_blocks: int
    held_slabs: int
    target_slabs: int
    mapped_bytes: int
    grows: int
    sync_grows: int
    shrinks: int
    map_failures: int
    map_seconds: float
    unmap_seconds: float

    @property
    def usage(self) -> float:
        return block_usage(self.online_blocks, self.free_blocks)


def block_usage(online_blocks: int, free_blocks: int) -> float:
    """vLLM's KV usage gauge over the ONLINE blocks (block 0 is vLLM's null block)."""
    return min(1.0, max(0.0, 1 - free_blocks / max(online_blocks - 1, 1)))


class SlabEngine:
    def __init__(self, layout: KvLayout, mapper: Mapper, view: BlockPoolView, lease: Lease,
                 config: EngineConfig, demand: Callable[[], tuple[int, int]],
                 clock: Callable[[], float] = time.monotonic, online: int = 1) -> None:
        self.layout, self.mapper, self.view, self.lease = layout, mapper, view, lease
        self.config, self.demand, self.clock = config, demand, clock
        self.slabs = SlabMap(layout.num_slabs, layout.blocks_per_slab, pinned=1, online=online)
        self.lock = threading.RLock()
        self.target = 1
        self._failed_at: float | None = None
        self._refused_at: float | None = None  # the lease refused a background grow
        self._n = {"grows": 0, "sync_grows": 0, "shrinks": 0, "map_failures": 0}
        self._t = {"map": 0.0, "unmap": 0.0}
        self._free_low = view.num_free()  # fewest free blocks since the queue was sorted
        self.wake = threading.Event()  # set: the background thread has work now

    # -- scheduler thread (or under lock) ------------------------------------------------
    def service(self) -> None:
        """Attach mapped slabs, start or cancel drains toward the target, advance drains."""
        with self.lock:
            for s in self.slabs.attach_ready():
                self._unpark(s)
            shrinking = self.slabs.count(SlabState.DRAINING, SlabState.QUIESCING,
                                         SlabState.UNMAPPING)
            excess = self.slabs.held - shrinking - max(self.target, 1)
            while excess < 0 and self.slabs.slabs_in(SlabState.DRAINING):
                s = self.slabs.cancel_drain()
                if s is None:
                    break
                self._unpark(s)
                excess += 1
            if excess > 0:
                used = self.view.used_per_slab(self.layout.blocks_per_slab, self.layout.num_slabs)
                for _ in range(excess):
                    s = self.slabs.begin_drain(used)
                    if s is None:
                        break
                    self._park_free(list(self.layout.blocks_of_slab(s)))
            self.slabs.drained()
            self.slabs.quiesced()
            self._compact()
            if not self.wake.is_set() and self._should_grow():
                self.wake.set()

    def _compact(self) -> None:
        """Once a slab's worth of blocks has been freed since the free queue was last sorted
        (a burst ended), sort it by slab. vLLM queues freed blocks in the order its requests
        end, so new requests would take blocks scattered over every slab the burst used, and
        a slab with one running block cannot drain: on the H100 (2026-11-26, s4) an engine
        whose flood ended kept 23 slabs for 10 slabs of new requests, 13 % of the pool, until
        they finished. Sorted, new blocks come from the lowest slabs and drains (which take
        the highest of the emptiest) find the rest empty. Sorting reorders prefix-cache
        eviction among free blocks (slab order, not LRU) until the next burst."""
        free = self.view.num_free()
        if free - self._free_low >= self.layout.blocks_per_slab:
            self.view.sort_free(self.slabs.top() * self.layout.blocks_per_slab)
            self._free_low = free
        else:
            self._free_low = min(self._free_low, free)

    def on_blocks_freed(self, block_ids: list[int]) -> None:
        """Blocks just returned to the free queue: park those of draining slabs."""
        with self.lock:
            if not self.slabs.draining:  # the steady state: no per-block work
                return
            mine = [b for b in block_ids if self.slabs.should_park(b)]
            if mine:
                self._park_free(mine)

    def draining_slabs(self) -> tuple[int, ...]:
        """DRAINING slabs, ascending (under ``lock``)."""
        return tuple(self.slabs.slabs_in(SlabState.DRAINING))

    def draining_blocks(self) -> frozenset[int]:
        """Block ids of DRAINING slabs: a request holding one keeps its slab from emptying."""
        per = self.layout.blocks_per_slab
        return frozenset(b for s in self.draining_slabs() for b in range(s * per, (s + 1) * per))

    def on_step_scheduled(self) -> None:
        with self.lock:
            self.slabs.on_step_scheduled()

    def on_step_finished(self) -> None:
        with self.lock:
            self.slabs.on_step_finished()

    def grow_sync(self) -> bool:
        """Fallback when a step does not fit: map one slab now. True if blocks were added."""
        if not self.config.sync_grow or self._backing_off():
            return False
        with self.lock:
            if self.slabs.held >= self.layout.num_slabs or self.lease.acquire(1) == 0:
                return False
            if not self._map_one():
                return False
            self._n["sync_grows"] += 1
            for s in self.slabs.attach_ready():
                self._unpark(s)
            return True

    # -- background thread -----------------------------------------------------------------
    def background_once(self) -> None:
        """Publish demand, read the target, map ahead of demand, unmap quiesced slabs."""
        if self.lease.due():
            used, want = self.demand()
            self.target = self.lease.publish(used, want)
        self.service()
        for s in self._take(SlabState.UNMAPPING):
            t0 = self.clock()
            self.mapper.unmap_slab(s)
            self._t["unmap"] += self.clock() - t0
            with self.lock:
                self.slabs.unmap_done(s)
                self._n["shrinks"] += 1
            self.lease.release(1)
        if self._should_grow():
            if self.lease.acquire(1) == 1:
                self._refused_at = None
                if self._map_one():
                    self._n["grows"] += 1
                self.service()
            else:  # the pool is full for now: ask again later, not every scheduler wake-up
                self._refused_at = self.clock()

    def busy(self) -> bool:
        """The background thread has work beyond heartbeats: a slab maps, attaches, drains,
        quiesces or unmaps, a drain is due (more held than targeted) or a grow is."""
        with self.lock:
            sm = self.slabs
            return bool(sm.count(SlabState.MAPPING, SlabState.READY, SlabState.DRAINING,
                                 SlabState.QUIESCING, SlabState.UNMAPPING)
                        or sm.held > max(self.target, 1) or self._should_grow())

    def usage(self) -> float:
        """``EngineMetrics.usage`` without the rest (vLLM reads it every step)."""
        with self.lock:
            return block_usage(self.slabs.online * self.layout.blocks_per_slab,
                               self.view.num_free())

    def used_blocks(self) -> int:
        """Blocks holding tokens, draining slabs included (not the null block).

        Counting ONLINE slabs only (as vLLM's usage gauge does) missed the blocks of requests
        still running in DRAINING slabs: the ledger then under-reported what engines hold.
        """
        with self.lock:
            return max(0, self.slabs.unparked_blocks - self.view.num_free() - 1)

    def metrics(self) -> EngineMetrics:
        with self.lock:
            return EngineMetrics(
                online_blocks=self.slabs.online * self.layout.blocks_per_slab,
                free_blocks=self.view.num_free(), held_slabs=self.slabs.held,
                target_slabs=self.target, mapped_bytes=self.slabs.held * self.layout.slab_bytes,
                map_seconds=self._t["map"], unmap_seconds=self._t["unmap"], **self._n)

    # -- internals -------------------------------------------------------------------------
    def _should_grow(self) -> bool:
        with self.lock:
            pending = self.slabs.count(SlabState.MAPPING, SlabState.READY, SlabState.DRAINING)
            return (not pending and not self._backing_off()
                    and self.slabs.held < self.layout.num_slabs
                    and self.view.num_free() < self.config.grow_ahead_blocks)

    def _map_one(self) -> bool:
        """Map the lowest OFFLINE slab (lease already acquired; lock may or may not be held)."""
        with self.lock:
            s = self.slabs.begin_map()
        if s is None:
            self.lease.release(1)
            return False
        t0 = self.clock()
        try:
            self.mapper.map_slab(s)
        except MapError:
            with self.lock:
                self.slabs.map_done(s, ok=False)
                self._n["map_failures"] += 1
                self._failed_at = self.clock()
            self.lease.release(1)
            return False
        self._t["map"] += self.clock() - t0
        with self.lock:
            self.slabs.map_done(s, ok=True)
        return True

    def _backing_off(self) -> bool:
        """Waiting before the next grow: after cuMemCreate failed, or the lease refused."""
        now = self.clock()
        return ((self._failed_at is not None
                 and now - self._failed_at < self.config.retry_after_fail_s)
                or (self._refused_at is not None
                    and now - self._refused_at < self.config.retry_after_refusal_s))

    def _take(self, state: SlabState) -> list[int]:
        with self.lock:
            return self.slabs.slabs_in(state)

    def _unpark(self, slab: int) -> None:
        """A slab's blocks into the free queue; not a freed burst (``_compact``)."""
        before = self.view.num_free()
        self.view.unpark(self.layout.blocks_of_slab(slab))
        self._free_low += self.view.num_free() - before

    def _park_free(self, block_ids: list[int]) -> None:
        for b in self.view.take_free(block_ids):
            self.slabs.park(b)
