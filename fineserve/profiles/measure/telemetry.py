"""The GPU's SM clock, power draw and clock-event (throttle) reasons over a measured point.

Standard library only (the engine worker imports it); NVML is optional: ``pynvml`` is
imported lazily, and without it, on CPU, or when a query fails, the fields are None.

Why: in session 7 three SM-100 engines ran slow mid-point or for a whole turn (the 3B's
prefill 2.5x slow, its blocker's step 57 ms against 22 ms the session before), and nothing
recorded said whether the GPU had lowered its clocks (power or thermal capping) or the host
was slow. The worker samples the GPU it runs on after each run of a point, with three
cheap queries and no thread: after a run the GPU has just worked, so the SM clock read is
the one the run ran at (an idle GPU lowers it only after a while).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

# NVML's clocks-event (throttle) reason bits (nvml.h, nvmlClocksEventReason*)
REASON_BITS: dict[int, str] = {
    0x1: "gpu-idle",
    0x2: "applications-clocks-setting",
    0x4: "sw-power-cap",
    0x8: "hw-slowdown",
    0x10: "sync-boost",
    0x20: "sw-thermal-slowdown",
    0x40: "hw-thermal-slowdown",
    0x80: "hw-power-brake-slowdown",
    0x100: "display-clock-setting",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading; None where the query failed."""

    sm_mhz: int | None
    power_w: float | None
    reasons: int | None  # NVML clocks-event reasons bitmask


@dataclass(frozen=True, slots=True)
class Telemetry:
    """The GPU over one point's runs (``summarize``)."""

    samples: int
    sm_mhz_min: int | None = None
    sm_mhz_median: float | None = None
    sm_mhz_max: int | None = None
    power_w_median: float | None = None
    power_w_max: float | None = None
    reasons: int | None = None  # every reason bit seen in any sample (OR)

    @property
    def clock_moved(self) -> float:
        """(max - min) / median of the SM clock: 0 when it held (or was not read)."""
        if not self.sm_mhz_median or self.sm_mhz_min is None or self.sm_mhz_max is None:
            return 0.0
        return (self.sm_mhz_max - self.sm_mhz_min) / self.sm_mhz_median

    def reason_names(self) -> tuple[str, ...]:
        """The reason bits by name (unknown bits as hex)."""
        if not self.reasons:
            return ()
        known = [name for bit, name in REASON_BITS.items() if self.reasons & bit]
        rest = self.reasons & ~sum(REASON_BITS)
        return (*known, f"{rest:#x}") if rest else tuple(known)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Telemetry:
        """From a JSONL record; keys a later version adds are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def summarize(samples: Sequence[Sample]) -> Telemetry | None:
    """The readings of one point; None when nothing was read (no NVML, CPU)."""
    clocks = [s.sm_mhz for s in samples if s.sm_mhz is not None]
    power = [s.power_w for s in samples if s.power_w is not None]
    masks = [s.reasons for s in samples if s.reasons is not None]
    if not (clocks or power or masks):
        return None
    reasons = 0
    for mask in masks:
        reasons |= mask
    return Telemetry(
        len(samples), min(clocks, default=None), statistics.median(clocks) if clocks else None,
        max(clocks, default=None), statistics.median(power) if power else None,
        max(power, default=None), reasons if masks else None,
    )  # fmt: skip


def _query(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:  # noqa: BLE001 - NVMLError of any kind: that field is not read
        return None


class GpuProbe:
    """NVML opened once per worker on its GPU; ``sample`` reads it, ``close`` ends NVML."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle
        self._reasons = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))

    @classmethod
    def open(cls, device: str, handle: Callable[[Any], Any],
             nvml: Any | None = None) -> GpuProbe | None:  # fmt: skip
        """A probe of this process's GPU (``handle(nvml)``: ``engine.nvml_handle``), or
        None on CPU or where NVML cannot start (not installed, no driver)."""
        if device == "cpu":
            return None
        try:
            if nvml is None:
                import pynvml as nvml  # type: ignore[no-redef]
            nvml.nvmlInit()
        except Exception:  # noqa: BLE001 - NVML optional
            return None
        try:
            return cls(nvml, handle(nvml))
        except Exception:  # noqa: BLE001
            _query(nvml.nvmlShutdown)
            return None

    def sample(self) -> Sample:
        nvml, h = self._nvml, self._handle
        mhz = _query(lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        milliwatts = _query(lambda: nvml.nvmlDeviceGetPowerUsage(h))
        reasons = _query(lambda: self._reasons(h)) if self._reasons is not None else None
        return Sample(None if mhz is None else int(mhz),
                      None if milliwatts is None else milliwatts / 1000.0,
                      None if reasons is None else int(reasons))

    def close(self) -> None:
        _query(self._nvml.nvmlShutdown)
