"""Turn an integer mix of configurations (a dive's, dive.py) straight into a placement.

Each configuration already fits one GPU (SM, memory with its ranks' KV, engine limit, one
rank per model), so what is left is the TP structure: the ranks of a TP-t option are grouped
t at a time into engines (largest traffic together), an engine carries the least traffic of
its ranks (so every rank's KV still fits), and the GPUs an engine joins must form an aligned
group of t GPUs inside one node. GPUs joined by engines are placed as blocks, largest first,
at aligned offsets of the nodes of their class (buddy allocation). Returns None when the mix
does not decompose that way (ranks of an option not a multiple of t, engines of different
degrees sharing GPUs, too little traffic left after taking each engine's least) - the
caller then falls back to the rounding programme and the packer (rounding.py).
"""

from __future__ import annotations

from fineserve.planner.master import Column
from fineserve.planner.options import TpGroup
from fineserve.planner.packing import Placed
from fineserve.planner.variables import IlpData

Engine = tuple[str, int, tuple[int, ...], int]  # (model, option, GPU instances, traffic)


def place_mix(d: IlpData, mix: tuple[tuple[Column, int], ...]) -> Placed | None:
    """A placement of ``mix`` (configuration, GPUs) on the cluster, or None."""
    gpus = [c for c, n in mix for _ in range(n)]
    engines = _engines(d, gpus)
    if engines is None or not _route(d, engines):
        return None
    slot = _blocks_to_gpus(d, gpus, engines)
    if slot is None:
        return None
    placed: Placed = []
    for m, i, members, flow in engines:
        ids = tuple(sorted(slot[j] for j in members))
        group = _group(d, d.options[m][i].tp, ids)
        if group is None:
            return None
        placed.append((m, i, group, flow))
    return placed


def _engines(d: IlpData, gpus: list[Column]) -> list[Engine] | None:
    ranks: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for j, c in enumerate(gpus):
        for m, i, phi in c.ranks:
            ranks.setdefault((m, i), []).append((phi, j))
    out: list[Engine] = []
    for (m, i), rs in ranks.items():
        t = d.options[m][i].tp
        if len(rs) % t:
            return None
        rs.sort(reverse=True)
        for k in range(0, len(rs), t):
            part = rs[k:k + t]
            out.append((m, i, tuple(j for _, j in part), min(phi for phi, _ in part)))
    return out


def _route(d: IlpData, engines: list[Engine]) -> bool:
    """Cut each model's engine traffic down to its rate (integers summing exactly to it), in
    place; False if its engines carry less than its rate. Static KV: nothing to route."""
    if not d.pooled:
        return True
    for m in d.models:
        idx = [k for k, e in enumerate(engines) if e[0] == m]
        total = sum(engines[k][3] for k in idx)
        if total < d.lam[m]:
            return False
        left = d.lam[m]
        for n, k in enumerate(idx):
            m_, i, members, flow = engines[k]
            share = left if n == len(idx) - 1 else min(flow * d.lam[m] // total, left)
            engines[k] = (m_, i, members, share)
            left -= share
    return True


def _blocks_to_gpus(d: IlpData, gpus: list[Column], engines: list[Engine]
                    ) -> dict[int, int] | None:
    """GPU id for each configuration instance: a TP engine's instances form one block of
    exactly its size, placed at an aligned offset inside a node of the block's class."""
    size = {j: 1 for j in range(len(gpus))}
    block = {j: (j,) for j in range(len(gpus))}
    for _, _, members, _ in engines:
        if len(members) == 1:
            continue
        merged = tuple(sorted({x for j in members for x in block[j]}))
        if len(merged) != len(members):  # engines of different degrees share GPUs
            return None
        for j in merged:
            block[j], size[j] = merged, len(merged)
    free = {}  # node -> its GPU ids in order, None where taken
    for g in d.gpus:
        free.setdefault(g.node, []).append(g.gpu_id)
    slot: dict[int, int] = {}
    for b in sorted(set(block.values()), key=len, reverse=True):
        cls = gpus[b[0]].cls
        spot = _find(d, free, len(b), cls)
        if spot is None:
            return None
        node, offset = spot
        for j, x in zip(b, range(offset, offset + len(b)), strict=True):
            slot[j] = free[node][x]
            free[node][x] = None
    return slot


def _find(d: IlpData, free: dict, t: int, cls) -> tuple[str, int] | None:
    for node, ids in free.items():
        for offset in range(0, len(ids) - t + 1, t):
            part = ids[offset:offset + t]
            if all(g is not None and (d.gpus[g].spec.name, d.cost[g]) == cls for g in part):
                return node, offset
    return None


def _group(d: IlpData, t: int, ids: tuple[int, ...]) -> TpGroup | None:
    return next((u for u in d.groups.get(t, ()) if u.gpus == ids), None)
