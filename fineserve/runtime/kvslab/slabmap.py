"""Per-engine slab states and drain bookkeeping (pure; the caller holds the lock).

Life of a slab (``SlabState``)::

    OFFLINE --begin_map--> MAPPING --map_done--> READY --attach_ready--> ONLINE
       ^                      |(failed)                                   |  ^
       |                      v                                begin_drain|  |cancel_drain
       +------- unmap_done -- UNMAPPING <--quiesced-- QUIESCING <--drained-- DRAINING

A block whose slab is not ONLINE is *parked*: out of vLLM's free queue, so the scheduler cannot
hand it out. OFFLINE / MAPPING / READY slabs are wholly parked; a DRAINING slab parks each of
its blocks as it becomes free, and is *drained* when all are parked. Its memory may still be
read by a step that was scheduled before the last block was freed (async scheduling keeps one
step in flight), so a drained slab is stamped with the number of steps scheduled so far and
only becomes safe to unmap once that many steps have finished.

The ledger lease covers every slab that is not OFFLINE: acquired before ``begin_map``, released
after ``unmap_done``.
"""

from __future__ import annotations

from enum import IntEnum

from fineserve.runtime.kvslab.errors import KvSlabError


class SlabState(IntEnum):
    OFFLINE = 0  # no memory; blocks parked
    MAPPING = 1  # background thread is mapping and zeroing it
    READY = 2  # mapped, blocks still parked: the scheduler thread attaches it
    ONLINE = 3  # blocks in vLLM's block pool
    DRAINING = 4  # no new allocations; free blocks are parked as they appear
    QUIESCING = 5  # all blocks parked; waiting for in-flight steps to finish
    UNMAPPING = 6  # background thread is unmapping it


class SlabMap:
    """States of ``num_slabs`` slabs of ``blocks_per_slab`` blocks. Slabs below ``online``
    start ONLINE (mapped before vLLM warms up); slabs below ``pinned`` (slab 0 holds vLLM's
    null block) are never drained."""

    def __init__(self, num_slabs: int, blocks_per_slab: int, pinned: int = 1,
                 online: int | None = None) -> None:
        online = pinned if online is None else online
        if num_slabs <= 0 or blocks_per_slab <= 0 or not 0 <= pinned <= online <= num_slabs:
            raise KvSlabError(f"bad slab map: {num_slabs} slabs x {blocks_per_slab} blocks, "
                              f"{pinned} pinned, {online} online")
        self.num_slabs, self.blocks_per_slab, self.pinned = num_slabs, blocks_per_slab, pinned
        self._state = [SlabState.ONLINE] * online + [SlabState.OFFLINE] * (num_slabs - online)
        self._parked = [0] * online + [blocks_per_slab] * (num_slabs - online)
        # slabs per state and blocks parked, kept in step with the lists above: the hooks and
        # the background thread ask every step, and a scan of 320 slabs took ~20 us each time
        self._count = [0] * len(SlabState)
        self._count[SlabState.ONLINE], self._count[SlabState.OFFLINE] = online, num_slabs - online
        self._parked_total = sum(self._parked)
        self._stamp: dict[int, int] = {}
        self.steps_scheduled = 0
        self.steps_finished = 0

    # -- queries -----------------------------------------------------------------------
    def state(self, slab: int) -> SlabState:
        return self._state[slab]

    def slabs_in(self, *states: SlabState) -> list[int]:
        if not self.count(*states):
            return []
        return [s for s, st in enumerate(self._state) if st in states]

    def count(self, *states: SlabState) -> int:
        """Slabs in any of ``states`` (O(1))."""
        return sum(self._count[st] for st in states)

    @property
    def held(self) -> int:
        """Slabs with memory (or about to have / still having it): the ledger lease."""
        return self.num_slabs - self._count[SlabState.OFFLINE]

    @property
    def online(self) -> int:
        return self._count[SlabState.ONLINE]

    @property
    def draining(self) -> bool:
        """Some slab parks its blocks as they are freed (``should_park`` can be true)."""
        return self._count[SlabState.DRAINING] > 0

    @property
    def unparked_blocks(self) -> int:
        """Blocks vLLM may hold, free or in use: ONLINE slabs and the unparked part of
        DRAINING ones (whose blocks in use still hold tokens)."""
        return self.num_slabs * self.blocks_per_slab - self._parked_total

    def top(self) -> int:
        """One past the highest slab that is not OFFLINE (0 if all are): no block at or above
        ``top() * blocks_per_slab`` can be in vLLM's free queue."""
        for s in range(self.num_slabs - 1, -1, -1):
            if self._state[s] is not SlabState.OFFLINE:
                return s + 1
        return 0

    def parked(self, slab: int) -> int:
        return self._parked[slab]

    def should_park(self, block_id: int) -> bool:
        """A freed block goes back to vLLM only if its slab is ONLINE."""
        return self._state[block_id // self.blocks_per_slab] is not SlabState.ONLINE

    # -- growth (background maps, scheduler attaches) ------------------------------------
    def begin_map(self) -> int | None:
        """Lowest OFFLINE slab -> MAPPING (lease already acquired); None if none is left."""
        for s in range(self.pinned, self.num_slabs):
            if self._state[s] is SlabState.OFFLINE:
                self._set(s, SlabState.MAPPING)
                return s
        return None

    def map_done(self, slab: int, ok: bool) -> None:
        self._expect(slab, SlabState.MAPPING)
        self._set(slab, SlabState.READY if ok else SlabState.OFFLINE)

    def attach_ready(self) -> list[int]:
        """READY -> ONLINE; the caller puts these slabs' blocks into the free queue."""
        ready = self.slabs_in(SlabState.READY)
        for s in ready:
            self._set(s, SlabState.ONLINE)
            self._set_parked(s, 0)
        return ready

    # -- shrink (scheduler drains, background unmaps) ------------------------------------
    def begin_drain(self, used_blocks: list[int]) -> int | None:
        """ONLINE unpinned slab with the fewest used blocks (ties: highest) -> DRAINING.

        Args:
            used_blocks: blocks in use (ref count > 0) per slab, indexed by slab.
        """
        online = [s for s in range(self.pinned, self.num_slabs)
                  if self._state[s] is SlabState.ONLINE]
        if not online:
            return None
        s = min(online, key=lambda x: (used_blocks[x], -x))
        self._set(s, SlabState.DRAINING)
        return s

    def cancel_drain(self) -> int | None:
        """Most-parked DRAINING slab back to ONLINE (demand returned); the caller unparks
        its parked blocks. None if nothing drains."""
        draining = self.slabs_in(SlabState.DRAINING)
        if not draining:
            return None
        s = max(draining, key=lambda x: (self._parked[x], -x))
        self._set(s, SlabState.ONLINE)
        self._set_parked(s, 0)
        return s

    def park(self, block_id: int) -> None:
        """A free block of a DRAINING slab was taken out of the free queue."""
        s = block_id // self.blocks_per_slab
        self._expect(s, SlabState.DRAINING)
        if self._parked[s] >= self.blocks_per_slab:
            raise KvSlabError(f"slab {s}: more than {self.blocks_per_slab} blocks parked")
        self._set_parked(s, self._parked[s] + 1)

    def drained(self) -> list[int]:
        """Fully parked DRAINING slabs -> QUIESCING, stamped with the steps scheduled so far."""
        done = [s for s in self.slabs_in(SlabState.DRAINING)
                if self._parked[s] == self.blocks_per_slab]
        for s in done:
            self._set(s, SlabState.QUIESCING)
            self._stamp[s] = self.steps_scheduled
        return done

    def on_step_scheduled(self) -> None:
        self.steps_scheduled += 1

    def on_step_finished(self) -> None:
        if self.steps_finished >= self.steps_scheduled:
            raise KvSlabError("a step finished that was never scheduled")
        self.steps_finished += 1

    def quiesced(self) -> list[int]:
        """QUIESCING slabs no running step can touch any more -> UNMAPPING."""
        safe = [s for s in self.slabs_in(SlabState.QUIESCING)
                if self._stamp[s] <= self.steps_finished]
        for s in safe:
            self._set(s, SlabState.UNMAPPING)
            del self._stamp[s]
        return safe

    def unmap_done(self, slab: int) -> None:
        self._expect(slab, SlabState.UNMAPPING)
        self._set(slab, SlabState.OFFLINE)

    # -- checks ---------------------------------------------------------------------------
    def check_integrity(self) -> None:
        """Raise ``KvSlabError`` if parked counts or stamps disagree with the states."""
        b = self.blocks_per_slab
        for s, st in enumerate(self._state):
            p = self._parked[s]
            if s < self.pinned and st is not SlabState.ONLINE:
                raise KvSlabError(f"pinned slab {s} is {st.name}")
            whole = st in (SlabState.OFFLINE, SlabState.MAPPING, SlabState.READY,
                           SlabState.QUIESCING, SlabState.UNMAPPING)
            if (whole and p != b) or (st is SlabState.ONLINE and p) or not 0 <= p <= b:
                raise KvSlabError(f"slab {s} is {st.name} with {p}/{b} blocks parked")
            if (st is SlabState.QUIESCING) != (s in self._stamp):
                raise KvSlabError(f"slab {s} is {st.name}; stamp {self._stamp.get(s)}")
        if self.steps_finished > self.steps_scheduled:
            raise KvSlabError("more steps finished than scheduled")
        counts = [sum(st is x for st in self._state) for x in SlabState]
        if counts != self._count or sum(self._parked) != self._parked_total:
            raise KvSlabError(f"slab counts {self._count} / {self._parked_total} parked disagree "
                              f"with the states {counts} / {sum(self._parked)}")

    def _set(self, slab: int, state: SlabState) -> None:
        self._count[self._state[slab]] -= 1
        self._count[state] += 1
        self._state[slab] = state

    def _set_parked(self, slab: int, n: int) -> None:
        self._parked_total += n - self._parked[slab]
        self._parked[slab] = n

    def _expect(self, slab: int, state: SlabState) -> None:
        if self._state[slab] is not state:
            raise KvSlabError(f"slab {slab} is {self._state[slab].name}, expected {state.name}")
