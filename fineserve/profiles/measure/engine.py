"""One vLLM offline engine and the timings taken on it (runs in the engine worker).

Standard library and vLLM only. Timings come from vLLM's per-request engine-core timestamps
(``RequestOutput.metrics``, on with ``disable_log_stats=False``) where present, else from the
wall clock around ``generate``:

- prefill of ``batch`` prompts: last first-token time minus first scheduling time of a
  ``max_tokens=1`` batch, retried when the batch did not go through in a single step;
- decode step at batch b, mean context c: ``(T(n2) - T(n1)) / (n2 - n1)`` where T(n) is the
  makespan of b requests generating n tokens with ``ignore_eos``. The prefill and the ramp-up
  cancel out, so only full-batch decode steps remain, whatever the vLLM version's scheduling.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from fineserve.profiles.measure.records import EngineArgs

PREFILL_TRIES = 4  # attempts at getting a whole prefill batch into one engine step


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    method: str  # "engine-ts" (engine-core timestamps) or "wall"
    steps: int = 1  # engine steps the batch's first tokens came from (prefill)


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


def _stats(outputs: list[Any]) -> list[Any] | None:
    """The outputs' engine-core stats, or None if any is missing or incomplete."""
    stats = [getattr(o, "metrics", None) for o in outputs]
    for s in stats:
        if s is None or not getattr(s, "first_token_ts", 0) or not getattr(s, "scheduled_ts", 0):
            return None
    return stats


def prefill(llm: Any, prompts: Prompts, batch: int, tokens: int, blocker: int = 0) -> Timing:
    """Time to prefill ``batch`` prompts of ``tokens`` tokens in one engine step.

    vLLM's engine core starts a step as soon as the first request reaches it, so a batch
    submitted at once can be split over two steps. A ``blocker`` prompt of that many tokens
    goes first: its prefill keeps the core busy while the batch arrives, and the batch then
    shares the next step. A batch still split is retried; the timing says how many steps.
    """
    timing = Timing(0.0, "wall")
    for _ in range(PREFILL_TRIES):
        batch_prompts = prompts.batch(batch, tokens)
        lead = prompts.batch(1, blocker) if blocker else []
        outputs, wall = _generate(llm, lead + batch_prompts, 1)
        stats = _stats(outputs[len(lead):])
        if stats is None:
            return Timing(wall, "wall")
        firsts = {s.first_token_ts for s in stats}
        seconds = max(firsts) - min(s.scheduled_ts for s in stats)
        timing = Timing(seconds, "engine-ts", len(firsts))
        if len(firsts) == 1:
            return timing
    return timing  # split over steps every time: recorded as such (note in the record)


def makespan(llm: Any, prompts: Prompts, batch: int, tokens: int, outputs_n: int) -> Timing:
    """Engine time from the first scheduling to the last token of one batch."""
    outputs, wall = _generate(llm, prompts.batch(batch, tokens), outputs_n)
    stats = _stats(outputs)
    if stats is None:
        return Timing(wall, "wall")
    last = max(getattr(s, "last_token_ts", 0.0) or s.first_token_ts for s in stats)
    return Timing(last - min(s.scheduled_ts for s in stats), "engine-ts")


def decode_prompt_tokens(context: int, n1: int, n2: int) -> int:
    """Prompt length whose steps n1..n2 run at mean context ``context``."""
    return max(1, round(context - (n1 + n2) / 2))


def decode_step(
    llm: Any, prompts: Prompts, batch: int, context: int, n1: int, n2: int
) -> Timing:
    """One full-batch decode step at mean context ``context`` (difference of two makespans)."""
    prompt = decode_prompt_tokens(context, n1, n2)
    short = makespan(llm, prompts, batch, prompt, n1)
    long = makespan(llm, prompts, batch, prompt, n2)
    method = short.method if short.method == long.method else "wall"
    return Timing((long.seconds - short.seconds) / (n2 - n1), method)


def warm_up(llm: Any, prompts: Prompts, max_batch: int, max_prompt: int) -> None:
    """First requests pay for lazy initialisation; none of it may land in a measurement."""
    for batch, tokens, n in ((1, 16, 4), (max_batch, 16, 4), (1, max_prompt, 1)):
        _generate(llm, prompts.batch(batch, tokens), n)


def probe(llm: Any) -> dict[str, Any]:
    """What vLLM reports about its KV cache and memory (missing keys: not available)."""
    info: dict[str, Any] = {}
    cache = getattr(getattr(llm.llm_engine, "vllm_config", None), "cache_config", None)
    if cache is not None:
        info["block_size"] = getattr(cache, "block_size", None)
        info["num_blocks"] = getattr(cache, "num_gpu_blocks", None)
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


def device_memory_used(device: str) -> int | None:
    """Bytes used on GPU 0 (as CUDA_VISIBLE_DEVICES maps it), by NVML; None on CPU."""
    if device == "cpu":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML optional
        return None


def device_identity(device: str) -> tuple[str, str]:
    """(device name, driver version)."""
    if device == "cpu":
        import platform

        return f"cpu ({platform.processor() or platform.machine()})", ""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            driver = pynvml.nvmlSystemGetDriverVersion()
            return (name.decode() if isinstance(name, bytes) else str(name),
                    driver.decode() if isinstance(driver, bytes) else str(driver))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001
        return "", ""
