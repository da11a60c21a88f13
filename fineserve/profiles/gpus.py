"""GPU specifications used by the memory model and the analytic latency estimator.

Figures are vendor datasheet numbers (dense tensor-core FLOP/s, no sparsity) and the memory
that ``nvidia-smi`` reports as total. The estimator applies its own efficiency factors; these
are peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.errors import SpecError

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: int
    sm_count: int
    hbm_bytes_per_s: float
    bf16_flops: float
    fp8_flops: float  # equals bf16_flops on parts without fp8 tensor cores
    nvlink_bytes_per_s: float = 0.0

    def flops_for(self, *, fp8_compute: bool) -> float:
        return self.fp8_flops if fp8_compute else self.bf16_flops


_GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("H100-SXM-80GB", 81559 * MIB, 132, 3.35e12, 989e12, 1979e12, 900e9),
        GpuSpec("H100-PCIe-80GB", 81559 * MIB, 114, 2.0e12, 756e12, 1513e12, 600e9),
        GpuSpec("H200-SXM-141GB", 143771 * MIB, 132, 4.8e12, 989e12, 1979e12, 900e9),
        GpuSpec("A100-SXM-80GB", 81920 * MIB, 108, 2.039e12, 312e12, 312e12, 600e9),
        GpuSpec("L40S-48GB", 46068 * MIB, 142, 0.864e12, 362e12, 733e12, 0.0),
    )
}
_ALIASES = {"h100": "H100-SXM-80GB", "h100-sxm": "H100-SXM-80GB", "h200": "H200-SXM-141GB",
            "a100": "A100-SXM-80GB", "l40s": "L40S-48GB"}


def known_gpus() -> list[str]:
    return sorted(_GPUS)


def gpu_spec(name: str, field: str = "gpu") -> GpuSpec:
    """Look a GPU up by its name or a short alias (``h100``), case-insensitively."""
    key = _ALIASES.get(name.strip().lower(), name.strip())
    for known, spec in _GPUS.items():
        if known.lower() == key.lower():
            return spec
    raise SpecError(f"{field}: unknown GPU {name!r}", hint=f"use one of {', '.join(_GPUS)}")
