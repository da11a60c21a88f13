"""Pricing for the configuration LP: the most valuable single-GPU configuration.

Given a value per rank of each option (fixed part + per unit of its engine's traffic), find
the set of ranks - at most one per model - within the GPU's SM budget S and memory M
(weights + pooled KV kappa x traffic) of largest value. A dynamic programme over models with
state (ranks, SM used, memory used in Q units) solves a relaxation exactly: memory is counted
in units rounded down and each rank's traffic may use its last unit whole. So its optimum is a
proven upper bound on every configuration's value (what the Lagrangian bounds need), and
backtracking gives a candidate that is then repaired to fit the exact memory and engine rows.
The engine limit E is a state dimension only on request: without it the DP is a coarser
relaxation, still an upper bound, and several times faster.

Per option the best traffic for j KV units is a concave function (linear up to the traffic
cap, then flat), so the max-plus convolution over j is a sliding-window maximum of
V[p] - c p, computed with log(window) vectorised steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

Q_UNITS = 512  # memory resolution of the DP: M / Q_UNITS per unit


@dataclass(frozen=True, slots=True)
class RankItem:
    """One option of one model as the pricing sees it (ILP integer units)."""

    model: str
    option: int
    sm: int  # s_o, percent
    w: int  # w_o, KiB
    kappa: int  # kappa_o, KiB per milli-rps
    hi: int  # traffic cap of the rank's engine, milli-rps (0 in static KV mode)
    fixed: float  # value of the rank
    per: float  # value per milli-rps of the engine's traffic


def _window_max(a: np.ndarray, length: int) -> np.ndarray:
    """a[..., p] := max(a[..., p - length + 1 : p + 1]) (shorter at the start), in place."""
    span = 1
    while span < length:
        step = min(span, length - span)
        # numpy buffers overlapping operands, so this reads the old values
        np.maximum(a[..., step:], a[..., :-step], out=a[..., step:])
        span += step
    return a


def _add_rank(best: np.ndarray, v: np.ndarray, it: RankItem, ds: int, unit: float,
              q: np.ndarray) -> None:
    """best := max(best, v with ``it`` added), in place (v[e, s, q]: best value with at most
    e ranks, SM <= s units, memory <= q units; monotone in each). The added rank moves a
    state by one count layer (if ranks are counted), ``ds`` SM units and its memory; only
    the states it reaches are touched (elsewhere the candidate is -inf)."""
    ne, ns, nq = v.shape
    de = 1 if ne > 1 else 0
    wq = int(it.w // unit)

    def put(src: np.ndarray, dq: int, add) -> None:
        # best[e, s, r] vs src[e - de, s - ds, r - dq] + add
        if ds >= ns or dq >= nq:
            return
        tgt = best[de:, ds:, dq:]
        np.maximum(tgt, src[:ne - de, :ns - ds, :nq - dq] + add, out=tgt)

    if it.per <= 0 or it.hi <= 0:
        put(v, wq, it.fixed)
        return
    full = it.fixed + it.per * it.hi
    if it.kappa <= 0:
        put(v, wq, full)
        return
    c = it.per * unit / it.kappa  # value per KV unit while the traffic cap is not reached
    jmax = int(it.hi * it.kappa // unit)  # units below the cap: j + 1 <= hi kappa / unit
    put(v, wq + jmax, full)  # the engine at its traffic cap
    if jmax == 0 or ds >= ns or wq >= nq:
        return
    # below the cap: over p in [r - jmax + 1, r], v[p] + c (r - p + 1); only the states
    # the shift reads are computed
    n = nq - wq
    slope = _window_max(v[:ne - de, :ns - ds, :n] - c * q[:n], jmax)
    tgt = best[de:, ds:, wq:]
    np.maximum(tgt, slope + it.fixed + (c * (q - wq + 1))[wq:], out=tgt)


def best_configuration(items: list[RankItem], sm_cap: int, mem_cap: int, max_engines: int,
                       units: int = Q_UNITS, count_ranks: bool = False,
                       ) -> tuple[float, list[tuple[RankItem, int]]]:
    """(upper bound on the best configuration's value, a feasible configuration as
    (item, traffic) pairs - possibly empty). Exact rows: sum sm <= sm_cap,
    sum w + kappa traffic <= mem_cap, at most max_engines ranks, one per model."""
    items = [it for it in items if it.sm <= sm_cap and it.w <= mem_cap]
    if not items:
        return 0.0, []
    g = reduce(math.gcd, [it.sm for it in items], sm_cap) or 1
    ns, nq = sm_cap // g + 1, units + 1
    unit = mem_cap / units
    by_model: dict[str, list[RankItem]] = {}
    for it in items:
        by_model.setdefault(it.model, []).append(it)
    # ranks are counted only on request: a count layer per rank multiplies the work, and
    # dropping the engine limit keeps the DP a relaxation (the repair enforces it)
    most = min(len(by_model), sm_cap // min(max(1, it.sm) for it in items))
    ne = max_engines if count_ranks and max_engines < most else 0
    v = np.zeros((ne + 1, ns, nq))
    q = np.arange(nq, dtype=float)
    history = []
    for mine in by_model.values():
        history.append(v)
        best = v.copy()
        for it in mine:
            _add_rank(best, v, it, it.sm // g, unit, q)
        v = best
    bound = float(v[-1, -1, -1])
    chosen = _backtrack(list(by_model.values()), history, v, g, unit)
    return bound, _repair(chosen, mem_cap, max_engines)


def _backtrack(groups, history, v, g, unit) -> list[tuple[RankItem, int]]:
    """Recover a configuration attaining the DP's optimum (traffic rounded down to whole
    milli-rps, so possibly a hair below it)."""
    e, s, q = (n - 1 for n in v.shape)
    out = []
    for mine, before in zip(reversed(groups), reversed(history), strict=True):
        best, pick = before[e, s, q], None
        for it in mine:
            ds, wq = it.sm // g, int(it.w // unit)
            if (e == 0 and v.shape[0] > 1) or ds > s or wq > q:
                continue
            js = np.arange(q - wq + 1)  # KV units the rank may take
            phi = _traffic(it, js, unit)
            vals = before[max(e - 1, 0), s - ds, q - wq - js] + it.fixed + it.per * phi
            j = int(np.argmax(vals))
            if vals[j] > best + 1e-12:
                best, pick = vals[j], (it, int(phi[j]), ds, wq + j)
        if pick is not None:
            it, phi_j, ds, used = pick
            out.append((it, phi_j))
            e, s, q = max(e - 1, 0), s - ds, q - used
    return out


def _traffic(it: RankItem, js: np.ndarray, unit: float) -> np.ndarray:
    if it.per <= 0 or it.hi <= 0:
        return np.zeros_like(js)
    if it.kappa <= 0:
        return np.full_like(js, it.hi)
    return np.minimum(it.hi, np.floor((js + 1) * unit / it.kappa)).astype(np.int64)


def _repair(chosen: list[tuple[RankItem, int]], mem_cap: int, max_engines: int
            ) -> list[tuple[RankItem, int]]:
    """Make the DP's (optimistically rounded) pick fit exactly: keep the most valuable ranks
    within the engine limit, cut traffic (least valuable per KiB first), and drop the rank
    of least value per KiB while memory still overflows."""
    def value(c):
        return c[0].fixed + c[0].per * c[1]

    chosen = sorted(chosen, key=lambda c: -value(c))[:max_engines]
    while chosen:
        over = sum(it.w + it.kappa * phi for it, phi in chosen) - mem_cap
        if over <= 0:
            return chosen
        out = list(chosen)
        for k in sorted(range(len(out)), key=lambda k: out[k][0].per / max(1, out[k][0].kappa)):
            it, phi = out[k]
            if over <= 0 or it.kappa <= 0 or phi <= 0:
                continue
            cut = min(phi, -(-over // it.kappa))
            out[k] = (it, phi - cut)
            over -= cut * it.kappa
        if over <= 0:
            return out
        chosen.remove(min(chosen, key=lambda c: value(c) / (c[0].w + c[0].kappa * c[1])))
    return []
