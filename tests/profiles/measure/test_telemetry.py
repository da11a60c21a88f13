"""GPU telemetry of a point: NVML read after each run (a fake NVML module stands in for the
library here; the GPU session runs the real one), summarized into the point record."""

from __future__ import annotations

import json

import pytest

from fineserve.profiles.measure import engine as eng
from fineserve.profiles.measure import worker
from fineserve.profiles.measure.records import (
    PREFILL_METHOD,
    PointRecord,
    PointSpec,
    dumps,
    loads,
)
from fineserve.profiles.measure.telemetry import GpuProbe, Sample, Telemetry, summarize
from tests.profiles.measure.test_worker import LABEL, job


class FakeNvml:
    """Answers clocks / power / reasons from lists, one per call; a listed exception raises."""

    NVML_CLOCK_SM = 1

    def __init__(self, clocks, power_mw, reasons, old_name: bool = False) -> None:
        self.clocks, self.power, self.masks = list(clocks), list(power_mw), list(reasons)
        self.calls: list[str] = []
        if old_name:  # nvidia-ml-py before the "clocks event" rename
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def _next(self, values):
        value = values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert (handle, clock) == ("gpu-3", self.NVML_CLOCK_SM)
        return self._next(self.clocks)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._next(self.power)

    def _reasons(self, handle):
        return self._next(self.masks)


def test_a_probe_reads_the_workers_gpu_and_survives_a_failed_query() -> None:
    nvml = FakeNvml([1980, RuntimeError("NVML_ERROR_UNKNOWN")], [650_000, 700_500], [0x0, 0x4],
                    old_name=True)
    probe = GpuProbe.open("cuda", lambda n: "gpu-3", nvml)
    assert probe is not None
    assert probe.sample() == Sample(1980, 650.0, 0)
    assert probe.sample() == Sample(None, 700.5, 0x4)
    probe.close()
    assert nvml.calls == ["init", "shutdown"]


def test_no_probe_on_cpu_or_where_nvml_cannot_start() -> None:
    assert GpuProbe.open("cpu", lambda n: "gpu-3", FakeNvml([], [], [])) is None

    class Broken(FakeNvml):
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    assert GpuProbe.open("cuda", lambda n: "gpu-3", Broken([], [], [])) is None
    nvml = FakeNvml([], [], [])

    def no_such_gpu(n):
        raise RuntimeError("NVML_ERROR_NOT_FOUND")

    assert GpuProbe.open("cuda", no_such_gpu, nvml) is None
    assert nvml.calls == ["init", "shutdown"]  # NVML not left open


def test_summary_gives_the_clock_range_power_and_every_reason_seen() -> None:
    t = summarize([Sample(1980, 500.0, 0x0), Sample(1755, 699.0, 0x4), Sample(1980, 690.0, 0x1),
                   Sample(None, None, None)])
    assert t == Telemetry(4, 1755, 1980, 1980, 690.0, 699.0, 0x5)
    assert t.clock_moved == pytest.approx(225 / 1980)
    assert t.reason_names() == ("gpu-idle", "sw-power-cap")
    assert Telemetry(1, reasons=0x1000 | 0x40).reason_names() == ("hw-thermal-slowdown",
                                                                 "0x1000")
    assert summarize([Sample(None, None, None)]) is None and summarize([]) is None
    assert Telemetry(0).clock_moved == 0.0


def test_records_keep_telemetry_and_read_records_without_it() -> None:
    t = Telemetry(7, 1980, 1980.0, 1980, 612.5, 640.0, 0)
    record = PointRecord(LABEL, "prefill", 1, 512, (0.0135,), PREFILL_METHOD, telemetry=t)
    assert loads(dumps(record)) == record
    old = json.loads(dumps(record))
    del old["telemetry"]  # a line written before session 8
    assert loads(json.dumps(old)).telemetry is None
    old["telemetry"] = {**json.loads(dumps(record))["telemetry"], "memory_mhz": 2619}
    assert loads(json.dumps(old)).telemetry == t  # a later field is ignored, not fatal


def test_the_worker_reads_the_gpu_after_every_run_of_a_point(monkeypatch) -> None:
    monkeypatch.setattr(eng, "decode_step",
                        lambda *a, **k: (eng.Timing(0.007, "window-ts/3"), True))
    monkeypatch.setattr(eng, "lone_decode", lambda *a, **k: 0.007)
    nvml = FakeNvml([1980, 1980, 1410, 1980], [600_000] * 4, [0, 0, 0x8, 0])
    probe = GpuProbe.open("cuda", lambda n: "gpu-3", nvml)
    point = PointSpec("decode", 1, 256, repeats=3)
    record = worker._measure(None, None, job((point,)), point, floor=None, probe=probe)
    assert record.telemetry == Telemetry(4, 1410, 1980.0, 1980, 600.0, 600.0, 0x8)
    assert record.telemetry.reason_names() == ("hw-slowdown",)
    assert worker._measure(None, None, job((point,)), point, floor=None).telemetry is None
