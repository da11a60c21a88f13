"""A torch tensor over raw device memory that torch neither owns nor inspects (DLPack by hand).

Why not ``torch.as_tensor(obj_with___cuda_array_interface__)``: torch then asks the CUDA
runtime which device owns the pointer (``cudaPointerGetAttributes``). For a reserved VMM range
whose first granule is not mapped yet the runtime answers "host memory, not registered" and
torch raises (the first H100 run failed exactly so). A DLPack capsule names its device itself,
and ``at::fromDLPack`` hands that device to ``from_blob``, so torch never looks at the pointer.

The capsule is built with ``ctypes`` (DLPack 0.8 ``DLManagedTensor``, the unversioned
``"dltensor"`` capsule every torch >= 1.10 takes). The structs must outlive the tensor (torch
calls ``deleter`` - NULL here - through them when the storage dies), so they are kept for the
life of the process: a few dozen 64-byte records per engine.
"""

from __future__ import annotations

import ctypes
from typing import Any

KDL_CPU = 1
KDL_CUDA = 2
_KDL_INT = 0
_CAPSULE_NAME = b"dltensor"  # referenced for the process lifetime: the capsule keeps the pointer


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_KEEP: list[Any] = []  # structs torch may still dereference; never freed

_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def dlpack_capsule(ptr: int, nbytes: int, device_type: int, device_id: int) -> Any:
    """An int8 ``"dltensor"`` capsule of ``nbytes`` at ``ptr`` on the given DLPack device."""
    if ptr <= 0 or nbytes <= 0:
        raise ValueError(f"dlpack_capsule: pointer {ptr:#x} / size {nbytes} must be > 0")
    shape = (ctypes.c_int64 * 1)(nbytes)
    strides = (ctypes.c_int64 * 1)(1)
    managed = _DLManagedTensor()
    t = managed.dl_tensor
    t.data, t.ndim, t.byte_offset = ptr, 1, 0
    t.device = _DLDevice(device_type, device_id)
    t.dtype = _DLDataType(_KDL_INT, 8, 1)
    t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
    managed.manager_ctx, managed.deleter = None, None
    _KEEP.append((managed, shape, strides))
    return _new_capsule(ctypes.addressof(managed), _CAPSULE_NAME, None)


def device_tensor(ptr: int, nbytes: int, device_index: int) -> Any:
    """``torch.int8`` tensor of ``nbytes`` at device pointer ``ptr`` on ``cuda:device_index``.

    Works whether or not the memory at ``ptr`` is mapped yet (nothing reads it here).
    """
    from torch.utils.dlpack import from_dlpack

    t = from_dlpack(dlpack_capsule(ptr, nbytes, KDL_CUDA, device_index))
    if t.data_ptr() != ptr or t.numel() != nbytes or t.device.index != device_index:
        raise RuntimeError(f"DLPack import gave {t.device} {t.data_ptr():#x}+{t.numel()}, "
                           f"expected cuda:{device_index} {ptr:#x}+{nbytes}")
    return t
