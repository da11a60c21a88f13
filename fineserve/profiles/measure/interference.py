"""Co-located engines under MPS: each alone, then all together, same load (issue 5, item 2).

A scenario starts one worker per member at its SM share (all at once), waits until every
engine is warm, then runs phases through files in a control folder: ``alone-<m>`` for each
member, then ``together``. In each phase the active members run decode batches with a batch-1
prefill probe in between (``worker.run_load``). Members outside a phase sit idle, which under
MPS costs the others nothing. Slowdown = together / alone, per member, for the decode step and
the probe's TTFT; ``interference_fit`` turns them into model parameters.

Files under the output folder: ``interference.jsonl`` (records, resumable: a scenario whose
``together`` phase is recorded for every member is skipped), ``interference.csv`` (one row per
member and phase), ``interference-fit.json``, ``interference.log``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fineserve.errors import SpecError
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.measure import mps_daemon
from fineserve.profiles.measure.grid import GIB
from fineserve.profiles.measure.interference_fit import (
    InterferenceFit,
    InterferenceSample,
    fit_interference,
    hbm_demand,
)
from fineserve.profiles.measure.modeldir import vllm_dtype, vllm_quantization, write_model_dir
from fineserve.profiles.measure.procs import kill_group, worker_env
from fineserve.profiles.measure.records import (
    GRAPH_CAPTURE_TOKENS,
    EngineArgs,
    EngineLabel,
    InterferenceJob,
    LoadRecord,
    LoadSpec,
    read_records,
    write_job,
)
from fineserve.profiles.measure.runner import DEFAULT_CACHE
from fineserve.profiles.precision import Precision

READY_TIMEOUT_S = 400.0
CSV_COLUMNS = ("scenario", "member", "model", "precision", "sm_pct", "phase", "alone_s",
               "together_s", "slowdown", "self_demand", "others_demand", "samples")


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    model: str
    precision: Precision
    sm_pct: float


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        if len({m.name for m in self.members}) != len(self.members) or len(self.members) < 2:
            raise SpecError(f"scenario {self.name}: needs >= 2 members with distinct names")
        total = sum(m.sm_pct for m in self.members)
        if total > 100 + 1e-6:
            raise SpecError(f"scenario {self.name}: SM shares add up to {total:g} > 100")


@dataclass(frozen=True, slots=True)
class InterferenceRequest:
    scenarios: tuple[Scenario, ...]
    out: Path
    load: LoadSpec = LoadSpec(batch=32, prompt_tokens=512, output_tokens=64, probe_tokens=1024)
    phase_s: float = 10.0
    gpu: str = "H100-SXM-80GB"
    budget_s: float | None = None
    engine_python: str | None = None
    cache_dir: Path = DEFAULT_CACHE
    start_guess_s: float = 75.0


def _engine_args(member: Member, load: LoadSpec, root: Path) -> EngineArgs:
    spec = ModelSpec(resolve_arch(member.model), member.precision)
    longest = max(load.prompt_tokens + load.output_tokens, load.probe_tokens + 1) + 32
    kv = max(GIB, int(1.3 * (load.batch + 1) * longest * spec.kv_bytes_per_token()))
    need = spec.weight_bytes() + kv + 4 * GIB
    return EngineArgs(
        model_dir=str(write_model_dir(spec, root)), tp=1,
        quantization=vllm_quantization(member.precision.weights),
        kv_cache_dtype=member.precision.kv.vllm_kv_cache_dtype,
        dtype=vllm_dtype(member.precision.weights, member.precision.kv.vllm_kv_cache_dtype),
        max_model_len=(longest // 16 + 1) * 16, max_num_seqs=load.batch + 1,
        max_num_batched_tokens=max(2048, load.probe_tokens + load.batch),
        kv_cache_memory_bytes=kv, gpu_memory_utilization=round(min(0.9, need / (80 * GIB)), 3),
        enforce_eager=False, vocab_size=spec.arch.vocab_size,
        max_cudagraph_capture_size=GRAPH_CAPTURE_TOKENS,  # probes' prefill as deployed
    )  # fmt: skip


def _label(member: Member, gpu: str) -> EngineLabel:
    p = member.precision
    return EngineLabel(gpu, resolve_arch(member.model).name, p.weights.value, p.kv.value, 1,
                       member.sm_pct)


def done_scenarios(results: Path, scenarios: tuple[Scenario, ...]) -> set[str]:
    """Scenarios whose ``together`` phase is recorded for every member."""
    together = {(r.scenario, r.member) for r in read_records(results)
                if isinstance(r, LoadRecord) and r.phase == "together"}
    return {s.name for s in scenarios if all((s.name, m.name) in together for m in s.members)}


def run_interference(
    request: InterferenceRequest, progress: Callable[[str], None] = lambda _: None
) -> InterferenceFit | None:
    """Run the scenarios not yet recorded, then rewrite the CSV and the fit."""
    t_end = time.time() + request.budget_s if request.budget_s else float("inf")
    request.out.mkdir(parents=True, exist_ok=True)
    results = request.out / "interference.jsonl"
    done = done_scenarios(results, request.scenarios)
    todo = [s for s in request.scenarios if s.name not in done]
    daemon = mps_daemon.ensure_daemon(request.cache_dir / "mps") if todo else None
    try:
        for scenario in todo:
            needed = request.start_guess_s + (len(scenario.members) + 1) * request.phase_s + 20
            if time.time() + needed > t_end:
                progress(f"skipping {scenario.name}: not enough budget left")
                continue
            progress(f"scenario {scenario.name}")
            _run_scenario(request, scenario, daemon, results, t_end)
    finally:
        if daemon is not None:
            mps_daemon.stop_daemon(daemon)
    return export(request, results)


def _run_scenario(
    request: InterferenceRequest, scenario: Scenario, daemon: mps_daemon.MpsDaemon,
    results: Path, t_end: float,
) -> None:  # fmt: skip
    control = request.cache_dir / "interference" / scenario.name
    shutil.rmtree(control, ignore_errors=True)
    control.mkdir(parents=True)
    python = request.engine_python or os.environ.get("FINESERVE_ENGINE_PYTHON") or "python3"
    deadline = min(t_end - 10, time.time() + 3600)
    procs = []
    with open(request.out / "interference.log", "a", encoding="utf-8") as log:
        for member in scenario.members:
            job = InterferenceJob(
                _label(member, request.gpu),
                _engine_args(member, request.load, request.cache_dir / "models"), member.name,
                scenario.name, request.load, str(control), str(results), deadline,
            )  # fmt: skip
            job_path = control / f"{member.name}.job.json"
            write_job(job, job_path)
            env = worker_env(request.cache_dir, daemon.client_env(member.sm_pct))
            procs.append(subprocess.Popen(
                [python, "-m", "fineserve.profiles.measure.worker", "load", str(job_path)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            names = [m.name for m in scenario.members]
            if _wait_for(control, [f"{n}.ready" for n in names], READY_TIMEOUT_S, procs):
                phases = [(f"alone-{n}", (n,)) for n in names] + [("together", tuple(names))]
                for i, (name, active) in enumerate(phases):
                    go = {"name": name, "duration_s": request.phase_s, "active": list(active)}
                    (control / f"phase-{i}.go").write_text(json.dumps(go))
                    done = [f"phase-{i}.{n}.done" for n in names]
                    if not _wait_for(control, done, request.phase_s * 3 + 60, procs):
                        break
        finally:
            (control / "stop").write_text("")
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    kill_group(proc)


def _wait_for(control: Path, names: list[str], timeout: float,
              procs: list[subprocess.Popen[bytes]]) -> bool:  # fmt: skip
    """Wait until every file exists; False on timeout, a failure file or a dead worker."""
    end = time.time() + timeout
    while time.time() < end:
        if all((control / n).exists() for n in names):
            return True
        if any(control.glob("*.failed")) or any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.2)
    return False


def export(request: InterferenceRequest, results: Path) -> InterferenceFit | None:
    """Rewrite interference.csv and interference-fit.json from the records."""
    rows, samples = table_rows(request, read_records(results))
    with open(request.out / "interference.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if not samples:
        return None
    fit = fit_interference(samples, request.gpu)
    fit.save(request.out / "interference-fit.json")
    return fit


def table_rows(
    request: InterferenceRequest, records: list[object]
) -> tuple[list[dict[str, object]], list[InterferenceSample]]:
    """Per member and phase: alone vs together medians, slowdown, HBM demands."""
    loads = [r for r in records if isinstance(r, LoadRecord)]
    peak = gpu_spec(request.gpu).hbm_bytes_per_s
    rows: list[dict[str, object]] = []
    samples: list[InterferenceSample] = []
    for scenario in {r.scenario for r in loads}:
        mine = {(r.member, r.phase): r for r in loads if r.scenario == scenario}
        together = {m: r for (m, ph), r in mine.items() if ph == "together"}
        alone = {m: mine.get((m, f"alone-{m}")) for m in together}
        if not together or any(a is None or not a.decode_steps_s for a in alone.values()):
            continue
        demand = {m: _decode_demand(a, peak) for m, a in alone.items()}  # type: ignore[arg-type]
        for m, rec in together.items():
            a = alone[m]
            assert a is not None
            others = sum(d for k, d in demand.items() if k != m)
            spec = ModelSpec(resolve_arch(rec.label.model), Precision.parse(rec.label.weights,
                                                                              rec.label.kv))
            for phase, a_vals, t_vals, own in (
                ("decode", a.decode_steps_s, rec.decode_steps_s, demand[m]),
                ("prefill", a.ttft_s, rec.ttft_s, None),
            ):
                if not a_vals or not t_vals:
                    continue
                alone_s, together_s = statistics.median(a_vals), statistics.median(t_vals)
                if own is None:
                    probe_bytes = spec.weight_bytes() + request.load.probe_tokens * (
                        spec.kv_bytes_per_token())
                    own = hbm_demand(probe_bytes, alone_s, peak)
                slowdown = together_s / alone_s
                samples.append(InterferenceSample(phase, own, others, slowdown))
                rows.append({
                    "scenario": scenario, "member": m, "model": rec.label.model,
                    "precision": spec.precision.name, "sm_pct": rec.label.sm_pct,
                    "phase": phase, "alone_s": alone_s, "together_s": together_s,
                    "slowdown": slowdown, "self_demand": own, "others_demand": others,
                    "samples": f"{len(a_vals)}/{len(t_vals)}",
                })  # fmt: skip
    rows.sort(key=lambda r: (str(r["scenario"]), str(r["member"]), str(r["phase"])))
    return rows, samples


def _decode_demand(alone: LoadRecord, peak: float) -> float:
    spec = ModelSpec(resolve_arch(alone.label.model),
                     Precision.parse(alone.label.weights, alone.label.kv))
    moved = spec.weight_bytes() + alone.batch * alone.context * spec.kv_bytes_per_token()
    return hbm_demand(moved, statistics.median(alone.decode_steps_s), peak)
