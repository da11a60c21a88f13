"""One vLLM offline engine and the timings taken on it (runs in the engine worker).

Standard library and vLLM only. Timings come from vLLM's per-request engine-core timestamps
(``RequestOutput.metrics``, on with ``disable_log_stats=False``; ``scheduled``, ``first`` and
``last`` token times, all stamped by the engine core) where present, else from the wall clock
around ``generate``. ``timing.py`` turns the timestamps into step times; see docs/profiler.md.

- prefill of ``batch`` prompts: behind a *blocker* prompt that fills one step's token budget,
  the batch shares the next step; its latency is that step timed on the device
  (``steptimer.py``, ``time_steps``), else from the later of (blocker's first token, batch
  scheduled) to the batch's first token. With async scheduling (vLLM's default on GPUs)
  the batch is scheduled while the blocker's step still runs, so its own scheduling time
  would count the blocker's step too (the bug of the first H100 run).
- decode step at batch b, mean context c: one run of b requests generating n tokens; the
  window from the last first token to the first last token holds only full-batch decode
  steps, and their count follows from the number of steps the first tokens came from.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from fineserve.profiles.measure import steptimer
from fineserve.profiles.measure.records import (
    DECODE_METHOD,
    PREFILL_METHOD,
    STAMP_PREFILL_METHOD,
    EngineArgs,
)
from fineserve.profiles.measure.timing import (
    Stamps,
    decode_prompt_tokens,
    decode_window,
    device_prefill_step,
    device_probe_problem,
    late_lead,
    prefill_step,
)

PREFILL_TRIES = 6  # attempts at a clean prefill run: one step, not ridden along, not late


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    method: str  # records.PREFILL_METHOD / DECODE_METHOD (engine-core timestamps) or "wall"
    steps: int = 1  # engine steps the batch's first tokens came from (prefill)
    lead_s: float | None = None  # the blocker's apparent step (prefill behind a blocker)
    late: bool = False  # the blocker's output stamp was late: ``seconds`` is short (timing)
    stamp_s: float | None = None  # device-timed prefill: the same step from the stamps


def start_engine(args: EngineArgs, device: str) -> Any:
    """A ``vllm.LLM`` with dummy weights, token-id prompts and CUDA graphs as configured."""
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=args.model_dir,
        load_format="dummy",
        skip_tokenizer_init=True,
        tensor_parallel_size=args.tp,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        enable_prefix_caching=False,  # repeated prompts must be computed, not looked up
        enforce_eager=args.enforce_eager,
        disable_log_stats=False,  # fills RequestOutput.metrics
        seed=args.seed,
    )
    if device != "cpu":
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    if args.quantization:
        kwargs["quantization"] = args.quantization
    if args.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    if args.dtype != "auto":
        kwargs["dtype"] = args.dtype
    if args.max_cudagraph_capture_size and not args.enforce_eager:
        kwargs["max_cudagraph_capture_size"] = args.max_cudagraph_capture_size
    return LLM(**kwargs)


class Prompts:
    """Random token-id prompts: never twice the same, so no cache can shortcut a prefill."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._hi = max(2, vocab_size - 1)

    def batch(self, batch: int, tokens: int) -> list[dict[str, list[int]]]:
        draw = self._rng.randrange
        return [{"prompt_token_ids": [draw(1, self._hi) for _ in range(tokens)]}
                for _ in range(batch)]


def _params(max_tokens: int) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                          detokenize=False)


def _generate(
    llm: Any, prompts: list[Any], max_tokens: int | list[int]
) -> tuple[list[Any], float]:
    params = ([_params(n) for n in max_tokens] if isinstance(max_tokens, list)
              else _params(max_tokens))
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return outputs, time.perf_counter() - t0


def _stamps(outputs: list[Any]) -> list[Stamps] | None:
    """The outputs' engine-core timestamps, or None if any is missing or incomplete."""
    out = []
    for o in outputs:
        m = getattr(o, "metrics", None)
        first = getattr(m, "first_token_ts", 0.0) or 0.0
        scheduled = getattr(m, "scheduled_ts", 0.0) or 0.0
        if not first or not scheduled:
            return None
        out.append(Stamps(scheduled, first, getattr(m, "last_token_ts", 0.0) or first))
    return out


def prefill(llm: Any, prompts: Prompts, batch: int, tokens: int, blocker: int = 0,
            reference: float | None = None, timed: bool = False) -> Timing:
    """Time to prefill ``batch`` prompts of ``tokens`` tokens in one engine step.

    vLLM's engine core starts a step as soon as the first request reaches it, so a batch
    submitted at once can be split over two steps. A ``blocker`` prompt of that many tokens
    (one step's whole budget) goes first: its prefill keeps the core busy while the batch
    arrives, and the batch then shares the next step. ``timed`` (the worker's steps are
    timed on the device, ``time_steps``): the latency is that step's device time
    (``timing.device_prefill_step``); a run whose batch did not get a step of its own is
    retried. Otherwise it is read from the engine-core stamps (``timing.prefill_step``),
    and also retried where the blocker's output was stamped late (``timing.late_lead``
    against ``reference``, the blocker's step on an idle engine): its step reads short.
    """
    timing = Timing(0.0, "wall")
    for _ in range(PREFILL_TRIES):
        batch_prompts = prompts.batch(batch, tokens)
        lead = prompts.batch(1, blocker) if blocker else []
        if timed:
            device_steps(llm)  # drop what an earlier call left
        outputs, wall = _generate(llm, lead + batch_prompts, 1)
        stamps = _stamps(outputs)
        if timed:
            steps = device_steps(llm)
            seconds = device_prefill_step(steps, batch * tokens, blocker)
            stamp = prefill_step(stamps[len(lead):], stamps[0] if lead else None) \
                if stamps else None
            after = [t for n, t in steps if n > 0][1 if blocker else 0:]
            timing = Timing(seconds if seconds is not None else sum(after), PREFILL_METHOD,
                            1 if seconds is not None else max(2, len(after)),
                            stamp.lead if stamp else None, False,
                            stamp.seconds if stamp else None)
            if seconds is not None:
                return timing
            continue
        if stamps is None:  # no engine timestamps: the batch alone, by the wall clock
            return Timing(_generate(llm, batch_prompts, 1)[1], "wall")
        step = prefill_step(stamps[len(lead):], stamps[0] if lead else None)
        late = (step.lead is not None and reference is not None
                and late_lead(step.lead, reference))
        timing = Timing(step.seconds, STAMP_PREFILL_METHOD,
                        step.steps + int(step.rode_along), step.lead, late)
        if step.clean and not late:
            return timing
    return timing  # unclean every time: recorded as such (note in the record)


def time_steps(llm: Any, on: bool | None = None) -> bool:
    """Device timing of the engine's steps (``steptimer``): ``None`` installs it, a bool
    turns it on or off. True where it works (one worker process: tensor parallel 1)."""
    return step_timer_problem(llm, on) is None


def step_timer_problem(llm: Any, on: bool | None = None) -> str | None:
    """What ``time_steps`` ran into, in words for the log (None: nothing)."""
    try:
        if on is None:
            answers = llm.collective_rpc(steptimer.install)
        else:
            answers = llm.collective_rpc(steptimer.enable, args=(on,))
    except Exception as exc:  # noqa: BLE001 - version-dependent internals: fall back to stamps
        return f"{type(exc).__name__}: {exc}"[:300]
    if len(answers) != 1:
        return f"{len(answers)} worker processes answered (one needed: tensor parallel 1)"
    return None if answers[0] else "the worker has no model runner step to wrap, or no torch"


def probe_device_timing(llm: Any, prompts: Prompts, blocker: int, tokens: int,
                        tries: int = 3) -> str | None:
    """Why this engine's device step times cannot be used for prefill (None: they can):
    the timer does not install, or a run of ``tokens`` behind the blocker fails
    ``timing.device_probe_problem`` ``tries`` times. Leaves the timer off."""
    if (problem := step_timer_problem(llm)) is not None:
        return f"the step timer did not install ({problem})"
    if (problem := step_timer_problem(llm, True)) is not None:
        return f"the step timer did not switch on ({problem})"
    why = "no probe run"
    try:
        for _ in range(tries):
            device_steps(llm)
            outputs, _ = _generate(llm, prompts.batch(1, blocker) + prompts.batch(1, tokens), 1)
            stamps = _stamps(outputs)
            lead = stamps[0].first - stamps[0].scheduled if stamps else None
            why = device_probe_problem(device_steps(llm), tokens, blocker, lead)
            if why is None:
                return None
    finally:
        time_steps(llm, False)
    return why


def graph_modes(llm: Any) -> dict[str, int]:
    """The timed steps' CUDA-graph modes since the timer went on (``steptimer.modes``);
    empty where the timer cannot answer."""
    try:
        answers = llm.collective_rpc(steptimer.modes)
    except Exception:  # noqa: BLE001 - a diagnostic only: never fails a point
        return {}
    return dict(answers[0]) if answers else {}


def device_steps(llm: Any) -> list[tuple[int, float]]:
    """(scheduled tokens, device seconds) of the steps since the last call."""
    answers = llm.collective_rpc(steptimer.take)
    return [(int(n), float(t)) for n, t in answers[0]] if answers else []


def lead_reference(llm: Any, prompts: Prompts, blocker: int, runs: int = 3) -> float | None:
    """The blocker prompt's step on an idle engine (engine stamps: first token - scheduled),
    shortest of ``runs``: nothing else is in flight, so its output is stamped on time."""
    steps = [lone_ttft(llm, prompts, blocker)[1] for _ in range(runs)]
    steps = [s for s in steps if s == s and s > 0]  # NaN: no engine timestamps
    return min(steps) if steps else None


def lone_ttft(llm: Any, prompts: Prompts, tokens: int) -> tuple[float, float]:
    """(wall-clock TTFT, engine step) of one ``tokens`` prompt on an idle engine.

    The cross-check of the blocker method: wall - step is the fixed cost outside the engine
    step (submit, IPC, output), nearly the same for every prompt length.
    """
    outputs, wall = _generate(llm, prompts.batch(1, tokens), 1)
    stamps = _stamps(outputs)
    return wall, (prefill_step(stamps).seconds if stamps else float("nan"))


def lone_decode(llm: Any, prompts: Prompts, context: int, tokens: int) -> float:
    """Wall-clock decode step of one request at mean ``context``: the time to generate
    ``tokens`` tokens minus the time to generate one, per extra token. The cross-check of
    the window method (no engine timestamps; at batch 1 nothing can split)."""
    prompt = decode_prompt_tokens(context, tokens)
    long = _generate(llm, prompts.batch(1, prompt), tokens)[1]
    short = _generate(llm, prompts.batch(1, prompt), 1)[1]
    return (long - short) / (tokens - 1)


def decode_step(
    llm: Any, prompts: Prompts, batch: int, context: int, tokens: int
) -> tuple[Timing, bool]:
    """One full-batch decode step at mean context ``context`` (``timing.decode_window``),
    and whether the run's step structure was as expected. Wall-clock fallback: the run's
    time per generated token (prefill included: an upper bound)."""
    prompt = decode_prompt_tokens(context, tokens)
    outputs, wall = _generate(llm, prompts.batch(batch, prompt), tokens)
    stamps = _stamps(outputs)
    window = decode_window(stamps, tokens) if stamps else None
    if window is None:
        return Timing(wall / tokens, "wall"), False
    return Timing(window.seconds, DECODE_METHOD), window.consistent


def warm_up(llm: Any, prompts: Prompts, max_batch: int, max_prompt: int, blocker: int) -> None:
    """First requests pay for lazy initialisation; none of it may land in a measurement.
    Runs every shape class the points use: small and largest batch, longest prompt, the
    blocker."""
    shapes = [(1, 16, 4), (max_batch, 16, 4), (1, max_prompt, 1)]
    if blocker:
        shapes.append((1, blocker, 1))
    for batch, tokens, n in shapes:
        _generate(llm, prompts.batch(batch, tokens), n)


def probe(llm: Any) -> dict[str, Any]:
    """What vLLM reports about its KV cache and memory (missing keys: not available)."""
    info: dict[str, Any] = {}
    cache = getattr(getattr(llm.llm_engine, "vllm_config", None), "cache_config", None)
    if cache is not None:
        info["block_size"] = getattr(cache, "block_size", None)
        info["num_blocks"] = getattr(cache, "num_gpu_blocks", None)
    scheduler = getattr(getattr(llm.llm_engine, "vllm_config", None), "scheduler_config", None)
    info["async_scheduling"] = getattr(scheduler, "async_scheduling", None)
    try:
        answers = llm.collective_rpc(_worker_probe)
    except Exception as exc:  # noqa: BLE001 - optional introspection, version-dependent
        info["probe_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return info
    if answers and isinstance(answers[0], dict):
        info.update({k: v for k, v in answers[0].items() if v is not None})
    return info


def _worker_probe(worker: Any) -> dict[str, Any]:
    """Runs inside vLLM's worker process (sent by collective_rpc)."""
    out: dict[str, Any] = {}
    runner = getattr(worker, "model_runner", None)
    usage = getattr(runner, "model_memory_usage", None)
    if usage is not None:
        out["weight_bytes"] = int(usage)
    config = getattr(runner, "kv_cache_config", None)
    if config is not None:
        tensors = getattr(config, "kv_cache_tensors", None) or []
        out["kv_cache_bytes"] = int(sum(getattr(t, "size", 0) for t in tensors)) or None
        groups = getattr(config, "kv_cache_groups", None) or []
        if groups:
            spec = groups[0].kv_cache_spec
            out["page_size_bytes"] = int(spec.page_size_bytes)
            out["spec_block_size"] = int(getattr(spec, "block_size", 0)) or None
            layers = sum(len(g.layer_names) for g in groups)
            out["kv_bytes_per_token"] = int(spec.page_size_bytes) * layers // max(
                1, int(spec.block_size))
    try:
        import torch

        if torch.cuda.is_available():
            out["torch_reserved_bytes"] = int(torch.cuda.memory_reserved())
    except Exception:  # noqa: BLE001
        pass
    return out


def versions() -> dict[str, str]:
    out = {"vllm_version": "", "torch_version": ""}
    try:
        import vllm

        out["vllm_version"] = str(vllm.__version__)
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        out["torch_version"] = str(torch.__version__)
    except Exception:  # noqa: BLE001
        pass
    return out


def nvml_handle(pynvml: Any) -> Any:
    """NVML's handle of this process's first CUDA device. NVML ignores
    ``CUDA_VISIBLE_DEVICES``; the profiler sets it to UUIDs (MPS clients name devices so), so
    the entry is looked up by UUID, or by physical index where it is a number."""
    entry = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry.encode())  # bytes: any nvidia-ml-py


def _memory_info(device: str):
    """NVML's memory info of this process's GPU (``nvml_handle``); None on CPU or without
    NVML (it is optional)."""
    if device == "cpu":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(nvml_handle(pynvml))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML optional
        return None


def device_memory_used(device: str) -> int | None:
    """Bytes used on this process's GPU, by NVML; None on CPU."""
    info = _memory_info(device)
    return None if info is None else int(info.used)


def device_memory_free(device: str) -> int | None:
    """Free bytes on this process's GPU, by NVML; None on CPU."""
    info = _memory_info(device)
    return None if info is None else int(info.free)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Which device an engine ran on: a later run compares per GPU (UUID), not per kind."""

    name: str
    driver: str
    uuid: str = ""


def device_identity(device: str) -> DeviceIdentity:
    """This process's device (``nvml_handle``); empty fields where NVML cannot tell."""
    if device == "cpu":
        import platform

        return DeviceIdentity(f"cpu ({platform.processor() or platform.machine()})", "")
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = nvml_handle(pynvml)
            return DeviceIdentity(_text(pynvml.nvmlDeviceGetName(handle)),
                                  _text(pynvml.nvmlSystemGetDriverVersion()),
                                  _text(pynvml.nvmlDeviceGetUUID(handle)))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001
        return DeviceIdentity("", "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
