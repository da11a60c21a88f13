"""Greedy headroom improver on a fixed GPU set: lift the bottleneck model's routed headroom.

Relax-and-pack's packing ILP can fail on large instances (100 models: no packing of the
aggregate's engines is found in time), leaving the greedy warm start, whose headroom no
stage improves. This local search costs a second or less and never adds a GPU: while time
is left it takes the model with the least routed headroom (busiest engine's capacity over
its traffic) and re-splits its traffic, moves one of its engines to a higher SM share in
place, or adds a replica on GPUs already in use - if need be after moving a few single-GPU
engines of other models elsewhere, and with the replica taking only part of the traffic
when memory is short. Every change keeps each per-GPU row of the ILP (SM, memory with pooled
KV for the traffic each engine carries, engine count, one engine of a model per GPU) and
moves engines only to GPUs of their option's type.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from fineserve.planner.options import TpGroup
from fineserve.planner.placed import Placed, PlacedEngine
from fineserve.planner.schema import Plan
from fineserve.planner.variables import H_SCALE, IlpData
from fineserve.planner.warmstart import engine_key

Engines = list[tuple[int, TpGroup, int]]  # one model's (option, group, flow milli-rps)


@dataclass(frozen=True, slots=True)
class Move:
    """New engines (with their traffic) for one model."""

    model: str
    engines: tuple[tuple[int, TpGroup, int], ...]
    headroom: int  # the model's routed headroom after the move, x1000
    use: float  # resources the move adds, in fractions of a GPU (SM + memory)


def placed_from_plan(d: IlpData, plan: Plan) -> Placed | None:
    """``plan``'s engines as (model, option, group, flow); None if one has no ILP option.

    Flows are rounded down to milli-rps, then the milli-rps each model's rounding lost go
    to its engines with the largest remainders, so every model routes exactly its rate
    (x1000, rounded up as in the ILP) - the rows the ILP checks."""
    out: Placed = []
    exact: list[float] = []
    for e in plan.engines:
        key = engine_key(d, e)
        if key is None:
            return None
        exact.append(e.rate_rps * 1000)
        out.append(PlacedEngine(e.model, key[0], d.groups[e.tp][key[1]], int(exact[-1])))
    for m in d.models:
        mine = sorted((k for k, p in enumerate(out) if p.model == m),
                      key=lambda k: out[k].flow - exact[k])
        short = d.lam[m] - sum(out[k].flow for k in mine)
        for k in mine[:max(0, short)]:
            out[k] = out[k]._replace(flow=out[k].flow + 1)
    return out


def routed(d: IlpData, m: str, engines: Engines) -> int:
    """Model m's routed headroom (x1000): the busiest engine's capacity over its traffic."""
    return min([d.h_cap] + [H_SCALE * d.mu[m, i] // f for i, _, f in engines if f > 0])


def headroom_of(d: IlpData, placed: Placed) -> int:
    """Minimum routed headroom (x1000) of ``placed`` over every model, with its own split."""
    by_model: dict[str, Engines] = {m: [] for m in d.models}
    for m, i, u, f in placed:
        by_model[m].append((i, u, f))
    return min(routed(d, m, engines) for m, engines in by_model.items())


def proportional(d: IlpData, m: str, options: list[int]) -> list[int]:
    """Model m's rate (x1000) over engines of ``options`` in proportion to capacity: each
    flow rounded down or up (largest remainders up), summing to the rate exactly."""
    cap = sum(d.mu[m, i] for i in options) or 1
    flows = [d.lam[m] * d.mu[m, i] // cap for i in options]
    order = sorted(range(len(options)), key=lambda k: -(d.lam[m] * d.mu[m, options[k]] % cap))
    for k in order[:d.lam[m] - sum(flows)]:
        flows[k] += 1
    return flows


def split_by_capacity(d: IlpData, placed: Placed) -> Placed:
    """``placed`` with each model's traffic split in proportion to capacity (proportional):
    the routed headroom is then the capacity headroom, rounded."""
    out = list(placed)
    for m in {p.model for p in placed}:
        mine = [k for k, p in enumerate(placed) if p.model == m]
        for k, f in zip(mine, proportional(d, m, [placed[k].option for k in mine]),
                        strict=True):
            out[k] = placed[k]._replace(flow=f)
    return out


class _State:
    """Engines (option, group, flow) per model and per-GPU totals. A model's traffic keeps
    the split it came with until one of its engines changes; then it is split in proportion
    to capacity (each flow its exact share rounded down or up: memory checked with the
    flows the plan gets)."""

    def __init__(self, d: IlpData, placed: Placed) -> None:
        self.d = d
        self.engines: dict[str, Engines] = {m: [] for m in d.models}
        for m, i, u, f in placed:
            self.engines[m].append((i, u, f))
        self.used = {g for _, _, u, _ in placed for g in u.gpus}
        self.sm = dict.fromkeys(self.used, 0)
        self.mem = dict.fromkeys(self.used, 0)
        self.count = dict.fromkeys(self.used, 0)
        self.on: dict[int, set[str]] = {g: set() for g in self.used}  # models on g
        for m, mine in self.engines.items():
            self._add(m, mine, 1)

    def split(self, m: str, new: list[tuple[int, TpGroup]], target: int = 0
              ) -> Engines | None:
        """``new`` with model m's traffic split in proportion to capacity (target 0; each flow
        at most its exact share rounded up, so memory is checked conservatively, and the
        flows sum to the rate), or at routed headroom ``target``
        (x1000): every engine but the last at its most for that headroom, the last taking
        the rest - a new replica then holds little KV. None if the target is out of reach."""
        d = self.d
        if not target:
            flows = proportional(d, m, [i for i, _ in new])
            return [(i, u, f) for (i, u), f in zip(new, flows, strict=True)]
        out, left = [], d.lam[m]
        for i, u in new[:-1]:
            f = min(left, H_SCALE * d.mu[m, i] // target)
            out.append((i, u, f))
            left -= f
        i, u = new[-1]
        if left > H_SCALE * d.mu[m, i] // target:
            return None
        return [*out, (i, u, left)]

    def _load(self, m: str, mine: Engines) -> dict[int, tuple[int, int]]:
        """SM and memory (KiB) that model m's engines ``mine`` put on each of their GPUs."""
        d = self.d
        out: dict[int, tuple[int, int]] = {}
        for i, u, flow in mine:
            mem = d.w[m, i] + (d.kappa[m, i] * flow if d.pooled else 0)
            for g in u.gpus:
                s0, m0 = out.get(g, (0, 0))
                out[g] = (s0 + d.sm[m, i], m0 + mem)
        return out

    def _add(self, m: str, mine: Engines, sign: int) -> None:
        for g, (s, mem) in self._load(m, mine).items():
            self.sm[g] += sign * s
            self.mem[g] += sign * mem
        for _, u, _ in mine:
            for g in u.gpus:
                self.count[g] += sign
                (self.on[g].add if sign > 0 else self.on[g].discard)(m)

    def headroom(self, m: str) -> int:
        return routed(self.d, m, self.engines[m])

    def fits(self, m: str, new: Engines) -> bool:
        """Whether replacing m's engines by ``new`` keeps the SM and memory rows of every GPU
        it touches (all in use). Engine count and one engine of a model per GPU are the
        callers' checks, made when they choose the groups."""
        d = self.d
        old, now = self._load(m, self.engines[m]), self._load(m, new)
        for g in set(old) | set(now):
            s0, m0 = old.get(g, (0, 0))
            s1, m1 = now.get(g, (0, 0))
            if s1 > s0 and self.sm[g] - s0 + s1 > d.sm_cap:
                return False
            if m1 > m0 and self.mem[g] - m0 + m1 > d.mem_cap[g]:
                return False
        return True

    def fitting(self, m: str, new: list[tuple[int, TpGroup]], now: int, nxt: int
                ) -> Engines | None:
        """``new`` with a traffic split that fits: in proportion to capacity, else at a
        headroom a little above the next model's (``nxt``); None if neither fits or lifts
        m above ``now``."""
        prop = self.split(m, new)
        h = routed(self.d, m, prop)
        if h > now and self.fits(m, prop):
            return prop
        target = max(now + 1, nxt + max(1, nxt // 50))
        if target >= h:
            return None
        low = self.split(m, new, target)
        return low if low is not None and self.fits(m, low) else None

    def plain(self, m: str) -> list[tuple[int, TpGroup]]:
        return [(i, u) for i, u, _ in self.engines[m]]

    def apply(self, mv: Move) -> None:
        self.set(mv.model, list(mv.engines))

    def set(self, m: str, new: Engines) -> None:
        """Replace model m's engines by ``new``, updating the per-GPU totals."""
        self._add(m, self.engines[m], -1)
        self._add(m, new, 1)
        self.engines[m] = list(new)

    def placed(self) -> Placed:
        return [PlacedEngine(m, i, u, f) for m, mine in self.engines.items()
                for i, u, f in mine]


def _use(d: IlpData, m: str, i: int) -> float:
    o = d.options[m][i]
    return o.tp * (d.sm[m, i] / d.sm_cap + d.w[m, i] / max(d.mem_cap.values()))


@dataclass(frozen=True, slots=True)
class _Change:
    """One engine change of a model: its engines after it, the group the change is on."""

    engines: tuple[tuple[int, TpGroup], ...]
    group: TpGroup
    use: float  # resources it adds, in fractions of a GPU (SM + memory)


def _changes(st: _State, m: str, *, need_slot: bool) -> Iterator[_Change]:
    """Model m's one-engine changes, option by option: a new replica on a group of GPUs in
    use that hold none of m's engines (with ``need_slot``, each below the engine limit;
    without, evictions are to make room), then each engine of m of the same GPU type and TP
    moved to the option in place if it has more capacity."""
    d = st.d
    mine = st.plain(m)
    per_gpu = d.inst.settings.max_engines_per_gpu
    for j, o in enumerate(d.options[m]):
        for _, u in d.groups_for(o):
            if all(g in st.used and m not in st.on[g]
                   and (not need_slot or st.count[g] < per_gpu) for g in u.gpus):
                yield _Change((*mine, (j, u)), u, _use(d, m, j))
        for e, (i, u) in enumerate(mine):
            old = d.options[m][i]
            if (o.tp, o.gpu_type) == (old.tp, old.gpu_type) and d.mu[m, j] > d.mu[m, i]:
                yield _Change((*mine[:e], *mine[e + 1:], (j, u)), u,
                              _use(d, m, j) - _use(d, m, i))


def _moves(st: _State, m: str, now: int, nxt: int) -> list[Move]:
    """Every change of model m that lifts its headroom above ``now`` and fits: its traffic
    re-split, or one engine change (_changes) with room for it as things stand."""
    out = []

    def consider(new: list[tuple[int, TpGroup]], use: float) -> None:
        engines = st.fitting(m, new, now, nxt)
        if engines is not None:
            out.append(Move(m, tuple(engines), routed(st.d, m, engines), use))

    consider(st.plain(m), 0.0)
    for c in _changes(st, m, need_slot=True):
        consider(list(c.engines), c.use)
    return out


def improve_headroom(d: IlpData, placed: Placed, seconds: float) -> Placed:
    """Raise the minimum routed headroom of ``placed`` on its own GPUs, greedily.

    Each step lifts the bottleneck model: to above the next-lowest model's headroom with the
    change that takes the least resources, else as high as one change gets it; failing both,
    with evictions (_add_with_evictions). Stops when the bottleneck cannot be lifted, or
    after ``seconds``. Returns ``placed`` itself when nothing changed."""
    end = time.perf_counter() + seconds
    st = _State(d, placed)
    if not st.used:
        return placed
    changed = False
    while time.perf_counter() < end:
        ranked = sorted(d.models, key=st.headroom)
        m = ranked[0]
        now = st.headroom(m)
        if now >= d.h_cap:
            break
        nxt = st.headroom(ranked[1]) if len(ranked) > 1 else d.h_cap
        moves = _moves(st, m, now, nxt)
        if not moves:
            if not _add_with_evictions(st, m, now, nxt):
                break
        else:
            enough = [mv for mv in moves if mv.headroom > nxt]
            st.apply(min(enough, key=lambda mv: (mv.use, -mv.headroom)) if enough
                     else max(moves, key=lambda mv: (mv.headroom, -mv.use)))
        changed = True
    return st.placed() if changed else placed


MAX_EVICTIONS = 3  # engines moved off a GPU to make room for a new replica


def _add_with_evictions(st: _State, m: str, now: int, nxt: int) -> bool:
    """Lift m by one engine change (_changes: a larger SM share in place, or a new replica on
    GPUs in use) after moving up to MAX_EVICTIONS single-GPU engines of other models off its
    GPUs to other GPUs in use (largest first, each to the fullest GPU it fits). Changes are
    tried from the least resources; the first that works is applied. False if none does."""
    for c in sorted(_changes(st, m, need_slot=False), key=lambda c: c.use):
        if _evict_for(st, m, list(c.engines), c.group.gpus, now, nxt):
            return True
    return False


def _evict_for(st: _State, m: str, new: list[tuple[int, TpGroup]], gpus: tuple[int, ...],
               now: int, nxt: int) -> bool:
    """Make room on ``gpus`` for m's engines ``new`` by moving other engines off them, then
    apply it; leaves the state unchanged and returns False when that does not work."""
    d = st.d
    per_gpu = d.inst.settings.max_engines_per_gpu
    saved: dict[str, Engines] = {}
    for _ in range(MAX_EVICTIONS + 1):
        if all(st.count[g] < per_gpu or m in st.on[g] for g in gpus):
            engines = st.fitting(m, new, now, nxt)
            if engines is not None:
                st.set(m, engines)
                return True
        residents = sorted(((d.w[m2, i], m2, e, i)
                            for m2, mine in st.engines.items() if m2 != m
                            for e, (i, x, _) in enumerate(mine)
                            if len(x.gpus) == 1 and x.gpus[0] in gpus), reverse=True)
        for *_, m2, e, i in residents:
            moved = _destination(st, m2, e, i, gpus)
            if moved is not None:
                saved.setdefault(m2, list(st.engines[m2]))
                st.set(m2, moved)
                break
        else:
            break
    for m2, engines in saved.items():
        st.set(m2, engines)
    return False


def _destination(st: _State, m2: str, e: int, i: int, avoid: tuple[int, ...]
                 ) -> Engines | None:
    """m2's engines with engine e (option i) moved to the fullest other GPU in use of the
    option's type that it fits on, its traffic unchanged; None if it fits nowhere."""
    d = st.d
    per_gpu = d.inst.settings.max_engines_per_gpu
    engines = list(st.engines[m2])
    flow = engines[e][2]
    need = d.w[m2, i] + (d.kappa[m2, i] * flow if d.pooled else 0)
    gpu_type = d.options[m2][i].gpu_type
    best = None
    for g2 in st.used:
        if (g2 in avoid or d.gpus[g2].spec.name != gpu_type
                or m2 in st.on[g2] or st.count[g2] >= per_gpu
                or st.sm[g2] + d.sm[m2, i] > d.sm_cap
                or st.mem[g2] + need > d.mem_cap[g2]):
            continue
        if best is None or d.mem_cap[g2] - st.mem[g2] < d.mem_cap[best] - st.mem[best]:
            best = g2
    dest = next((x for _, x in d.groups_for(d.options[m2][i]) if x.gpus == (best,)), None)
    if dest is None:
        return None
    return [*engines[:e], *engines[e + 1:], (i, dest, flow)]
