"""Turn an integer mix of configurations (a dive's, dive.py) straight into a placement.

Each configuration already fits one GPU (SM, memory with its ranks' KV, engine limit, one
rank per model), so what is left is the TP structure: the ranks of a TP-t option are grouped
t at a time into engines (largest traffic together), and the GPUs an engine joins must form
an aligned group of t GPUs inside one node. Traffic is then routed afresh (a small CP-SAT
model: every GPU's memory with its engines' KV, the busiest engine as idle as possible),
since the ranks of one engine may carry different traffic in the columns. GPUs joined by
engines are placed as blocks, largest first, at aligned offsets of the nodes of their class
(buddy allocation). Returns None when the mix
does not decompose that way (ranks of an option not a multiple of t, engines of different
degrees sharing GPUs, no traffic split within memory) - the
caller then falls back to the rounding programme and the packer (rounding.py).
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from fineserve.planner.bounds import gpu_groups
from fineserve.planner.master import Column
from fineserve.planner.options import TpGroup
from fineserve.planner.placed import Placed, PlacedEngine
from fineserve.planner.variables import U_SCALE, IlpData

ROUTE_S = 2.0  # the routing model has one variable per engine: solved in milliseconds

Engine = tuple[str, int, tuple[int, ...], int]  # (model, option, GPU instances, traffic)


def place_mix(d: IlpData, mix: tuple[tuple[Column, int], ...]) -> Placed | None:
    """A placement of ``mix`` (configuration, GPUs) on the cluster, or None."""
    gpus = [c for c, n in mix for _ in range(n)]
    engines = _engines(d, gpus)
    if engines is None or not _route(d, gpus, engines):
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
        placed.append(PlacedEngine(m, i, group, flow))
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


def _route(d: IlpData, gpus: list[Column], engines: list[Engine]) -> bool:
    """Route each model's rate over its engines, in place, within every GPU's memory (pooled
    KV grows with traffic), with the busiest engine as idle as possible (the routed
    headroom); False if no split fits. Static KV: nothing to route."""
    if not d.pooled:
        return True
    model = cp_model.CpModel()
    u = model.new_int_var(0, U_SCALE, "U")
    f = []
    for m, i, _, _ in engines:
        f.append(model.new_int_var(0, min(d.mu[m, i], d.lam[m]), ""))
        model.add(U_SCALE * f[-1] <= d.mu[m, i] * u)
    for m in d.models:
        model.add(sum(f[k] for k, e in enumerate(engines) if e[0] == m) == d.lam[m])
    for j, c in enumerate(gpus):
        mine = [k for k, e in enumerate(engines) if j in e[2]]
        model.add(sum(d.w[engines[k][0], engines[k][1]]
                      + d.kappa[engines[k][0], engines[k][1]] * f[k] for k in mine)
                  <= min(d.mem_cap[g] for g in gpu_groups(d)[c.cls]))
    model.minimize(u)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = ROUTE_S
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = d.inst.settings.seed
    if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return False
    for k, (m, i, members, _) in enumerate(engines):
        engines[k] = (m, i, members, solver.value(f[k]))
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
