"""Replay against the stub OpenAI server over real loopback HTTP: timings, SLOs, 429s, CLI."""

import asyncio
import json
import socket
import threading

import pytest
from aiohttp import web
from typer.testing import CliRunner

from fineserve.cli.app import app
from fineserve.metrics.summary import summarize
from fineserve.planner.schema import Slo
from fineserve.replay.client import ReplayConfig, replay
from fineserve.testing.stub_server import make_app
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths
from fineserve.workload.trace import ModelLoad, generate


class StubThread:
    """The stub server on its own event loop in a thread, on a free loopback port."""

    def __init__(self, **kw):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(**kw))
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(
                web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def stub():
    s = StubThread(models=("a", "b"), ttft_ms=30, tpot_ms=4)
    yield s
    s.stop()


def small_trace(rate=20.0, duration=2.0, out=10):
    return generate([ModelLoad("a", Poisson(rate), FixedLengths(32, out)),
                     ModelLoad("b", Poisson(rate / 2), FixedLengths(16, out))], duration, seed=1)


def test_timings_match_the_server(stub):
    trace = small_trace()
    records, wall = replay(trace, ReplayConfig(stub.url))
    assert len(records) == len(trace) and all(r.ok for r in records)
    assert all(r.tokens_received == 10 for r in records)
    ttft = sorted(r.ttft_s for r in records)
    tpot = sorted(r.tpot_s for r in records)
    assert 0.029 < ttft[len(ttft) // 2] < 0.06  # stub waits 30 ms before the first token
    assert 0.0035 < tpot[len(tpot) // 2] < 0.008  # and 4 ms between tokens
    # open loop: never sent before its time; how late is a speed figure, measured by
    # bench/replay_rate.py (send-lag p99), not asserted here
    assert all(r.sent_s >= r.scheduled_s - 1e-3 for r in records)
    assert wall >= trace.duration_s


def test_summary_slo_attainment(stub):
    records, wall = replay(small_trace(), ReplayConfig(stub.url))
    loose = summarize(records, {"a": Slo(1.0, 0.1), "b": Slo(1.0, 0.1)}, wall, "replay")
    tight = summarize(records, {"a": Slo(0.001, 0.1), "b": Slo(1.0, 0.001)}, wall, "replay")
    assert loose["overall"]["slo_attainment"] == 1.0
    assert tight["per_model"]["a"]["ttft_attainment"] == 0.0
    assert tight["per_model"]["b"]["tpot_attainment"] == 0.0
    assert loose["per_model"]["a"]["goodput_rps"] == pytest.approx(
        loose["per_model"]["a"]["throughput_rps"])


def test_overload_shows_as_429():
    s = StubThread(models=("a",), ttft_ms=200, tpot_ms=50, max_concurrency=2)
    try:
        trace = generate([ModelLoad("a", Poisson(50.0), FixedLengths(8, 10))], 1.0, seed=2)
        records, wall = replay(trace, ReplayConfig(s.url))
        summary = summarize(records, {"a": Slo(5, 1)}, wall, "replay")
        assert summary["overall"]["rejected_429"] > 0
        assert summary["overall"]["completed"] >= 2
        assert summary["overall"]["slo_attainment"] < 1.0  # rejected requests are misses
    finally:
        s.stop()


def test_unknown_model_is_an_error_record(stub):
    trace = generate([ModelLoad("zzz", Poisson(5.0), FixedLengths(8, 4))], 1.0, seed=3)
    records, _ = replay(trace, ReplayConfig(stub.url))
    assert records and all(r.status == 404 and not r.ok for r in records)


def test_cli_replay_writes_results(stub, tmp_path):
    trace_path = tmp_path / "t.jsonl"
    small_trace(duration=1.0).save(trace_path)
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["replay", str(trace_path), "--url", stub.url, "-o",
                              str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["source"] == "replay" and summary["overall"]["errors"] == 0
    assert (tmp_path / "res" / "requests.csv").exists()
    dead = runner.invoke(app, ["replay", str(trace_path), "--url", "http://127.0.0.1:9"])
    assert dead.exit_code == 2 and "no request reached" in dead.stderr
