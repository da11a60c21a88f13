"""Which Ray node runs which plan node, and where each node's engines listen.

The operator marks each host with the plan node it serves when joining the cluster::

    ray start --address HEAD:6379 --resources '{"fineserve_node_node1": 1}'

A node's agent asks for that resource (1 unit), so Ray places it on exactly that host and
never places two agents of one plan node at once. Pure functions over ``ray.nodes()`` rows, so
the matching rules are unit-tested without a cluster.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fineserve.planner.schema import Plan
from fineserve.runtime.errors import DeployError

RESOURCE_PREFIX = "fineserve_node_"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def node_resource(node: str) -> str:
    """The custom Ray resource that marks the host of plan node ``node``."""
    return RESOURCE_PREFIX + node


def ray_start_hint(node: str) -> str:
    return f"on that host: ray start --address HEAD:PORT --resources " \
           f"'{{\"{node_resource(node)}\": 1}}'"


@dataclass(frozen=True, slots=True)
class RayNode:
    """One row of ``ray.nodes()``, reduced to what placement needs."""

    node_id: str
    ip: str
    alive: bool  # as the GCS sees it (a silent node is declared dead after ~15-30 s)
    plan_nodes: tuple[str, ...]  # plan nodes whose resource this Ray node carries
    manager_port: int = 0  # its raylet's port

    @classmethod
    def from_row(cls, row: Mapping) -> RayNode:
        res = row.get("Resources") or {}
        names = tuple(sorted(k[len(RESOURCE_PREFIX):] for k, v in res.items()
                             if k.startswith(RESOURCE_PREFIX) and v >= 1))
        return cls(str(row.get("NodeID", "")), str(row.get("NodeManagerAddress", "")),
                   bool(row.get("Alive")), names, int(row.get("NodeManagerPort") or 0))


def raylet_up(node: RayNode, timeout_s: float = 1.0) -> bool:
    """Its raylet accepts a TCP connection: a dead raylet is known at once this way, long
    before the GCS misses enough heartbeats to declare the node dead."""
    if not node.manager_port:
        return node.alive
    try:
        with socket.create_connection((node.ip, node.manager_port), timeout=timeout_s):
            return True
    except OSError:
        return False


def plan_nodes(plan: Plan) -> tuple[str, ...]:
    """Plan nodes that run at least one engine (the others need no agent), sorted."""
    nodes = tuple(sorted({e.node for e in plan.engines}))
    if not nodes:
        raise DeployError("plan has no engines (every model is unplaced)",
                          hint="re-plan with more GPUs or lower rates")
    for n in nodes:
        if not _NAME.match(n):
            raise DeployError(f"plan node {n!r}: not usable in a Ray resource name",
                              hint="name nodes with letters, digits, '_', '-' or '.'")
    return nodes


def hosts_of(rows: Iterable[RayNode], nodes: Iterable[str]) -> dict[str, RayNode]:
    """Plan node -> the live Ray node carrying its resource (absent: none alive now)."""
    out: dict[str, RayNode] = {}
    for r in rows:
        if not r.alive:
            continue
        for n in r.plan_nodes:
            out.setdefault(n, r)
    wanted = set(nodes)
    return {n: r for n, r in out.items() if n in wanted}


def check_all_present(rows: Iterable[RayNode], nodes: tuple[str, ...]) -> dict[str, RayNode]:
    """Every plan node must have a live Ray node at start; else one line naming the first."""
    found = hosts_of(rows, nodes)
    missing = [n for n in nodes if n not in found]
    if missing:
        raise DeployError(f"no live Ray node carries resource {node_resource(missing[0])} "
                          f"(plan node {missing[0]}"
                          + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else "")
                          + ")", hint=ray_start_hint(missing[0]))
    return found


def port_bases(plan: Plan, nodes: tuple[str, ...], base: int) -> dict[str, int]:
    """First engine port of each node: node k gets base + k x (most engines on one node).

    Distinct ranges per node cost nothing on a real cluster and let several nodes share one
    host (tests, or two plan nodes on one big machine).
    """
    stride = max(sum(1 for e in plan.engines if e.node == n) for n in nodes)
    last = base + stride * len(nodes) - 1
    if last > 65535:
        raise DeployError(f"--engine-port-base {base}: engine ports would reach {last}",
                          hint="use a lower --engine-port-base")
    return {n: base + k * stride for k, n in enumerate(nodes)}
