"""Finish a dive's mix exactly: its last few GPUs as a small CP-SAT model.

At the tail of a dive (dive.py) the LP often sits at the target cost with a few fractional
columns, and fixing any of them overshoots either way (the LP's optimum is degenerate). The
columns whose GPU count is already whole are kept as they are; the R GPUs left within the
cost cap (R <= MAX_GPUS) are chosen rank by rank here: every per-GPU row of a configuration
(SM share, memory with pooled KV, engine limit, one rank per model) and the demand rows the
kept columns leave open (coverage at H_min, traffic, replica floor), with the ranks of each
TP-t option making whole engines together with the kept ones. New configurations are thus
not limited to the columns generated so far. A heuristic step: None when no completion of
this kept part exists or none is found in time (the dive then goes on fixing columns).
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from fineserve.planner.bounds import SOLVED, gpu_groups, solve
from fineserve.planner.master import Column, L, Mix, replicas
from fineserve.planner.variables import MILLI, IlpData

MAX_GPUS = 2  # at most this many GPUs are left to complete (the model grows with them)
EPS = 1e-6


def kept_part(lam: dict[Column, float]) -> Mix:
    """The columns of an LP solution whose GPU count is whole (and positive)."""
    return tuple((c, round(x)) for c, x in lam.items()
                 if round(x) >= 1 and abs(x - round(x)) <= EPS)


def complete(d: IlpData, kept: Mix, cost_cap: int, seconds: float, workers: int = 1
             ) -> Mix | None:
    """``kept`` plus at most MAX_GPUS new GPUs, cost <= ``cost_cap``, meeting every demand
    row and making whole TP engines; None if there are more GPUs to fill, or none found."""
    groups = gpu_groups(d)
    used = {k: 0 for k in groups}
    for c, n in kept:
        used[c.cls] += n
    left = cost_cap - sum(c.cls[1] * n for c, n in kept)
    if left < 0 or any(used[k] > len(ids) for k, ids in groups.items()):
        return None
    slots = [k for k in sorted(groups) for _ in range(min(len(groups[k]) - used[k],
                                                          left // k[1]))]
    if len(slots) > MAX_GPUS:
        return None
    model = cp_model.CpModel()
    cov = {m: 0 for m in d.models}
    flow = {m: 0 for m in d.models}
    rep = {m: 0 for m in d.models}
    ranks: dict[tuple[str, int], object] = {}
    for c, n in kept:
        for m, i, phi in c.ranks:
            share = L // d.options[m][i].tp
            cov[m] += n * share * d.mu[m, i]
            flow[m] += n * share * phi
            rep[m] += n * share
            ranks[m, i] = ranks.get((m, i), 0) + n
    on, picks, cost = [], [], []
    for r, k in enumerate(slots):
        mem = min(d.mem_cap[g] for g in groups[k])
        on.append(model.new_bool_var(f"on{r}"))
        if r and slots[r - 1] == k:
            model.add(on[r] <= on[r - 1])  # identical GPUs: fill them in order
        cost.append(k[1] * on[r])
        mine = []
        for m in d.models:
            for i, o in enumerate(d.options[m]):
                if o.gpu_type != k[0] or d.sm[m, i] > d.sm_cap or d.w[m, i] > mem:
                    continue
                z = model.new_bool_var("")
                hi = min(d.mu[m, i], d.lam[m]) if d.pooled else 0
                phi = model.new_int_var(0, hi, "")
                model.add(phi <= hi * z)
                model.add_implication(z, on[r])
                mine.append((m, i, z, phi))
        model.add(sum(d.sm[m, i] * z for m, i, z, _ in mine) <= d.sm_cap)
        model.add(sum(d.w[m, i] * z + d.kappa[m, i] * phi for m, i, z, phi in mine) <= mem)
        model.add(sum(z for *_, z, _ in mine) <= d.inst.settings.max_engines_per_gpu)
        for m in d.models:
            model.add_at_most_one(z for mm, _, z, _ in mine if mm == m)
        picks.append(mine)
    new_cov = {m: [] for m in d.models}
    new_flow = {m: [] for m in d.models}
    new_rep = {m: [] for m in d.models}
    by_option: dict[tuple[str, int], list] = {}
    for mine in picks:
        for m, i, z, phi in mine:
            share = L // d.options[m][i].tp
            new_cov[m].append(share * d.mu[m, i] * z)
            new_flow[m].append(share * phi)
            new_rep[m].append(share * z)
            by_option.setdefault((m, i), []).append(z)
    for m in d.models:
        model.add(MILLI * (cov[m] + sum(new_cov[m])) >= L * d.h_min * d.lam[m])
        if d.pooled:
            model.add(flow[m] + sum(new_flow[m]) >= L * d.lam[m])
        model.add(rep[m] + sum(new_rep[m]) >= L * replicas(d, m))
    for key in set(ranks) | set(by_option):
        t = d.options[key[0]][key[1]].tp
        if t == 1:
            continue
        engines = model.new_int_var(0, len(d.gpus) // t, "")
        model.add(ranks.get(key, 0) + sum(by_option.get(key, [])) == t * engines)
    model.add(sum(cost) <= left)
    model.minimize(sum(cost))
    s, status = solve(model, seconds, workers, d.inst.settings.seed)
    if status not in SOLVED:
        return None
    counts = dict(kept)
    for r, mine in enumerate(picks):
        chosen = tuple(sorted((m, i, s.value(phi)) for m, i, z, phi in mine if s.value(z)))
        if chosen:
            col = Column(slots[r], chosen)
            counts[col] = counts.get(col, 0) + 1
    return tuple(counts.items())
