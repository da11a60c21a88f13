"""The pool's shared state: one JSON file per GPU in /dev/shm, changed only under an fcntl lock.

Leases are per-engine slab counts, not index ranges in a shared address space: every engine
maps its own physical granules (``cuMemCreate``) into its own reserved virtual range, so the
pool is a byte budget and the ledger is a counting allocator. The ledger is authoritative in
one direction: an engine acquires a lease *before* it maps memory and releases it *after* it
unmapped, so leased bytes never under-count the physical memory engines hold.

Cross-process safety: every change is a transaction (exclusive ``flock`` on ``<path>.lock``,
read, modify, write a temporary file, ``os.replace``). The kernel drops the lock of a process
that dies, and the rename is atomic, so a SIGKILL at any point leaves either the old or the new
state. A dead engine (pid gone, zombie, or pid reused: start time differs) is reaped and its
lease freed; an engine whose heartbeat stopped but whose process lives still holds its GPU
memory, so it is only marked stale (no further grants, target frozen) until it dies.

Grant rule: engine i may grow while
``held_i + k <= max_i`` and ``k * slab_i <= pool - held_i * slab_i - sum_{j != i} reserved_j``
with ``reserved_j = max(held_j, target_j) * slab_j``: an engine never takes memory targeted to
another (targets include floors), and may borrow memory nobody is targeted for until the
manager's next tick says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from fineserve.runtime.kvslab.errors import FloorsExceedPool, KvSlabError

Alive = Callable[[int, int], bool]


def process_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (0 where /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def pid_alive(pid: int, start_time: int) -> bool:
    """True if ``pid`` runs, is not a zombie, and is the same process (same start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return start_time == 0  # no /proc: trust kill(0)
    if fields[0] in (b"Z", b"X"):
        return False
    return start_time == 0 or int(fields[19]) == start_time


@dataclass(frozen=True, slots=True)
class EngineRegistration:
    """What an engine declares when it joins the pool."""

    engine_id: str
    pid: int
    bytes_per_token: int
    slab_bytes: int
    floor_slabs: int
    max_slabs: int
    slo_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise KvSlabError("engine_id must not be empty")
        for name in ("pid", "bytes_per_token", "slab_bytes"):
            if getattr(self, name) <= 0:
                raise KvSlabError(f"{self.engine_id}: {name} must be > 0")
        if not 0 <= self.floor_slabs <= self.max_slabs:
            raise KvSlabError(f"{self.engine_id}: need 0 <= floor_slabs ({self.floor_slabs}) "
                              f"<= max_slabs ({self.max_slabs})")


@dataclass(frozen=True, slots=True)
class EngineLease:
    """One engine's row in the ledger."""

    engine_id: str
    pid: int
    pid_start: int
    bytes_per_token: int
    slab_bytes: int
    floor_slabs: int
    max_slabs: int
    held_slabs: int
    target_slabs: int
    heartbeat: float
    slo_weight: float = 1.0
    used_tokens: int = 0
    demand_tokens: int = 0
    demand_mean_tokens: float = 0.0
    demand_std_tokens: float = 0.0
    stale: bool = False

    @property
    def held_bytes(self) -> int:
        return self.held_slabs * self.slab_bytes

    @property
    def reserved_bytes(self) -> int:
        """Bytes nobody else may take: held, or targeted if more (held only once stale)."""
        n = self.held_slabs if self.stale else max(self.held_slabs, self.target_slabs)
        return n * self.slab_bytes


@dataclass(frozen=True, slots=True)
class PoolState:
    """A consistent snapshot of the ledger."""

    pool_bytes: int
    engines: tuple[EngineLease, ...] = ()
    generation: int = 0  # bumped by every committed change
    last_tick: float = 0.0  # manager: when targets were last recomputed
    reaped: tuple[str, ...] = ()  # engines whose leases were reclaimed after death (latest 32)

    def engine(self, engine_id: str) -> EngineLease | None:
        return next((e for e in self.engines if e.engine_id == engine_id), None)

    @property
    def held_bytes(self) -> int:
        return sum(e.held_bytes for e in self.engines)

    @property
    def free_bytes(self) -> int:
        return self.pool_bytes - self.held_bytes

    def check_integrity(self) -> None:
        """Raise ``KvSlabError`` if an invariant of the ledger is broken."""
        ids = [e.engine_id for e in self.engines]
        if len(set(ids)) != len(ids):
            raise KvSlabError(f"ledger: duplicate engines {sorted(ids)}")
        for e in self.engines:
            if not 0 <= e.held_slabs <= e.max_slabs:
                raise KvSlabError(f"ledger: {e.engine_id} holds {e.held_slabs} slabs, "
                                  f"outside [0, {e.max_slabs}]")
            if not e.floor_slabs <= e.target_slabs <= e.max_slabs:
                raise KvSlabError(f"ledger: {e.engine_id} target {e.target_slabs} outside "
                                  f"[{e.floor_slabs}, {e.max_slabs}]")
        if self.held_bytes > self.pool_bytes:
            raise KvSlabError(f"ledger: leases {self.held_bytes} B exceed pool {self.pool_bytes} B")
        floors = sum(e.floor_slabs * e.slab_bytes for e in self.engines)
        if floors > self.pool_bytes:
            raise KvSlabError(f"ledger: floors {floors} B exceed pool {self.pool_bytes} B")


def _encode(state: PoolState) -> bytes:
    return json.dumps(dataclasses.asdict(state), separators=(",", ":")).encode()


def _decode(raw: bytes) -> PoolState:
    d = json.loads(raw)
    return PoolState(
        pool_bytes=d["pool_bytes"],
        engines=tuple(EngineLease(**e) for e in d["engines"]),
        generation=d["generation"], last_tick=d["last_tick"], reaped=tuple(d["reaped"]))


class Ledger:
    """Handle on one GPU's ledger file; every method is one locked transaction.

    Methods never block on anything but the lock (held for well under a millisecond) and
    read no clock: callers pass ``now`` (seconds, any monotonic-enough shared clock such as
    ``time.time()``).
    """

    def __init__(self, path: str, alive: Alive = pid_alive) -> None:
        if not os.path.exists(path):
            raise KvSlabError(f"no KV pool ledger at {path}",
                              hint="create it first (Ledger.create) or fix the path")
        self.path = path
        self._alive = alive

    @classmethod
    def create(cls, path: str, pool_bytes: int, *, alive: Alive = pid_alive,
               exist_ok: bool = False) -> Ledger:
        """Create the ledger file for a pool of ``pool_bytes`` (refuses to clobber one)."""
        if pool_bytes <= 0:
            raise KvSlabError(f"pool_bytes must be > 0, got {pool_bytes}")
        with _locked(path):
            if os.path.exists(path):
                if not exist_ok:
                    raise KvSlabError(f"a KV pool ledger already exists at {path}",
                                      hint="remove it if no engine uses it, or pick another")
            else:
                _write(path, PoolState(pool_bytes))
        return cls(path, alive)

    @contextlib.contextmanager
    def _txn(self) -> Iterator[list[PoolState]]:
        """Yield a one-element list holding the state; a replaced state is committed."""
        with _locked(self.path):
            with open(self.path, "rb") as f:
                before = _decode(f.read())
            box = [before]
            yield box
            after = box[0]
            if after is not before:
                after = dataclasses.replace(after, generation=before.generation + 1)
                after.check_integrity()
                _write(self.path, after)

    def version(self) -> tuple[int, int]:
        """Changes with every committed write (each replaces the file): inode and mtime; one
        ``stat``, no lock. Lets a reader skip re-reading an unchanged ledger."""
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns

    def snapshot(self) -> PoolState:
        with _locked(self.path), open(self.path, "rb") as f:
            return _decode(f.read())

    def register(self, reg: EngineRegistration, now: float) -> EngineLease:
        """Join the pool with no lease and target = floor.

        Raises:
            KvSlabError: a live engine already uses ``engine_id``.
            FloorsExceedPool: the floors of all engines would exceed the pool.
        """
        with self._txn() as box:
            st = box[0]
            old = st.engine(reg.engine_id)
            if old is not None and self._alive(old.pid, old.pid_start):
                raise KvSlabError(f"engine {reg.engine_id} is already registered (pid {old.pid})")
            others = tuple(e for e in st.engines if e.engine_id != reg.engine_id)
            floors = sum(e.floor_slabs * e.slab_bytes for e in others)
            if floors + reg.floor_slabs * reg.slab_bytes > st.pool_bytes:
                raise FloorsExceedPool(
                    f"{reg.engine_id}: floor {reg.floor_slabs * reg.slab_bytes} B does not fit: "
                    f"other floors take {floors} of {st.pool_bytes} B",
                    hint="lower the floor or place the engine on another GPU")
            lease = EngineLease(
                reg.engine_id, reg.pid, process_start_time(reg.pid), reg.bytes_per_token,
                reg.slab_bytes, reg.floor_slabs, reg.max_slabs, held_slabs=0,
                target_slabs=reg.floor_slabs, heartbeat=now, slo_weight=reg.slo_weight)
            box[0] = dataclasses.replace(st, engines=(*others, lease))
            return lease

    def deregister(self, engine_id: str) -> None:
        """Leave the pool (after unmapping everything); unknown ids are ignored."""
        with self._txn() as box:
            st = box[0]
            if st.engine(engine_id) is not None:
                box[0] = dataclasses.replace(
                    st, engines=tuple(e for e in st.engines if e.engine_id != engine_id))

    def acquire(self, engine_id: str, want: int, now: float) -> int:
        """Grant up to ``want`` more slabs (see the grant rule above); returns the number."""
        if want < 0:
            raise KvSlabError(f"{engine_id}: acquire wants {want} < 0 slabs")
        with self._txn() as box:
            st, me = box[0], self._require(box[0], engine_id)
            if me.stale or want == 0:
                return 0
            others = sum(e.reserved_bytes for e in st.engines if e.engine_id != engine_id)
            room = (st.pool_bytes - others - me.held_bytes) // me.slab_bytes
            k = max(0, min(want, me.max_slabs - me.held_slabs, room))
            if k:
                box[0] = _with(st, dataclasses.replace(me, held_slabs=me.held_slabs + k,
                                                       heartbeat=now))
            return k

    def release(self, engine_id: str, n: int, now: float) -> int:
        """Return ``n`` slabs (already unmapped); returns the slabs still held."""
        with self._txn() as box:
            st, me = box[0], self._require(box[0], engine_id)
            if not 0 <= n <= me.held_slabs:
                raise KvSlabError(f"{engine_id}: cannot release {n} of {me.held_slabs} slabs")
            box[0] = _with(st, dataclasses.replace(me, held_slabs=me.held_slabs - n,
                                                   heartbeat=now))
            return me.held_slabs - n

    def publish(self, engine_id: str, now: float, *, used_tokens: int, demand_tokens: int,
                demand_mean_tokens: float = 0.0, demand_std_tokens: float = 0.0) -> EngineLease:
        """Heartbeat with fresh demand statistics; returns the engine's row (its target)."""
        with self._txn() as box:
            st, me = box[0], self._require(box[0], engine_id)
            me = dataclasses.replace(
                me, heartbeat=now, used_tokens=used_tokens, demand_tokens=demand_tokens,
                demand_mean_tokens=demand_mean_tokens, demand_std_tokens=demand_std_tokens,
                stale=False)
            box[0] = _with(st, me)
            return me

    def set_targets(self, targets: Mapping[str, int], now: float) -> None:
        """Write the manager's targets (engines not named keep theirs); marks the tick."""
        with self._txn() as box:
            st = box[0]
            rows = tuple(
                e if e.engine_id not in targets or e.stale
                else dataclasses.replace(e, target_slabs=targets[e.engine_id])
                for e in st.engines)
            box[0] = dataclasses.replace(st, engines=rows, last_tick=now)

    def retarget(self, now: float, min_interval_s: float,
                 compute: Callable[[PoolState], Mapping[str, int]]) -> Mapping[str, int] | None:
        """Recompute targets in one transaction if the last tick is ``min_interval_s`` old.

        Any engine (or a manager process) may call this: the lock elects whoever comes first,
        and the others see a fresh ``last_tick`` and skip. Returns the targets written.
        """
        with self._txn() as box:
            st = box[0]
            if now - st.last_tick < min_interval_s:
                return None
            targets = compute(st)
            rows = tuple(
                e if e.engine_id not in targets or e.stale
                else dataclasses.replace(e, target_slabs=targets[e.engine_id])
                for e in st.engines)
            box[0] = dataclasses.replace(st, engines=rows, last_tick=now)
            return targets

    def reap(self, now: float, heartbeat_timeout_s: float) -> tuple[str, ...]:
        """Free the leases of dead engines; mark silent live ones stale. Returns reaped ids."""
        with self._txn() as box:
            st = box[0]
            keep, dead = [], []
            for e in st.engines:
                if not self._alive(e.pid, e.pid_start):
                    dead.append(e.engine_id)
                elif now - e.heartbeat > heartbeat_timeout_s and not e.stale:
                    keep.append(dataclasses.replace(e, stale=True, target_slabs=max(
                        e.floor_slabs, min(e.held_slabs, e.max_slabs))))
                else:
                    keep.append(e)
            if dead or len(keep) != len(st.engines) or any(
                    a is not b for a, b in zip(keep, st.engines, strict=True)):
                box[0] = dataclasses.replace(st, engines=tuple(keep),
                                             reaped=(*st.reaped, *dead)[-32:])
            return tuple(dead)

    @staticmethod
    def _require(st: PoolState, engine_id: str) -> EngineLease:
        e = st.engine(engine_id)
        if e is None:
            raise KvSlabError(f"engine {engine_id} is not registered in the KV pool",
                              hint="its lease may have been reaped; restart the engine")
        return e


def _with(st: PoolState, row: EngineLease) -> PoolState:
    return dataclasses.replace(st, engines=tuple(
        row if e.engine_id == row.engine_id else e for e in st.engines))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _write(path: str, state: PoolState) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(_encode(state))
    os.replace(tmp, path)
