"""Price-and-dive: an integer GPU mix near the configuration LP's optimum (a warm start).

The columns that the bound generated (configuration.py) fit the LP's fractional optimum; an
integer programme over them alone (rounding.py) often has no mix at the bound's cost (the
19-model instance: 9 GPUs found, none of 8, against a bound of 7.8). A dive aims at the
cheapest achievable cost above the LP, then the next ones up to the cap. It first holds a
model whose TP degrees the LP mixes with fractional engines to its dominant degree (largest
model first), then fixes, one at a time, the column closest to a whole GPU (lambda_c >=
ceil(lambda_c)), generating new columns around each fixing so the LP repairs what the
fixings force. A fixing that lifts the LP above the target is tried down (lambda_c <=
floor), then undone and that column passed over (a few times at most). Whole GPUs whose TP
ranks are not whole engines of equal traffic get that degree banned, and the dive goes on.
Whenever the columns at whole GPU counts leave at most complete.MAX_GPUS GPUs within the
cap, a small exact model tries to fill those GPUs with new configurations (complete.py):
the tail of a dive, where the LP sits at the target with a few fractional columns, is where
fixings fail. It ends with a mix that mixplace.py can place (or that the rounding
programme repairs), or with nothing (and the last LP solution, rounded, as a hint for the
rounding programme); with time left it restarts from a random subset of the columns. A
heuristic: it bounds nothing.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from fineserve.planner.bounds import gpu_groups
from fineserve.planner.complete import complete, kept_part
from fineserve.planner.master import (
    MAX_UNITS,
    Allowed,
    Column,
    LpFailed,
    Master,
    Mix,
    allows,
    generate,
    replicas,
    seed_columns,
)
from fineserve.planner.mixplace import place_mix
from fineserve.planner.variables import IlpData

MAX_BACKTRACKS = 8  # undone fixings before the dive gives up
EPS = 1e-6  # lambda_c within EPS of an integer counts as integer
SAME_TRAFFIC = 0.02  # ranks of one TP engine may differ by this share of the model's rate
# memory resolution of the dive's pricing: the finest, as the bound's. Coarser pricing is
# faster but misses the nearly full configurations the last fixings need (measured on the
# 19-model instance: the dive fails at 1024 and 2048 units, succeeds at 4096; pricing
# coarsely between fixings and finely only on overshoot fails too)
DIVE_UNITS = MAX_UNITS
RESTART_KEEP = 0.3  # share of the columns seen that a restarted dive starts from
RESTART_SEEDS = 1_000_003  # restarts of one settings seed: consecutive RNG seeds
COMPLETE_S = 1.0  # per completion of a mix's last GPUs (complete.py)


@dataclass(frozen=True, slots=True)
class Dive:
    """What a dive left: every column its master held, and the integer mix it reached."""

    pool: tuple[Column, ...]
    mix: Mix  # () if the dive failed
    near: Mix = ()  # if it failed: the last LP solution within the cap, rounded


def dive(d: IlpData, pool: tuple[Column, ...], *, cost_cap: int, seconds: float,
         allowed: Allowed = None) -> Dive:
    """Dive for an integer mix of cost <= ``cost_cap`` (ILP cost units), within ``seconds``,
    starting from the columns of ``pool`` (and one seed column per option). Aims at the
    cheapest cost a set of GPUs can have above the root LP first, then the next ones: a
    dive that may drift up to the cap seldom lands below it. A failed dive restarts, while
    time is left, from a random RESTART_KEEP of ``pool`` (of the columns seen so far if
    ``pool`` is empty), drawn from the settings' seed: runs repeat."""
    deadline = time.perf_counter() + seconds
    seen = dict.fromkeys(pool)
    start, near, attempt = pool, (), 0
    while True:
        found = _dive_from(d, start, cost_cap, deadline, allowed)
        seen.update(dict.fromkeys(found.pool))
        if found.mix:
            return Dive(tuple(seen), found.mix)
        near = near or found.near
        if time.perf_counter() >= deadline:
            return Dive(tuple(seen), (), near)
        # the LP's optimum is degenerate: which fixings succeed depends on the columns its
        # master holds (19-model instance, 1592da0 profiles: the bound's 353 columns fail
        # every time, about half of the random 30% subsets reach 8 GPUs)
        # seeded from the settings (default 0: the subsets measured in the benchmarks)
        rng = random.Random(RESTART_SEEDS * d.inst.settings.seed + attempt)
        attempt += 1
        start = tuple(c for c in pool or tuple(seen) if rng.random() < RESTART_KEEP)


def _dive_from(d: IlpData, pool: tuple[Column, ...], cost_cap: int, deadline: float,
               allowed: Allowed) -> Dive:
    """One dive from a fresh master holding ``pool``, at each target cost in turn."""
    master = Master(d, False, None)
    for col in [*seed_columns(d, allowed), *pool]:
        if all(allows(allowed, m, i) for m, i, _ in col.ranks):
            master.add(col)
    try:
        root = generate(master, deadline, allowed, DIVE_UNITS)
    except LpFailed:
        return Dive(tuple(master.cols), ())
    step = math.gcd(*{k[1] for k in gpu_groups(d)})
    target = max(step, math.ceil(root / step - EPS) * step)
    first_near: Mix = ()
    while target <= cost_cap and time.perf_counter() < deadline:
        for col in list(master.fixed):
            master.fix(col)  # release the previous attempt's fixings
        mix, near = _dive_once(d, master, min(target, cost_cap), deadline, allowed)
        if mix:
            return Dive(tuple(master.cols), mix)
        first_near = first_near or near
        target += step
    return Dive(tuple(master.cols), (), first_near)


def _dive_once(d: IlpData, master: Master, cap: int, deadline: float, allowed: Allowed
               ) -> tuple[Mix, Mix]:
    """One dive from the master's root: settle TP degrees, then fix columns. Returns the
    integer mix (or ()) and the last LP solution within the cap, rounded."""
    near: Mix = ()
    base = allowed
    allowed = _settle_tp(d, master, deadline, allowed)
    passed: set[Column] = set()
    completed: set[Mix] = set()  # kept parts already tried
    tries: list[tuple[float, float]] = []  # bounds still to try on the column being fixed
    col: Column | None = None
    before = (0.0, math.inf)  # its bounds before this fixing
    backtracks = 0
    while time.perf_counter() < deadline:
        try:
            value = generate(master, deadline, allowed, DIVE_UNITS)
        except LpFailed:
            break
        if value > cap + EPS:
            if col is None or backtracks >= MAX_BACKTRACKS:
                break
            backtracks += 1
            if tries:  # rounding up overshot: round down instead
                master.fix(col, *tries.pop())
                continue
            master.fix(col, *before)  # both overshot: undo, and pass the column over
            passed.add(col)
            col = None
            continue
        lam = master.values()
        near = tuple((c, round(x)) for c, x in lam.items() if round(x) > 0)
        frac = [(c, x) for c, x in lam.items() if abs(x - round(x)) > EPS]
        if not frac:
            odd = _odd_engines(d, lam)
            if not odd:
                return near, near
            # whole GPUs, but a TP engine short of ranks: drop those degrees and go on (the
            # model's other degrees allowed again, should settling have dropped them)
            models = {m for m, _ in odd}
            again = frozenset((m, i) for m in models for i in range(len(d.options[m]))
                              if allows(base, m, i))
            allowed = _ban(d, master, again | allowed if allowed is not None else None, odd)
            col, tries = None, []
            continue
        mix = _complete(d, master, kept_part(lam), cap, deadline, completed)
        if mix:
            return mix, mix
        open_ = [(c, x) for c, x in frac if c not in passed]
        if not open_:
            break
        # the column closest to a whole GPU (ties: the most used); fixing the heaviest
        # columns first (first-fit decreasing's order) failed on the 19-model instance
        col, x = max(open_, key=lambda cx: (cx[1] - math.floor(cx[1]), cx[1]))
        before = master.fixed.get(col, (0.0, math.inf))
        tries = [(before[0], math.floor(x))]
        master.fix(col, math.ceil(x), before[1])
    return (), near


def _complete(d: IlpData, master: Master, kept: Mix, cap: int, deadline: float,
              completed: set[Mix]) -> Mix:
    """The kept part of the LP solution completed to a mix that places (complete.py), or
    (); each kept part is tried once per dive. New columns join the master."""
    if kept in completed or deadline - time.perf_counter() < 0.1:
        return ()
    completed.add(kept)
    mix = complete(d, kept, cap, min(COMPLETE_S, deadline - time.perf_counter()))
    if mix is None or place_mix(d, mix) is None:
        return ()
    for c, _ in mix:
        master.add(c)
    return mix


def _settle_tp(d: IlpData, master: Master, deadline: float, allowed: Allowed) -> Allowed:
    """Fix a model's TP degree to the one carrying most of its engines in the LP, while
    the LP mixes degrees with fractional engines (the engine-choice branching of
    branch-and-price, greedily): those are what the column dive cannot make whole. Columns
    of other degrees are bounded to 0; returns the options still allowed."""
    while time.perf_counter() < deadline:
        try:
            generate(master, deadline, allowed, DIVE_UNITS)
        except LpFailed:
            break
        share: dict[str, dict[int, float]] = {}
        for c, x in master.values().items():
            for m, i, _ in c.ranks:
                t = d.options[m][i].tp
                share.setdefault(m, {}).setdefault(t, 0.0)
                share[m][t] += x / t
        # a model that needs several engines may well mix degrees in a plan: leave it be
        mixed = {m: max(s, key=s.get) for m, s in share.items()
                 if replicas(d, m) == 1 and sum(1 for v in s.values() if v > EPS) > 1
                 and any(abs(v - round(v)) > EPS for v in s.values())}
        if not mixed:
            break
        # one model per round, the largest first (as first-fit decreasing): the LP then
        # re-balances the others around it
        big = max(mixed, key=lambda m: min(d.w[m, i] * d.options[m][i].tp
                                           for i in range(len(d.options[m]))))
        allowed = _ban(d, master, allowed, {(big, o.tp) for o in d.options[big]
                                            if o.tp != mixed[big]})
    return allowed


def _odd_engines(d: IlpData, lam: dict[Column, float]) -> set[tuple[str, int]]:
    """(model, degree) whose ranks in the mix do not make whole engines, or whose ranks'
    traffic differs: the LP counts each rank's own, a TP engine carries one (its least)."""
    ranks: dict[tuple[str, int], list[int]] = {}
    for c, x in lam.items():
        for m, i, phi in c.ranks:
            ranks.setdefault((m, i), []).extend([phi] * round(x))
    return {(m, d.options[m][i].tp) for (m, i), phis in ranks.items()
            if len(phis) % d.options[m][i].tp
            or max(phis) - min(phis) > SAME_TRAFFIC * d.lam[m]}


def _ban(d: IlpData, master: Master, allowed: Allowed, banned: set[tuple[str, int]]
         ) -> frozenset[tuple[str, int]]:
    """Allowed options without the (model, degree) pairs in ``banned``; their columns are
    bounded to 0, and columns held at 0 that are allowed (again) are released - pricing
    would otherwise keep proposing them, in vain."""
    keep = frozenset((m, i) for m in d.models for i, o in enumerate(d.options[m])
                     if allows(allowed, m, i) and (m, o.tp) not in banned)
    for c in master.cols:
        if not all(allows(keep, m, i) for m, i, _ in c.ranks):
            master.fix(c, 0, 0)
        elif master.fixed.get(c) == (0, 0):
            master.fix(c)
    return keep
