"""DLPack capsules built by hand: ABI sizes, and a CPU round trip where torch is installed
(the CUDA path differs only in the device field; bench/kvslab_gpu.py runs it on the H100)."""

import ctypes

import pytest

from fineserve.runtime.kvslab import tensorwrap as tw


def test_structs_have_the_dlpack_abi_layout():
    assert ctypes.sizeof(tw._DLTensor) == 48 and ctypes.sizeof(tw._DLManagedTensor) == 64
    assert tw._DLManagedTensor.deleter.offset == 56


def test_bad_pointer_or_size_is_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        tw.dlpack_capsule(0, 16, tw.KDL_CPU, 0)


def test_cpu_round_trip_shares_memory_and_outlives_its_views():
    torch = pytest.importorskip("torch")
    from torch.utils.dlpack import from_dlpack

    buf = (ctypes.c_int8 * 4096)()
    t = from_dlpack(tw.dlpack_capsule(ctypes.addressof(buf), 4096, tw.KDL_CPU, 0))
    assert t.dtype == torch.int8 and t.numel() == 4096
    t[10], t[4095] = 7, -3
    assert (buf[10], buf[4095]) == (7, -3)
    view = t.view(-1, 64)[3:5]
    del t
    buf[3 * 64] = 5
    assert int(view.sum()) == 5
