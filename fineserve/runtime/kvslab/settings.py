"""Plugin settings from the environment (vLLM plugins take no CLI flags) and config checks.

Pure: parsing and validation only, so both are unit-tested without vLLM or CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fineserve.runtime.kvslab.errors import KvSlabError, UnsupportedEngine

SUPPORTED_VLLM = "0.26.0"


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """``FINESERVE_KVSLAB_*`` variables. Without a ledger the engine is elastic on its own
    (grows to its virtual maximum, never shrinks): useful for single-engine overhead runs."""

    enabled: bool = False  # FINESERVE_KVSLAB=1
    ledger: str | None = None  # FINESERVE_KVSLAB_LEDGER: pool ledger path (/dev/shm/...)
    engine_id: str = "engine"  # FINESERVE_KVSLAB_ENGINE_ID
    floor_bytes: int = 0  # FINESERVE_KVSLAB_FLOOR_BYTES: the plan's per-engine KV floor
    slo_weight: float = 1.0  # FINESERVE_KVSLAB_SLO_WEIGHT
    grow_ahead_slabs: float = 1.0  # FINESERVE_KVSLAB_GROW_AHEAD: free slabs kept online
    poll_s: float = 0.005  # FINESERVE_KVSLAB_POLL_S: background thread period while busy
    idle_poll_s: float = 0.05  # FINESERVE_KVSLAB_IDLE_POLL_S: ... when nothing is pending
    publish_s: float = 0.05  # FINESERVE_KVSLAB_PUBLISH_S: heartbeat / demand period
    tick_s: float = 0.5  # FINESERVE_KVSLAB_TICK_S: pool retarget period
    heartbeat_timeout_s: float = 10.0  # FINESERVE_KVSLAB_HEARTBEAT_TIMEOUT_S
    floor_wait_s: float = 120.0  # FINESERVE_KVSLAB_FLOOR_WAIT_S: wait for others to drain
    min_slab_granules: int = 1  # FINESERVE_KVSLAB_SLAB_GRANULES
    preempt_draining_first: bool = True  # FINESERVE_KVSLAB_PREEMPT_DRAINING: see plugin

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginSettings:
        """Read the variables; a malformed one is a one-line ``KvSlabError`` naming it."""
        env = os.environ if env is None else env
        pre = "FINESERVE_KVSLAB"
        flag = env.get(pre, "0")
        if flag not in ("0", "1", ""):
            raise KvSlabError(f"{pre} must be 0 or 1, got {flag!r}")

        def num(name: str, kind: type, default: float | int, low: float) -> float | int:
            raw = env.get(f"{pre}_{name}")
            if raw is None or raw == "":
                return default
            try:
                v = kind(raw)
            except ValueError:
                raise KvSlabError(f"{pre}_{name} must be a number, got {raw!r}") from None
            if v < low:
                raise KvSlabError(f"{pre}_{name} must be >= {low}, got {raw!r}")
            return v

        pd = env.get(f"{pre}_PREEMPT_DRAINING", "1")
        if pd not in ("0", "1", ""):
            raise KvSlabError(f"{pre}_PREEMPT_DRAINING must be 0 or 1, got {pd!r}")
        return cls(
            enabled=flag == "1", ledger=env.get(f"{pre}_LEDGER") or None,
            preempt_draining_first=pd != "0",
            engine_id=env.get(f"{pre}_ENGINE_ID") or f"engine-{os.getpid()}",
            floor_bytes=int(num("FLOOR_BYTES", int, 0, 0)),
            slo_weight=float(num("SLO_WEIGHT", float, 1.0, 1e-6)),
            grow_ahead_slabs=float(num("GROW_AHEAD", float, 1.0, 0.0)),
            poll_s=float(num("POLL_S", float, 0.005, 1e-4)),
            idle_poll_s=float(num("IDLE_POLL_S", float, 0.05, 1e-4)),
            publish_s=float(num("PUBLISH_S", float, 0.05, 1e-3)),
            tick_s=float(num("TICK_S", float, 0.5, 1e-3)),
            heartbeat_timeout_s=float(num("HEARTBEAT_TIMEOUT_S", float, 10.0, 0.01)),
            floor_wait_s=float(num("FLOOR_WAIT_S", float, 120.0, 0.0)),
            min_slab_granules=int(num("SLAB_GRANULES", int, 1, 1)))


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What the plugin checks about the engine before backing its KV with slabs."""

    vllm_version: str
    tensor_parallel: int
    pipeline_parallel: int
    sleep_mode: bool
    kv_groups: int
    spec_kind: str  # class name of the KV cache spec, e.g. FullAttentionSpec
    kv_connector: bool = False  # --kv-transfer-config: connectors may re-lay out the cache
    packed_kv: bool = False  # KVCacheTensor.block_stride > 0: all layers in one tensor


def check_supported(f: EngineFacts) -> None:
    """Raise ``UnsupportedEngine`` naming the first unsupported setting."""
    hint = "unset FINESERVE_KVSLAB to run this engine with a static KV cache"
    if f.vllm_version != SUPPORTED_VLLM:
        raise UnsupportedEngine(f"KV Slab supports vLLM {SUPPORTED_VLLM} only, found "
                                f"{f.vllm_version} (it hooks private KV internals)", hint=hint)
    if f.tensor_parallel != 1 or f.pipeline_parallel != 1:
        raise UnsupportedEngine(
            f"KV Slab needs tensor_parallel_size=1 and pipeline_parallel_size=1, got "
            f"{f.tensor_parallel} and {f.pipeline_parallel}", hint=hint)
    if f.sleep_mode:
        raise UnsupportedEngine("KV Slab cannot be combined with enable_sleep_mode (both map "
                                "the KV cache)", hint=hint)
    if f.kv_groups != 1 or f.spec_kind != "FullAttentionSpec":
        raise UnsupportedEngine(
            f"KV Slab supports one full-attention KV group, got {f.kv_groups} group(s) of "
            f"{f.spec_kind} (hybrid, sliding-window and MLA models are not handled)", hint=hint)
    if f.kv_connector:
        raise UnsupportedEngine("KV Slab cannot be combined with a KV connector "
                                "(--kv-transfer-config): it may re-lay out and copy the cache",
                                hint=hint)
    if f.packed_kv:
        raise UnsupportedEngine("KV Slab needs one KV tensor per layer, got a packed "
                                "cross-layer layout (KVCacheTensor.block_stride > 0)", hint=hint)
