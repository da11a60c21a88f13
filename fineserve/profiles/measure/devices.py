"""Which GPUs a profiling run may use, what each is, and that they are all one kind.

A profile is labelled with one catalog GPU (``H100-SXM-80GB``), so every device that measures
for it must be that kind: a host lent with an H200 beside an H100 (or instead of one) must
stop before anything starts, not write H200 latencies into H100 files. NVML numbers devices
physically and ignores ``CUDA_VISIBLE_DEVICES``; this module maps the variable (indices or
UUIDs) onto NVML's devices, so that a process pinned to GPU 1 asks about GPU 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fineserve.errors import SpecError
from fineserve.runtime.nvml import GpuInfo

# NVML name fragment -> catalog label, most specific first
_LABELS = (("H100 PCIE", "H100-PCIe-80GB"), ("H100", "H100-SXM-80GB"),
           ("H200", "H200-SXM-141GB"), ("A100", "A100-SXM-80GB"), ("L40S", "L40S-48GB"))


@dataclass(frozen=True, slots=True)
class Device:
    """One GPU this process may use."""

    index: int  # NVML (physical) index
    uuid: str
    name: str  # NVML's name, e.g. "NVIDIA H100 80GB HBM3"
    label: str  # catalog name, e.g. "H100-SXM-80GB"; "" when the catalog lacks it


def gpu_label(nvml_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100-SXM-80GB`` (the catalog's names).

    Raises:
        SpecError: a GPU the catalog does not know.
    """
    name = nvml_name.upper()
    for needle, label in _LABELS:
        if needle in name:
            return label
    raise SpecError(f"gpu: {nvml_name!r} is not in the GPU catalog", hint="pass --gpu")


def visible_devices(visible: str | None, gpus: Sequence[GpuInfo]) -> tuple[Device, ...]:
    """The devices ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs; unset: all) names, in its order.

    Raises:
        SpecError: an index or UUID this host does not have.
    """
    by_uuid = {g.uuid: g for g in gpus}
    chosen: list[GpuInfo] = []
    entries = [g.uuid for g in gpus] if visible is None else \
        [e.strip() for e in visible.split(",") if e.strip()]
    for entry in entries:
        if entry.isdigit():
            if int(entry) >= len(gpus):
                raise SpecError(f"CUDA_VISIBLE_DEVICES: GPU {entry} is not on this host "
                                f"({len(gpus)} GPUs)", hint="fix CUDA_VISIBLE_DEVICES")
            chosen.append(gpus[int(entry)])
        elif entry in by_uuid:
            chosen.append(by_uuid[entry])
        else:
            raise SpecError(f"CUDA_VISIBLE_DEVICES: no GPU {entry!r} on this host",
                            hint="fix CUDA_VISIBLE_DEVICES")
    return tuple(Device(g.index, g.uuid, g.name, _label_or_empty(g.name)) for g in chosen)


def _label_or_empty(name: str) -> str:
    try:
        return gpu_label(name)
    except SpecError:
        return ""


def one_kind(devices: Sequence[Device], expected: str | None = None) -> str:
    """The catalog label all ``devices`` share; with ``expected``, it must be that one.

    Raises:
        SpecError: no device, devices of different kinds, an unknown one, or not ``expected``
            (an H200 lent for an H100 profile: stop before measuring).
    """
    if not devices:
        raise SpecError("gpu: no GPU is visible", hint="fix CUDA_VISIBLE_DEVICES, or --cpu")
    kinds = sorted({d.label or d.name for d in devices})
    if len(kinds) > 1:
        listing = ", ".join(f"GPU {d.index} {d.name}" for d in devices)
        raise SpecError(f"gpu: this host mixes GPU kinds ({listing}); one profile is one kind",
                        hint="pin one kind with CUDA_VISIBLE_DEVICES")
    label = devices[0].label
    if not label:
        raise SpecError(f"gpu: {devices[0].name!r} is not in the GPU catalog", hint="pass --gpu")
    if expected is not None and label != expected:
        raise SpecError(f"gpu: this host has {devices[0].name} ({label}), and these profiles "
                        f"are {expected}: stopped before measuring anything",
                        hint=f"run on a {expected} machine (or pass --gpu to relabel on "
                             "purpose)")
    return label
