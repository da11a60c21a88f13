"""Constraint families of the placement ILP, one function each (docs/planner.md, section 3).

Each ``add_<family>(b, d, v)`` adds its constraints through the solver-neutral builder and
returns an objective term (0 for a pure constraint), so tests can build any subset.
"""

from __future__ import annotations

from typing import Any

from fineserve.planner.builder import Builder
from fineserve.planner.variables import MILLI, U_SCALE, IlpData, PlacementVars


def _capacity(b: Builder, d: IlpData, v: PlacementVars, m: str) -> Any:
    """sum_{i,k} mu_{m,i} x[m,i,k], milli-rps."""
    return b.total(d.mu[m, i] * v.x[m, i, k] for m, i, k in v.of_model[m])


def add_traffic(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(1) f[m,i,k] <= mu x[m,i,k];  (2) sum_{i,k} f[m,i,k] = p[m]. Static KV needs the flows
    only for the headroom (4): its memory does not depend on them."""
    for key, f in v.f.items():
        m, i, _ = key
        b.add(f <= d.mu[m, i] * v.x[key], f"cap{key}")
    for m in d.models:
        b.add(b.total(v.f[key] for key in v.of_model[m]) == v.p[m], f"flow[{m}]")
    return 0


def add_coverage(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(3) capacity covers placed traffic with the minimum headroom:
    1000 * sum mu x >= H_min * p[m]."""
    for m in d.models:
        b.add(MILLI * _capacity(b, d, v, m) >= d.h_min * v.p[m], f"cover[{m}]")
    return 0


def add_headroom(b: Builder, d: IlpData, v: PlacementVars) -> Any:
    """(4) U >= utilisation of every engine: U_SCALE * f[m,i,k] <= mu_{m,i} * U. The
    minimum headroom is U_SCALE / U: the factor by which every model's routed traffic can
    grow, split as routed, before its busiest engine saturates. Capacity of engines that
    carry little traffic does not count. Returns U (millionths)."""
    for key, f in v.f.items():
        m, i, _ = key
        b.add(U_SCALE * f <= d.mu[m, i] * v.U, f"headroom{key}")
    return v.U


def add_memory(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(5) per GPU: sum w_o x + sum kappa_o f <= M_g y_g  (KiB; the f term in pooled mode)."""
    for g, keys in v.on_gpu.items():
        fixed = [d.w[m, i] * v.x[m, i, k] for m, i, k in keys]
        pooled = [d.kappa[m, i] * v.f[m, i, k] for m, i, k in keys] if d.pooled else []
        b.add(b.total(fixed + pooled) <= d.mem_cap[g] * v.y[g], f"mem[gpu{g}]")
    return 0


def add_sm_share(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(6) per GPU: sum s_o x <= S y_g  (MPS shares; S = 100 x oversubscription)."""
    for g, keys in v.on_gpu.items():
        b.add(b.total(d.sm[m, i] * v.x[m, i, k] for m, i, k in keys) <= d.sm_cap * v.y[g],
              f"sm[gpu{g}]")
    return 0


def add_gpu_use(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(10) x[m,o,u] = 1 => y[g] = 1 for every g in u. Implied by (5)-(7); stated per engine
    because it tightens the relaxation that bounds the GPU count."""
    for key, x in v.x.items():
        for g in v.group_of(d, key).gpus:
            b.implies(x, v.y[g], f"use{key}g{g}")
    return 0


def add_replica_floor(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(11) lambda_m * sum x[m,.,.] >= p[m]: placed traffic needs an engine. Valid for any
    integer solution; makes the relaxation charge every placed model at least one engine's
    weights."""
    for m in d.models:
        b.add(d.lam[m] * b.total(v.x[key] for key in v.of_model[m]) >= v.p[m], f"some[{m}]")
    return 0


def add_engine_limit(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(7) per GPU: at most E engines (MPS clients), and (8) at most one engine per model:
    a second replica on the same GPU only duplicates weights."""
    limit = d.inst.settings.max_engines_per_gpu
    for g, keys in v.on_gpu.items():
        b.add(b.total(v.x[key] for key in keys) <= limit * v.y[g], f"engines[gpu{g}]")
        per_model: dict[str, list] = {}
        for key in keys:
            per_model.setdefault(key[0], []).append(v.x[key])
        for m, mine in per_model.items():
            if len(mine) > 1:
                b.add(b.total(mine) <= 1, f"one[{m},gpu{g}]")
    return 0


def add_symmetry(b: Builder, d: IlpData, v: PlacementVars) -> int:
    """(9) identical GPUs are used in order inside a node; across consecutive identical nodes
    of power-of-two size the used GPUs form one prefix (y[last of n1] >= y[first of n2]),
    otherwise identical nodes are ordered by use. Valid because aligned power-of-two TP groups
    can always be repacked that way (symmetry.py does it to warm starts)."""
    by_node: dict[str, list[int]] = {}
    for g in d.gpus:
        by_node.setdefault(g.node, []).append(g.gpu_id)
    for ids in by_node.values():
        for a, c in zip(ids, ids[1:], strict=False):
            b.add(v.y[a] >= v.y[c], f"order[gpu{a}]")
    nodes = d.inst.cluster.nodes
    for n1, n2 in zip(nodes, nodes[1:], strict=False):
        if n1.gpu != n2.gpu or n1.num_gpus != n2.num_gpus or n1.cost_per_gpu != n2.cost_per_gpu:
            continue
        if n1.num_gpus & (n1.num_gpus - 1) == 0:
            b.add(v.y[by_node[n1.name][-1]] >= v.y[by_node[n2.name][0]], f"order[{n2.name}]")
        else:
            b.add(b.total(v.y[g] for g in by_node[n1.name])
                  >= b.total(v.y[g] for g in by_node[n2.name]), f"order[{n2.name}]")
    return 0


FRACTION_SCALE = 10**9


def served_weight(d: IlpData, m: str) -> int:
    """Weight of model m's placed traffic (milli-rps) in ``placed_traffic``: 1 / lambda_m
    (x 1e9). It keeps one popular model from crowding out every small one."""
    return FRACTION_SCALE // d.lam[m]


def placed_traffic(b: Builder, d: IlpData, v: PlacementVars) -> Any:
    """Objective term: sum_m p[m] / lambda_m, the served fraction summed over models (x 1e9)."""
    return b.total(served_weight(d, m) * v.p[m] for m in d.models)


def all_traffic(d: IlpData) -> int:
    """``placed_traffic`` with every model fully placed: a bound of stage 0."""
    return sum(served_weight(d, m) * d.lam[m] for m in d.models)


def gpu_cost(b: Builder, d: IlpData, v: PlacementVars) -> Any:
    """Objective term: sum_g c_g y_g (cost x 1000)."""
    return b.total(d.cost[g] * y for g, y in v.y.items())


def pin_all_placed(b: Builder, d: IlpData, v: PlacementVars) -> None:
    """p[m] = lambda_m for all m, with the replica count that implies (integer rounding of (3)):
    sum x[m,.,.] >= ceil(H_min lambda_m / max_o mu_o)."""
    for m in d.models:
        b.add(v.p[m] >= d.lam[m], f"all[{m}]")
        best = max(d.mu[m, i] for i in range(len(d.options[m])))
        need = -(-d.h_min * d.lam[m] // (MILLI * best)) if best > 0 else 1
        b.add(b.total(v.x[key] for key in v.of_model[m]) >= need, f"replicas[{m}]")


ALL_FAMILIES = (
    add_traffic, add_coverage, add_headroom, add_memory, add_sm_share, add_engine_limit,
    add_gpu_use, add_replica_floor, add_symmetry,
)
