"""GPU kinds and CUDA_VISIBLE_DEVICES mapping of a profiling run (no GPU needed)."""

from __future__ import annotations

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.measure.devices import one_kind, visible_devices
from fineserve.runtime.nvml import GpuInfo

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"


MIB = 1 << 20
MEMORY = {H100: 81559 * MIB, H200: 143771 * MIB, "NVIDIA H100 NVL": 95830 * MIB}  # NVML's


def gpus(*names: str) -> list[GpuInfo]:
    return [GpuInfo(i, f"GPU-{i}", n, "default", MEMORY.get(n, 80 << 30), 80 << 30)
            for i, n in enumerate(names)]


def test_an_h100_nvl_is_not_labelled_an_h100_sxm():
    with pytest.raises(SpecError, match="'NVIDIA H100 NVL' is not in the GPU catalog"):
        one_kind(visible_devices(None, gpus("NVIDIA H100 NVL")), "H100-SXM-80GB")


def test_a_gpu_whose_memory_is_not_its_labels_is_refused():
    host = [GpuInfo(0, "GPU-0", H100, "default", 95830 * MIB, 1)]  # an H100 name, 94 GiB
    with pytest.raises(SpecError, match="93.6 GiB of memory, the catalog's H100-SXM-80GB"):
        one_kind(visible_devices(None, host), "H100-SXM-80GB")


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


class FakeNvml:
    """NVML's two lookups, recording how the engine side asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, object]] = []

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802 - NVML's name
        self.asked.append(("index", index))
        return f"handle-{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> str:  # noqa: N802 - NVML's name
        self.asked.append(("uuid", uuid))
        return f"handle-{uuid.decode()}"


@pytest.mark.parametrize(("visible", "asked"), [
    ("GPU-1234,GPU-5678", ("uuid", b"GPU-1234")),  # what MPS clients of the profiler get
    ("1", ("index", 1)),
    (None, ("index", 0)),
])
def test_the_engine_side_asks_nvml_about_its_own_gpu(monkeypatch, visible, asked):
    from fineserve.profiles.measure import engine

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = FakeNvml()
    engine.nvml_handle(nvml)
    assert nvml.asked == [asked]


def test_choose_gpus_counts_all_of_one_kind_and_checks_the_count(monkeypatch):
    from fineserve.profiles.measure.devices import choose_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    host = gpus(H100, H100)
    n, devices, label = choose_gpus("all", expected="H100-SXM-80GB", probe=lambda: host)
    assert (n, [d.uuid for d in devices], label) == (2, ["GPU-0", "GPU-1"], "H100-SXM-80GB")
    assert choose_gpus("1", probe=lambda: host)[0] == 1
    with pytest.raises(SpecError, match="3 asked, 2 visible"):
        choose_gpus("3", probe=lambda: host)
    with pytest.raises(SpecError, match="not a GPU count"):
        choose_gpus("0", probe=lambda: host)
    assert choose_gpus("2", cpu=True) == (2, (), "H100-SXM-80GB")


def test_choose_gpus_without_nvml_needs_a_label_and_a_count():
    from fineserve.profiles.measure.devices import choose_gpus
    from fineserve.runtime.errors import DeployError

    def no_nvml():
        raise DeployError("NVML cannot start")

    assert choose_gpus("2", label="H100-SXM-80GB", probe=no_nvml) == (2, (), "H100-SXM-80GB")
    with pytest.raises(SpecError, match="cannot list the GPUs"):
        choose_gpus("all", label="H100-SXM-80GB", probe=no_nvml)
    with pytest.raises(SpecError, match="cannot list the GPUs"):
        choose_gpus("2", probe=no_nvml)
