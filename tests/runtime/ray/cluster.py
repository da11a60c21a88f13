"""A real two-node Ray cluster on this machine for the Ray tests: a head presenting itself as
plan node ``node0`` and a second raylet presenting itself as ``node1`` (custom resources).

Every Ray process runs under ``ray start --block`` in its own session, on free ports and in a
private temp dir, so the test stops exactly its own cluster (the group of each ``ray start``)
and never another one on this machine (``ray stop`` would stop them all).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fineserve.runtime.procs import group_members
from fineserve.runtime.ray.topology import node_resource

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """``n`` free ports between Ray's worker ports and the kernel's ephemeral range: an
    ephemeral port that is free now can be handed to one of Ray's own outgoing connections
    before Ray binds it (a flake seen in CI: "Address already in use" for the client server
    port)."""
    low = _ephemeral_low()
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, low)  # Ray keeps 10002-19999 for its workers
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class LocalCluster:
    def __init__(self, log_dir: Path) -> None:
        # short: Ray puts Unix sockets under it (108-byte limit)
        self.temp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))
        self.log_dir = log_dir
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}

    def _start(self, node: str, head: bool) -> None:
        nm, om, da, dg, re_, me, dash, rc = free_ports(8)
        argv = [RAY, "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                "--object-store-memory", str(100 << 20),
                "--resources", json.dumps({node_resource(node): 1}),
                "--node-manager-port", str(nm), "--object-manager-port", str(om),
                "--dashboard-agent-listen-port", str(da), "--dashboard-agent-grpc-port",
                str(dg), "--runtime-env-agent-port", str(re_), "--metrics-export-port", str(me)]
        if head:
            argv += ["--head", "--port", str(self.port), "--temp-dir", str(self.temp),
                     "--include-dashboard", "false", "--dashboard-port", str(dash),
                     "--ray-client-server-port", str(rc)]
        else:
            argv += ["--address", self.address]
        log = open(self.log_dir / f"ray-{node}.log", "ab")  # noqa: SIM115 (lives with the proc)
        self.procs[node] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=self.env)

    def start(self, timeout_s: float = 120.0) -> None:
        self._start("node0", head=True)
        self._wait_resource("node0", timeout_s)
        self.start_node("node1", timeout_s)

    def start_node(self, node: str, timeout_s: float = 120.0) -> None:
        self._start(node, head=False)
        self._wait_resource(node, timeout_s)

    def _wait_resource(self, node: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = subprocess.run([RAY, "status", "--address", self.address],
                                 capture_output=True, text=True, env=self.env)
            if node_resource(node) in res.stdout:
                return
            if self.procs[node].poll() is not None:
                raise RuntimeError(f"ray start for {node} exited: "
                                   f"{(self.log_dir / f'ray-{node}.log').read_text()[-2000:]}")
            time.sleep(1)
        raise RuntimeError(f"Ray node {node} not up within {timeout_s:.0f} s")

    def kill_node(self, node: str) -> None:
        """SIGKILL every process of that Ray node (raylet, its workers, agents)."""
        proc = self.procs.pop(node)
        _kill_group(proc, signal.SIGKILL)

    def stop(self) -> list[str]:
        """Stop every node we started; returns what is still running afterwards (should be
        nothing)."""
        for node in [n for n in self.procs if n != "node0"] + ["node0"]:
            if node in self.procs:
                _kill_group(self.procs.pop(node), signal.SIGTERM)
        shutil.rmtree(self.temp, ignore_errors=True)
        return []


def _kill_group(proc: subprocess.Popen, sig: int, wait_s: float = 20.0) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while group_members(proc.pid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.2)
    if group_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
