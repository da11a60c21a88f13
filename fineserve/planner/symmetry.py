"""Relabel a plan's GPUs into the canonical order the ILP's symmetry constraints (9) demand.

GPUs inside a node are interchangeable, and so are identical nodes, so relabelling keeps a
plan valid. The used GPUs of each node form aligned blocks (TP groups are aligned powers of
two, so maximal blocks partition them); repacking the blocks largest first keeps every group
aligned. With power-of-two nodes the blocks of all identical nodes are packed as one run, so
the used GPUs become a prefix of the run (a block never straddles two nodes: its size divides
both its offset and the node size). Otherwise each node's used GPUs become a prefix and
identical nodes are ordered by how many they use. A greedy plan in this form is a feasible
warm start for the ILP.
"""

from __future__ import annotations

import dataclasses

from fineserve.planner.schema import Plan


def _blocks(groups: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """Maximal aligned blocks (first local index, size) covering the used GPUs of one node.
    Aligned power-of-two groups are nested or disjoint, so the maximal ones partition."""
    spans = sorted({(g[0], len(g)) for g in groups}, key=lambda s: (-s[1], s[0]))
    kept: list[tuple[int, int]] = []
    for start, size in spans:
        if not any(s <= start and start + size <= s + z for s, z in kept):
            kept.append((start, size))
    return kept


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def canonical_plan(plan: Plan) -> Plan:
    cluster = plan.cluster
    first = {}  # node name -> global id of its GPU 0
    gid = 0
    for node in cluster.nodes:
        first[node.name] = gid
        gid += node.num_gpus
    kinds: dict[tuple, list[str]] = {}
    for node in cluster.nodes:
        kinds.setdefault((node.gpu, node.num_gpus, node.cost_per_gpu), []).append(node.name)
    to: dict[tuple[str, int], tuple[str, int]] = {}  # (node, local gpu) -> (node, local gpu)
    for (_, size, _), names in kinds.items():
        blocks = []  # (size, node order, start, node)
        for order, name in enumerate(names):
            groups = [tuple(g - first[name] for g in e.gpus)
                      for e in plan.engines if e.node == name]
            blocks += [(z, order, st, name) for st, z in _blocks(groups)]
        blocks.sort(key=lambda b: (-b[0], b[1], b[2]))
        if _power_of_two(size):
            # one run over all identical nodes: largest blocks first fill node after node,
            # every block aligned and inside a node (sizes are powers of two dividing it)
            offset = 0
            for z, _, st, name in blocks:
                for j in range(z):
                    to[name, st + j] = (names[offset // size], offset % size + j)
                offset += z
            continue
        # otherwise a prefix per node, nodes ordered by how many GPUs they use
        used: dict[str, int] = {n: 0 for n in names}
        local: dict[tuple[str, int], int] = {}
        for z, _, st, name in blocks:
            for j in range(z):
                local[name, st + j] = used[name] + j
            used[name] += z
        order = sorted(names, key=lambda n: -used[n])
        for src, dst in zip(order, names, strict=True):
            for (n, g), dst_g in local.items():
                if n == src:
                    to[n, g] = (dst, dst_g)
    engines = []
    for e in plan.engines:
        targets = [to[e.node, g - first[e.node]] for g in e.gpus]
        node = targets[0][0]
        gpus = tuple(first[node] + g for _, g in targets)
        engines.append(dataclasses.replace(e, node=node, gpus=gpus))
    engines.sort(key=lambda e: (e.model, e.gpus))
    return Plan(plan.instance, tuple(engines), plan.unplaced, plan.report)
