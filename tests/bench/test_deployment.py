"""bench/e2e/deployment.replay_served, the replay step every deployment bench shares, against
the stub engine server over loopback HTTP (the deployment around it needs GPUs)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

from bench.deploy_h100 import fixed_plan, make_trace
from bench.e2e.deployment import replay_served
from fineserve.replay.client import ReplayConfig


@dataclass(frozen=True)
class Served:
    """What replay_served reads of a DeployProcess: its gateway URL and label."""

    url: str
    label: str = "stub"


@pytest.fixture
def stub_url():
    plan = fixed_plan(1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fineserve.testing.stub_server", "--port",
                             str(port), "--models", ",".join(m.name for m in plan.models)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=1).read()  # noqa: S310
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_replay_served_summarizes_every_request_of_the_trace(stub_url):
    plan = fixed_plan(1.0)
    trace = make_trace(plan, 2.0, 2.0, 0)
    seen = []
    summary = replay_served(Served(stub_url), plan, trace,
                            ReplayConfig(stub_url, duration_s=2.0, timeout_s=30),
                            lambda sent, finished: seen.append(finished))
    assert summary["overall"]["requests"] == len(trace) > 0
    assert summary["overall"]["errors"] == 0
    assert set(summary["per_model"]) == {m.name for m in plan.models}
    assert seen and seen[-1] == len(trace)
