"""GPU pre-flight checks against a fake NVML module."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fineserve.runtime.errors import DeployError
from fineserve.runtime.nvml import GIB, GpuInfo, check_gpus, probe_gpus
from fineserve.runtime.state import Mode


class FakeNvml:
    NVML_COMPUTEMODE_DEFAULT, NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 0, 1
    NVML_COMPUTEMODE_PROHIBITED, NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 2, 3

    def __init__(self, gpus, fail=False):
        self.gpus, self.fail, self.shutdown = gpus, fail, False

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * GIB, free=self.gpus[h][1])

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:04d}".encode()

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetComputeMode(self, h):
        return self.gpus[h][0]


def test_probe_reads_every_gpu():
    fake = FakeNvml([(3, 70 * GIB), (0, 80 * GIB)])
    gpus = probe_gpus(fake)
    assert gpus[0] == GpuInfo(0, "GPU-0000", "NVIDIA H100 80GB HBM3", "exclusive-process",
                              80 * GIB, 70 * GIB)
    assert gpus[1].compute_mode == "default"
    assert fake.shutdown


def test_no_driver_is_one_line_with_cpu_hint():
    with pytest.raises(DeployError, match="NVML cannot start.*") as exc:
        probe_gpus(FakeNvml([], fail=True))
    assert "--cpu" in str(exc.value)


def _gpu(i=0, mode="exclusive-process", free=80):
    return GpuInfo(i, f"GPU-{i}", "H100", mode, 80 * GIB, free * GIB)


def test_missing_gpu_index():
    with pytest.raises(DeployError, match="plan uses GPU 1 but this host has 1"):
        check_gpus([_gpu()], {1: GIB}, {1: 1}, Mode.MPS)


def test_not_enough_free_memory():
    with pytest.raises(DeployError, match="GPU 0 has 10.0 GiB free.*need 20.0 GiB"):
        check_gpus([_gpu(free=10)], {0: 20 * GIB}, {0: 2}, Mode.MPS)


def test_exclusive_mode_without_mps_cannot_share():
    with pytest.raises(DeployError, match="without MPS only one process"):
        check_gpus([_gpu()], {0: GIB}, {0: 2}, Mode.NO_MPS)
    assert check_gpus([_gpu()], {0: GIB}, {0: 1}, Mode.NO_MPS) == []


def test_default_mode_under_mps_warns():
    warnings = check_gpus([_gpu(mode="default")], {0: GIB}, {0: 3}, Mode.MPS)
    assert len(warnings) == 1 and "EXCLUSIVE_PROCESS is recommended" in warnings[0]


def test_prohibited_and_exclusive_thread():
    with pytest.raises(DeployError, match="PROHIBITED"):
        check_gpus([_gpu(mode="prohibited")], {0: GIB}, {0: 1}, Mode.MPS)
    with pytest.raises(DeployError, match="EXCLUSIVE_THREAD"):
        check_gpus([_gpu(mode="exclusive-thread")], {0: GIB}, {0: 1}, Mode.MPS)
