"""Plan node <-> Ray node matching, port ranges, one-line errors."""

from __future__ import annotations

import socket

import pytest

from fineserve.runtime.errors import DeployError
from fineserve.runtime.ray.topology import (
    RayNode,
    check_all_present,
    hosts_of,
    node_resource,
    plan_nodes,
    port_bases,
    raylet_up,
)

from ..helpers import demand, engine, plan


def _row(node_id: str, alive: bool, *names: str, ip: str = "10.0.0.1") -> dict:
    res = {"CPU": 8.0, **{node_resource(n): 1.0 for n in names}}
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive, "Resources": res,
            "NodeManagerPort": 1234}


def _two_node_plan():
    a, b = demand("a"), demand("b")
    return plan([a, b], [engine("a-0", a, node="n0"), engine("a-1", a, node="n0", gpus=(1,)),
                         engine("b-0", b, node="n1", gpus=(2,))], nodes=("n0", "n1"))


def test_row_parsing_keeps_only_fineserve_resources():
    r = RayNode.from_row(_row("abc", True, "n1", "n0"))
    assert r == RayNode("abc", "10.0.0.1", True, ("n0", "n1"), 1234)
    assert node_resource("n1") == "fineserve_node_n1"


def test_dead_nodes_do_not_host_and_the_first_live_one_wins():
    rows = [RayNode.from_row(x) for x in (_row("dead", False, "n0"), _row("x", True, "n0"),
                                          _row("y", True, "n0"), _row("z", True, "other"))]
    found = hosts_of(rows, ["n0", "n1"])
    assert {n: r.node_id for n, r in found.items()} == {"n0": "x"}


def test_missing_node_is_one_line_naming_the_resource_and_the_ray_start_command():
    rows = [RayNode.from_row(_row("x", True, "n0"))]
    with pytest.raises(DeployError) as exc:
        check_all_present(rows, ("n0", "n1"))
    assert "fineserve_node_n1" in exc.value.message and "\n" not in str(exc.value)
    assert "ray start --address" in exc.value.hint and "fineserve_node_n1" in exc.value.hint


def test_plan_nodes_are_those_with_engines():
    assert plan_nodes(_two_node_plan()) == ("n0", "n1")


def test_node_names_must_fit_a_resource_name():
    a = demand("a")
    with pytest.raises(DeployError, match="not usable in a Ray resource name"):
        plan_nodes(plan([a], [engine("a-0", a, node="bad name")], nodes=("bad name",)))


def test_port_ranges_of_nodes_do_not_overlap():
    bases = port_bases(_two_node_plan(), ("n0", "n1"), 9000)
    assert bases == {"n0": 9000, "n1": 9002}  # stride = most engines on one node (2)
    with pytest.raises(DeployError, match="would reach"):
        port_bases(_two_node_plan(), ("n0", "n1"), 65534)


def test_raylet_up_is_a_tcp_connect():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert raylet_up(RayNode("x", "127.0.0.1", True, (), port))
    assert not raylet_up(RayNode("x", "127.0.0.1", True, (), port))  # closed now
