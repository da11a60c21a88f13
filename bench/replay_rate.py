"""Can `fineserve replay` keep an open-loop schedule at high request rates on 2 cores?

Starts the stub OpenAI server (fineserve.testing.stub_server) in its own process, replays a
Poisson trace at RATE req/s for DURATION s with short streamed outputs, and reports the
achieved send rate and the lag between scheduled and actual send times. With --via-gateway
the requests go through the FineServe gateway (its own process) in front of the stub, as in
a deployment.

    python bench/replay_rate.py --rate 500 --duration 20 [--via-gateway]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from fineserve.replay.client import ReplayConfig, replay
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths
from fineserve.workload.trace import ModelLoad, generate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--output-tokens", type=int, default=8)
    ap.add_argument("--tpot-ms", type=float, default=2.0)
    ap.add_argument("--via-gateway", action="store_true")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fineserve.testing.stub_server", "--port",
                               str(port), "--models", "m", "--ttft-ms", "5", "--tpot-ms",
                               str(a.tpot_ms)])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        if a.via_gateway:
            gateway, url = start_gateway(url)
        trace = generate([ModelLoad("m", Poisson(a.rate), FixedLengths(128, a.output_tokens))],
                         a.duration, seed=0)
        records, wall = replay(trace, ReplayConfig(url))
        lag = np.array([r.sent_s - r.scheduled_s for r in records]) * 1e3
        ok = sum(r.ok for r in records)
        sent_rate = len(records) / max(r.sent_s for r in records)
        print(f"requests {len(records)}  completed {ok}  errors {len(records) - ok}")
        print(f"offered {a.rate:.0f} req/s, sent {sent_rate:.1f} req/s, wall {wall:.1f} s")
        print(f"send lag ms: p50 {np.percentile(lag, 50):.2f}  p99 {np.percentile(lag, 99):.2f}"
              f"  max {lag.max():.2f}")
        status = {}
        for r in records:
            status[r.status] = status.get(r.status, 0) + 1
        via = "gateway" if a.via_gateway else "stub"
        print(f"statuses {dict(sorted(status.items()))}  via {via}")
    finally:
        if a.via_gateway and "gateway" in locals():
            gateway.terminate()
            gateway.wait(timeout=30)
        server.terminate()
        server.wait(timeout=10)


def start_gateway(upstream: str) -> tuple[subprocess.Popen, str]:
    """The gateway in its own process, routing model "m" to the stub; waits for its ready line."""
    port = free_port()
    config = {"port": port, "routes": [{
        "model": "m", "ttft_slo_s": 5.0, "tpot_slo_s": 1.0,
        "upstreams": [{"engine_id": "stub-0", "base_url": upstream, "served_model_name": "m",
                       "max_batch": 256}]}]}
    path = os.path.join(tempfile.mkdtemp(), "gateway.json")
    with open(path, "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen([sys.executable, "-m", "fineserve.runtime.gateway", path],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "gateway ready" not in line:
        raise SystemExit(f"gateway did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    main()
