"""GPU kinds and CUDA_VISIBLE_DEVICES mapping of a profiling run (no GPU needed)."""

from __future__ import annotations

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.measure.devices import one_kind, visible_devices
from fineserve.runtime.nvml import GpuInfo

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"


def gpus(*names: str) -> list[GpuInfo]:
    return [GpuInfo(i, f"GPU-{i}", n, "default", 80 << 30, 80 << 30) for i, n in enumerate(names)]


def test_visible_devices_by_index_and_uuid_in_the_variables_order():
    host = gpus(H100, H100, H200)
    assert [d.index for d in visible_devices(None, host)] == [0, 1, 2]
    assert [d.index for d in visible_devices("1", host)] == [1]
    assert [d.index for d in visible_devices("GPU-2,0", host)] == [2, 0]
    assert visible_devices("1", host)[0].label == "H100-SXM-80GB"


@pytest.mark.parametrize("visible", ["3", "GPU-9"])
def test_visible_devices_rejects_what_the_host_lacks(visible):
    with pytest.raises(SpecError, match="CUDA_VISIBLE_DEVICES"):
        visible_devices(visible, gpus(H100, H100))


def test_one_kind_accepts_h100s():
    assert one_kind(visible_devices(None, gpus(H100, H100)), "H100-SXM-80GB") == "H100-SXM-80GB"


def test_one_kind_refuses_a_mixed_host():
    with pytest.raises(SpecError, match="mixes GPU kinds.*GPU 1 NVIDIA H200"):
        one_kind(visible_devices(None, gpus(H100, H200)))


def test_one_kind_refuses_an_h200_for_h100_profiles():
    devices = visible_devices(None, gpus(H200, H200))
    assert one_kind(devices) == "H200-SXM-141GB"
    with pytest.raises(SpecError, match="H200-SXM-141GB.*H100-SXM-80GB: stopped"):
        one_kind(devices, "H100-SXM-80GB")


def test_one_kind_refuses_no_device_and_unknown_kinds():
    with pytest.raises(SpecError, match="no GPU"):
        one_kind(())
    with pytest.raises(SpecError, match="not in the GPU catalog"):
        one_kind(visible_devices(None, gpus("NVIDIA GeForce GTX 1080")))
