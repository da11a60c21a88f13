"""Which GPUs a profiling run may use, what each is, and that they are all one kind.

A profile is labelled with one catalog GPU (``H100-SXM-80GB``), so every device that measures
for it must be that kind: a host lent with an H200 beside an H100 (or instead of one) must
stop before anything starts, not write H200 latencies into H100 files. NVML numbers devices
physically and ignores ``CUDA_VISIBLE_DEVICES``; this module maps the variable (indices or
UUIDs) onto NVML's devices, so that a process pinned to GPU 1 asks about GPU 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fineserve.errors import FineserveError, SpecError
from fineserve.profiles.gpus import GIB, gpu_spec
from fineserve.runtime import nvml
from fineserve.runtime.nvml import GpuInfo

# NVML name fragment -> catalog label, most specific first ("": a kind the catalog lacks
# whose name contains a known one: an H100 NVL is not an H100 SXM, a GH200 not an H200)
_LABELS = (("H100 NVL", ""), ("GH200", ""), ("H100 PCIE", "H100-PCIe-80GB"),
           ("H100", "H100-SXM-80GB"), ("H200", "H200-SXM-141GB"), ("A100", "A100-SXM-80GB"),
           ("L40S", "L40S-48GB"))
MEMORY_TOLERANCE = 0.05  # NVML's memory total against the catalog's (H100 NVL: +17%)


@dataclass(frozen=True, slots=True)
class Device:
    """One GPU this process may use."""

    index: int  # NVML (physical) index
    uuid: str
    name: str  # NVML's name, e.g. "NVIDIA H100 80GB HBM3"
    label: str  # catalog name, e.g. "H100-SXM-80GB"; "" when the catalog lacks it
    why: str = ""  # why ``label`` is "" (the catalog's error)


def gpu_label(nvml_name: str, total_bytes: int = 0) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100-SXM-80GB`` (the catalog's names); with NVML's
    ``total_bytes``, only where it matches the catalog's memory within 5%.

    Raises:
        SpecError: a GPU the catalog does not know, or one whose memory is not the label's.
    """
    name = nvml_name.upper()
    label = next((label for needle, label in _LABELS if needle in name), "")
    if not label:
        raise SpecError(f"gpu: {nvml_name!r} is not in the GPU catalog", hint="pass --gpu")
    catalog = gpu_spec(label).memory_bytes
    if total_bytes > 0 and abs(total_bytes - catalog) > MEMORY_TOLERANCE * catalog:
        raise SpecError(f"gpu: {nvml_name!r} has {total_bytes / GIB:.1f} GiB of memory, the "
                        f"catalog's {label} {catalog / GIB:.1f} GiB: not that GPU",
                        hint="pass --gpu")
    return label


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
    return tuple(_device(g) for g in chosen)


def _device(gpu: GpuInfo) -> Device:
    try:
        return Device(gpu.index, gpu.uuid, gpu.name, gpu_label(gpu.name, gpu.total_bytes))
    except SpecError as exc:
        return Device(gpu.index, gpu.uuid, gpu.name, "", exc.message)


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
        raise SpecError(devices[0].why or f"gpu: {devices[0].name!r} is not in the GPU catalog",
                        hint="pass --gpu")
    if expected is not None and label != expected:
        raise SpecError(f"gpu: this host has {devices[0].name} ({label}), and these profiles "
                        f"are {expected}: stopped before measuring anything",
                        hint=f"run on a {expected} machine (or pass --gpu to relabel on "
                             "purpose)")
    return label


def choose_gpus(
    wanted: str, *, cpu: bool = False, label: str | None = None, expected: str | None = None,
    default: str = "H100-SXM-80GB", probe: Callable[[], Sequence[GpuInfo]] | None = None,
) -> tuple[int, tuple[Device, ...], str]:  # fmt: skip
    """(GPUs to use, their devices, profile label) for ``--gpus`` ``wanted`` (a count or
    ``all``). On CPU, or where NVML is missing but ``label`` names the GPU, no devices.

    Raises:
        SpecError: a bad count, more GPUs than visible, mixed kinds, or not ``expected``.
    """
    if wanted != "all" and (not wanted.isdigit() or int(wanted) < 1):
        raise SpecError(f"--gpus: {wanted!r} is not a GPU count or 'all'")
    if cpu:
        return (1 if wanted == "all" else int(wanted)), (), label or default
    try:
        gpus = (probe or _probe)()
    except FineserveError as exc:
        if label and wanted != "all":
            return int(wanted), (), label
        raise SpecError(f"gpu: cannot list the GPUs ({exc.message})", hint="pass --gpu") \
            from None
    devices = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus)
    kind = one_kind(devices, expected)
    n = len(devices) if wanted == "all" else int(wanted)
    if n > len(devices):
        raise SpecError(f"--gpus: {n} asked, {len(devices)} visible")
    return n, devices[:n], label or kind


def _probe() -> Sequence[GpuInfo]:
    return nvml.probe_gpus()
