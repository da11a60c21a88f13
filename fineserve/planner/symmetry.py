"""Relabel a plan's GPUs into the canonical order the ILP's symmetry constraints (9) demand.

GPUs inside a node are interchangeable, and so are identical nodes, so relabelling keeps a
plan valid. Used GPUs become a prefix of each node (aligned blocks repacked largest first,
which keeps every power-of-two TP group aligned), and identical nodes are ordered by how many
GPUs they use. A greedy plan in this form is a feasible warm start for the ILP.
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


def canonical_plan(plan: Plan) -> Plan:
    cluster = plan.cluster
    first = {}  # node name -> global id of its GPU 0
    gid = 0
    for node in cluster.nodes:
        first[node.name] = gid
        gid += node.num_gpus
    local_map: dict[str, dict[int, int]] = {}
    used: dict[str, int] = {}
    for node in cluster.nodes:
        groups = [tuple(g - first[node.name] for g in e.gpus)
                  for e in plan.engines if e.node == node.name]
        mapping, offset = {}, 0
        for start, size in sorted(_blocks(groups), key=lambda b: (-b[1], b[0])):
            for j in range(size):
                mapping[start + j] = offset + j
            offset += size
        local_map[node.name], used[node.name] = mapping, offset
    # identical nodes: more used GPUs first
    node_to: dict[str, str] = {}
    kinds: dict[tuple, list[str]] = {}
    for node in cluster.nodes:
        kinds.setdefault((node.gpu, node.num_gpus, node.cost_per_gpu), []).append(node.name)
    for names in kinds.values():
        for src, dst in zip(sorted(names, key=lambda n: -used[n]), names, strict=True):
            node_to[src] = dst
    engines = []
    for e in plan.engines:
        dst = node_to[e.node]
        gpus = tuple(first[dst] + local_map[e.node][g - first[e.node]] for g in e.gpus)
        engines.append(dataclasses.replace(e, node=dst, gpus=gpus))
    engines.sort(key=lambda e: (e.model, e.gpus))
    return Plan(plan.instance, tuple(engines), plan.unplaced, plan.report)
