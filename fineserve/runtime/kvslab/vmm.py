"""CUDA driver virtual memory for slab-backed KV tensors (``cuda.bindings``, imported lazily).

Each KV tensor gets one reserved virtual range for its whole virtual maximum; slabs are mapped
into it and unmapped out of it, so tensor addresses never move and captured CUDA graphs stay
valid. A slab is one ``cuMemCreate`` + ``cuMemMap`` + ``cuMemSetAccess`` per plane per layer
(the driver's ``cuMemMap`` takes no offset into a handle, so handles are per range), zeroed on
a private stream (fp8 garbage can decode as NaN). Everything runs on the engine's context; the
background thread makes it current before each call.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fineserve.runtime.kvslab.engine import MapError
from fineserve.runtime.kvslab.errors import KvSlabError, UnsupportedEngine
from fineserve.runtime.kvslab.layout import KvLayout

log = logging.getLogger("fineserve.kvslab")


def _driver() -> Any:
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cuda as driver  # older cuda-python
        except ImportError as exc:
            raise UnsupportedEngine(
                "KV Slab needs CUDA driver bindings (cuda.bindings)",
                hint="pip install cuda-python matching the driver") from exc
    return driver


class _Cu:
    """Thin checked wrapper: every call raises on error, OOM as ``MapError``."""

    def __init__(self) -> None:
        self.d = _driver()

    def __call__(self, name: str, *args: Any) -> Any:
        out = getattr(self.d, name)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if err != self.d.CUresult.CUDA_SUCCESS:
            if err == self.d.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
                raise MapError(f"{name}: out of device memory")
            raise KvSlabError(f"{name} failed: {err!r}")
        return rest[0] if len(rest) == 1 else rest


class _RawTensor:
    """``__cuda_array_interface__`` over a range: the fallback import, valid only once the
    range's first granule is mapped (torch asks the runtime who owns the pointer)."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,), "typestr": "|i1", "data": (ptr, False), "version": 3,
            "strides": None, "stream": None}


class VmmMapper:
    """Reserve ``num_tensors`` ranges of ``layout.tensor_bytes``; map/unmap slabs in all."""

    def __init__(self, layout: KvLayout, num_tensors: int, device: int) -> None:
        self.cu, self.layout, self.device = _Cu(), layout, device
        d = self.cu.d
        self.ctx = self.cu("cuCtxGetCurrent")
        if not int(self.ctx):
            raise KvSlabError("KV Slab: no current CUDA context in the allocating thread")
        prop = d.CUmemAllocationProp()
        prop.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = device
        self.prop = prop
        gran = self.cu("cuMemGetAllocationGranularity", prop,
                       d.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM)
        if layout.granule % int(gran):
            raise UnsupportedEngine(f"driver granularity {gran} B does not divide the slab "
                                    f"granule {layout.granule} B")
        access = d.CUmemAccessDesc()
        access.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = device
        access.flags = d.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.access = access
        self.size = -(-layout.tensor_bytes // layout.granule) * layout.granule
        self.bases = [int(self.cu("cuMemAddressReserve", self.size, layout.granule, 0, 0))
                      for _ in range(num_tensors)]
        self.stream = self.cu("cuStreamCreate", d.CUstream_flags.CU_STREAM_NON_BLOCKING.value)
        self.handles: dict[int, list[tuple[int, int, Any]]] = {}  # slab -> (addr, n, handle)
        self._lock = threading.Lock()

    def tensors(self) -> list[Any]:
        """One ``torch.int8`` tensor per reserved range, on this mapper's device.

        Built through DLPack (``tensorwrap``), so it works before any slab is mapped; torch
        never owns the memory (``close`` frees it, after the tensors are dead).
        """
        from fineserve.runtime.kvslab.tensorwrap import device_tensor

        try:
            return [device_tensor(b, self.layout.tensor_bytes, self.device) for b in self.bases]
        except Exception as exc:  # an odd torch build: the interface works once slab 0 is mapped
            if 0 not in self.handles:
                raise KvSlabError(f"KV Slab: cannot wrap the KV ranges as tensors ({exc}) "
                                  "and slab 0 is not mapped for the fallback") from exc
            import torch

            log.warning("KV Slab: DLPack import failed (%s); using __cuda_array_interface__",
                        exc)
            dev = torch.device("cuda", self.device)
            return [torch.as_tensor(_RawTensor(b, self.layout.tensor_bytes), device=dev)
                    for b in self.bases]

    def map_slab(self, slab: int) -> None:
        with self._lock:
            self.cu("cuCtxSetCurrent", self.ctx)
            done: list[tuple[int, int, Any]] = []
            try:
                for base in self.bases:
                    for off, n in self.layout.slab_ranges(slab):
                        h = self.cu("cuMemCreate", n, self.prop, 0)
                        try:
                            self.cu("cuMemMap", base + off, n, 0, h, 0)
                        except Exception:
                            self.cu("cuMemRelease", h)
                            raise
                        done.append((base + off, n, h))
                        self.cu("cuMemSetAccess", base + off, n, [self.access], 1)
                        self.cu("cuMemsetD8Async", base + off, 0, n, self.stream)
                self.cu("cuStreamSynchronize", self.stream)
            except Exception:
                self._release(done)  # never leave a half-mapped slab behind
                raise
            self.handles[slab] = done

    def unmap_slab(self, slab: int) -> None:
        with self._lock:
            self.cu("cuCtxSetCurrent", self.ctx)
            self._release(self.handles.pop(slab))

    def mapped_bytes(self) -> int:
        return sum(n for hs in self.handles.values() for _, n, _ in hs)

    def close(self) -> None:
        """Unmap everything and free the reservations (tensors must be dead)."""
        with self._lock:
            self.cu("cuCtxSetCurrent", self.ctx)
            for slab in list(self.handles):
                self._release(self.handles.pop(slab))
            for b in self.bases:
                self.cu("cuMemAddressFree", b, self.size)
            self.bases = []

    def _release(self, done: list[tuple[int, int, Any]]) -> None:
        for addr, n, h in reversed(done):
            self.cu("cuMemUnmap", addr, n)
            self.cu("cuMemRelease", h)
