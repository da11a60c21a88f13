"""Greedy headroom improver on a fixed GPU set: raise the bottleneck model's capacity.

Relax-and-pack's packing ILP can fail on large instances (100 models: no packing of the
aggregate's engines is found in time), leaving the greedy warm start, whose headroom no
stage improves. This local search costs a second or less and never adds a GPU: while time
is left it takes the model with the least capacity over rate and either adds a replica on
GPUs already in use or moves one of its engines to a higher SM share on the same GPUs,
checking every per-GPU row of the ILP (SM, memory with pooled KV for the traffic each engine
carries when routed in proportion to capacity, engine count, one engine of a model per GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fineserve.planner.options import TpGroup
from fineserve.planner.schema import Plan
from fineserve.planner.variables import H_SCALE, IlpData

Placed = list[tuple[str, int, TpGroup, int]]  # (model, option index, group, flow milli-rps)


@dataclass(frozen=True, slots=True)
class Move:
    """A change to one model's engines: ``drop`` (index into its engines, or None) replaced
    by option ``option`` on ``group`` (an upgrade when drop is set, a new replica if not)."""

    model: str
    option: int
    group: TpGroup
    drop: int | None
    headroom: int  # the model's capacity over rate after the move, x1000
    use: float  # resources the move takes, in fractions of a GPU (SM + memory)


def placed_from_plan(d: IlpData, plan: Plan) -> Placed | None:
    """``plan``'s engines as (model, option, group, flow); None if one has no ILP option."""
    out: Placed = []
    for e in plan.engines:
        gpu_type = d.gpus[e.gpus[0]].spec.name
        i = next((j for j, o in enumerate(d.options[e.model])
                  if (o.gpu_type, o.tp, o.sm_pct, o.max_batch)
                  == (gpu_type, e.tp, e.sm_pct, e.max_batch)), None)
        u = next((u for u in d.groups.get(e.tp, ()) if u.gpus == e.gpus), None)
        if i is None or u is None:
            return None
        out.append((e.model, i, u, round(e.rate_rps * 1000)))
    return out


class _State:
    """Engines (option, group, flow) per model and per-GPU totals. A model's traffic keeps
    the split it came with until one of its engines changes; then it is split in proportion
    to capacity (rounded up, so memory is checked conservatively)."""

    def __init__(self, d: IlpData, placed: Placed) -> None:
        self.d = d
        self.engines: dict[str, list[tuple[int, TpGroup, int]]] = {m: [] for m in d.models}
        for m, i, u, f in placed:
            self.engines[m].append((i, u, f))
        self.used = {g for _, _, u, _ in placed for g in u.gpus}
        self.sm = dict.fromkeys(self.used, 0)
        self.mem = dict.fromkeys(self.used, 0)
        self.count = dict.fromkeys(self.used, 0)
        self.on: dict[int, set[str]] = {g: set() for g in self.used}  # models on g
        for m, mine in self.engines.items():
            self._add(m, mine, 1)

    def split(self, m: str, new: list[tuple[int, TpGroup]]) -> list[tuple[int, TpGroup, int]]:
        """``new`` with model m's traffic split in proportion to capacity."""
        d = self.d
        cap = sum(d.mu[m, i] for i, _ in new) or 1
        return [(i, u, -(-d.lam[m] * d.mu[m, i] // cap)) for i, u in new]

    def _load(self, m: str, mine) -> dict[int, tuple[int, int]]:
        """SM and memory (KiB) that model m's engines ``mine`` put on each of their GPUs."""
        d = self.d
        out: dict[int, tuple[int, int]] = {}
        for i, u, flow in mine:
            mem = d.w[m, i] + (d.kappa[m, i] * flow if d.pooled else 0)
            for g in u.gpus:
                s0, m0 = out.get(g, (0, 0))
                out[g] = (s0 + d.sm[m, i], m0 + mem)
        return out

    def _add(self, m: str, mine, sign: int) -> None:
        for g, (s, mem) in self._load(m, mine).items():
            self.sm[g] += sign * s
            self.mem[g] += sign * mem
        for _, u, _ in mine:
            for g in u.gpus:
                self.count[g] += sign
                (self.on[g].add if sign > 0 else self.on[g].discard)(m)

    def headroom(self, m: str) -> int:
        d = self.d
        return min(d.h_cap, H_SCALE * sum(d.mu[m, i] for i, *_ in self.engines[m]) // d.lam[m])

    def fits(self, m: str, new: list[tuple[int, TpGroup]]) -> bool:
        """Whether replacing m's engines by ``new`` (traffic split in proportion to
        capacity) keeps every per-GPU row."""
        d = self.d
        old, now = self._load(m, self.engines[m]), self._load(m, self.split(m, new))
        for g in set(old) | set(now):
            if g not in self.used:
                return False
            s0, m0 = old.get(g, (0, 0))
            s1, m1 = now.get(g, (0, 0))
            if s1 > s0 and self.sm[g] - s0 + s1 > d.sm_cap:
                return False
            if m1 > m0 and self.mem[g] - m0 + m1 > d.mem_cap[g]:
                return False
        return True

    def plain(self, m: str) -> list[tuple[int, TpGroup]]:
        return [(i, u) for i, u, _ in self.engines[m]]

    def apply(self, mv: Move) -> None:
        mine = self.plain(mv.model)
        if mv.drop is not None:
            mine.pop(mv.drop)
        self.set(mv.model, self.split(mv.model, [*mine, (mv.option, mv.group)]))

    def set(self, m: str, new: list[tuple[int, TpGroup, int]]) -> None:
        """Replace model m's engines by ``new``, updating the per-GPU totals."""
        self._add(m, self.engines[m], -1)
        self._add(m, new, 1)
        self.engines[m] = list(new)

    def placed(self) -> Placed:
        return [(m, i, u, f) for m, mine in self.engines.items() for i, u, f in mine]


def _moves(st: _State, m: str) -> list[Move]:
    """Every single-engine change of model m that raises its capacity and fits."""
    d = st.d
    mine = st.plain(m)
    base = sum(d.mu[m, i] for i, _ in mine)
    cap_mem = max(d.mem_cap.values())
    out = []
    for j, o in enumerate(d.options[m]):
        use = o.tp * (d.sm[m, j] / d.sm_cap + d.w[m, j] / cap_mem)
        for _, u in d.groups_for(o):  # a new replica on GPUs in use, none of m's
            if not all(g in st.used and m not in st.on[g]
                       and st.count[g] < d.inst.settings.max_engines_per_gpu for g in u.gpus):
                continue
            new = [*mine, (j, u)]
            if st.fits(m, new):
                h = H_SCALE * (base + d.mu[m, j]) // d.lam[m]
                out.append(Move(m, j, u, None, h, use))
        for e, (i, u) in enumerate(mine):  # a larger SM share in place
            old = d.options[m][i]
            if (o.tp, o.gpu_type) != (old.tp, old.gpu_type) or d.mu[m, j] <= d.mu[m, i]:
                continue
            new = [*mine[:e], *mine[e + 1:], (j, u)]
            if st.fits(m, new):
                h = H_SCALE * (base - d.mu[m, i] + d.mu[m, j]) // d.lam[m]
                out.append(Move(m, j, u, e, h, use - old.tp * (
                    d.sm[m, i] / d.sm_cap + d.w[m, i] / cap_mem)))
    return out


def improve_headroom(d: IlpData, placed: Placed, seconds: float) -> Placed:
    """Raise the minimum capacity-over-rate of ``placed`` on its own GPUs, greedily.

    Each step lifts the bottleneck model: to above the next-lowest model's headroom with the
    move that takes the least resources, else as high as one move gets it. Stops when the
    bottleneck has no move that fits, or after ``seconds``."""
    end = time.perf_counter() + seconds
    st = _State(d, placed)
    if not st.used:
        return placed
    while time.perf_counter() < end:
        ranked = sorted(d.models, key=st.headroom)
        m = ranked[0]
        now = st.headroom(m)
        if now >= d.h_cap:
            break
        nxt = st.headroom(ranked[1]) if len(ranked) > 1 else d.h_cap
        moves = [mv for mv in _moves(st, m) if mv.headroom > now]
        if not moves:
            if _add_with_evictions(st, m, now, nxt):
                continue
            break
        enough = [mv for mv in moves if mv.headroom > nxt]
        st.apply(min(enough, key=lambda mv: (mv.use, -mv.headroom)) if enough
                 else max(moves, key=lambda mv: (mv.headroom, -mv.use)))
    return st.placed()


MAX_EVICTIONS = 3  # engines moved off a GPU to make room for a new replica


def _add_with_evictions(st: _State, m: str, now: int, nxt: int) -> bool:
    """Add a single-GPU replica of m on a GPU in use after moving up to MAX_EVICTIONS
    single-GPU engines of other models from it to other GPUs in use (largest first, each to
    the fullest GPU it fits). Options are tried from the least resources among those that
    lift m above ``nxt``, then by headroom. Applies the first that works; False if none."""
    d = st.d
    base = sum(d.mu[m, i] for i, _ in st.plain(m))
    cap_mem = max(d.mem_cap.values())
    ranked = []
    for j, o in enumerate(d.options[m]):
        h = H_SCALE * (base + d.mu[m, j]) // d.lam[m]
        if o.tp == 1 and h > now:
            use = d.sm[m, j] / d.sm_cap + d.w[m, j] / cap_mem
            ranked.append(((h <= nxt, use if h > nxt else -h), j))
    for _, j in sorted(ranked):
        for _, u in d.groups_for(d.options[m][j]):
            g = u.gpus[0]
            if g in st.used and m not in st.on[g] and _evict_for(st, m, j, u):
                return True
    return False


def _evict_for(st: _State, m: str, j: int, u: TpGroup) -> bool:
    """Make room for option j of m on u's GPU by moving engines off it, then add it; leaves
    the state unchanged and returns False when that does not work."""
    d = st.d
    g = u.gpus[0]
    per_gpu = d.inst.settings.max_engines_per_gpu
    saved: dict[str, list] = {}
    for _ in range(MAX_EVICTIONS + 1):
        if st.count[g] < per_gpu and st.fits(m, [*st.plain(m), (j, u)]):
            st.apply(Move(m, j, u, None, 0, 0.0))
            return True
        residents = sorted(((d.w[m2, i], m2, e, i) for m2, mine in st.engines.items()
                            if m2 != m for e, (i, x, _) in enumerate(mine) if x.gpus == (g,)),
                           reverse=True)
        moved = False
        for _, m2, e, i in residents:
            dest = _destination(st, m2, e, i, g)
            if dest is not None:
                saved.setdefault(m2, list(st.engines[m2]))
                st.apply(Move(m2, i, dest, e, 0, 0.0))
                moved = True
                break
        if not moved:
            break
    for m2, engines in saved.items():
        st.set(m2, engines)
    return False


def _destination(st: _State, m2: str, e: int, i: int, g: int) -> TpGroup | None:
    """The fullest other GPU in use that engine e (option i) of m2 can move to, if any."""
    d = st.d
    per_gpu = d.inst.settings.max_engines_per_gpu
    others = st.plain(m2)
    rest = [*others[:e], *others[e + 1:]]
    best = None
    for g2 in st.used:
        if (g2 == g or m2 in st.on[g2] or st.count[g2] >= per_gpu
                or st.sm[g2] + d.sm[m2, i] > d.sm_cap
                or st.mem[g2] + d.w[m2, i] > d.mem_cap[g2]):
            continue
        if best is not None and d.mem_cap[g2] - st.mem[g2] >= d.mem_cap[best] - st.mem[best]:
            continue
        dest = next(x for _, x in d.groups_for(d.options[m2][i]) if x.gpus == (g2,))
        if st.fits(m2, [*rest, (i, dest)]):
            best = g2
    if best is None:
        return None
    return next(x for _, x in d.groups_for(d.options[m2][i]) if x.gpus == (best,))
