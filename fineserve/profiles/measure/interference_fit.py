"""A fitted slowdown model for engines co-located under MPS (issue 5, item 2).

MPS splits the SMs, not HBM bandwidth, so co-located engines slow each other down through
memory traffic. Each engine's demand ``u`` is the fraction of peak HBM bandwidth it draws when
running alone (bytes moved per step / step time / peak). The model:

    slowdown(u_self, u_others) = (1 + a * u_others) * max(1, (u_self + u_others) / capacity)

``a`` is the mild cost of sharing below saturation (L2, memory controllers), ``capacity`` the
total demand at which bandwidth saturates and everyone slows in proportion. Fitted separately
for decode steps and for prefills (TTFT), by least squares on log slowdown. The result is a
JSON file (``InterferenceFit.save``) the simulator and planner load; docs/profiler.md gives
its format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fineserve.errors import SpecError

FORMAT = "fineserve-interference/1"
_A_RANGE = (0.0, 3.0)
_CAPACITY_RANGE = (0.3, 2.5)


@dataclass(frozen=True, slots=True)
class InterferenceSample:
    """One engine in one co-location: its slowdown against running alone."""

    phase: str  # "decode" (step time) or "prefill" (TTFT)
    self_demand: float
    others_demand: float
    slowdown: float  # co-located latency / alone latency


@dataclass(frozen=True, slots=True)
class SlowdownParams:
    a: float
    capacity: float
    samples: int = 0
    median_abs_error: float | None = None  # |predicted / measured - 1| over the samples

    def slowdown(self, self_demand: float, others_demand: float) -> float:
        saturation = max(1.0, (self_demand + others_demand) / self.capacity)
        return (1.0 + self.a * others_demand) * saturation


NO_INTERFERENCE = SlowdownParams(a=0.0, capacity=math.inf)


@dataclass(frozen=True, slots=True)
class InterferenceFit:
    gpu: str
    decode: SlowdownParams
    prefill: SlowdownParams

    def to_json(self) -> str:
        body = {"format": FORMAT, "gpu": self.gpu,
                "model": "slowdown = (1 + a * u_others) * max(1, (u_self + u_others) / capacity)",
                "demand": "bytes moved per step / step time alone / peak HBM bytes per second",
                "decode": asdict(self.decode), "prefill": asdict(self.prefill)}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json())
        return target

    @classmethod
    def load(cls, path: str | Path) -> InterferenceFit:
        """Raises SpecError naming the file for anything but this format."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            return cls(str(data["gpu"]), SlowdownParams(**data["decode"]),
                       SlowdownParams(**data["prefill"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"interference fit {path}: {exc}") from None


def hbm_demand(bytes_per_step: float, step_s: float, peak_bytes_per_s: float) -> float:
    """Fraction of peak HBM bandwidth an engine draws alone."""
    if step_s <= 0 or peak_bytes_per_s <= 0:
        raise SpecError(f"hbm demand: step {step_s} s and peak {peak_bytes_per_s} must be > 0")
    return bytes_per_step / step_s / peak_bytes_per_s


def _loss(a: np.ndarray, cap: np.ndarray, u_self: np.ndarray, u_other: np.ndarray,
          log_measured: np.ndarray) -> np.ndarray:  # fmt: skip
    """Sum of squared log errors for every (a, cap) of the broadcast arrays."""
    pred = (1 + a[..., None] * u_other) * np.maximum(1.0, (u_self + u_other) / cap[..., None])
    return ((np.log(pred) - log_measured) ** 2).sum(axis=-1)


def fit_slowdown(samples: Sequence[InterferenceSample]) -> SlowdownParams:
    """Least squares on log slowdown: a coarse grid over (a, capacity), then two finer ones
    around the best cell (deterministic, no solver dependency).

    Raises:
        SpecError: no samples, or a non-positive slowdown or demand.
    """
    if not samples:
        raise SpecError("interference fit: no samples", hint="run bench/interference_h100.py")
    for s in samples:
        if not (s.slowdown > 0 and s.self_demand >= 0 and s.others_demand >= 0):
            raise SpecError(f"interference fit: bad sample {s}")
    u_self = np.array([s.self_demand for s in samples])
    u_other = np.array([s.others_demand for s in samples])
    log_measured = np.log([s.slowdown for s in samples])
    (a_lo, a_hi), (c_lo, c_hi) = _A_RANGE, _CAPACITY_RANGE
    best = (0.0, c_hi)
    for _ in range(3):
        a_axis, c_axis = np.linspace(a_lo, a_hi, 61), np.linspace(c_lo, c_hi, 61)
        grid_a, grid_c = np.meshgrid(a_axis, c_axis, indexing="ij")
        loss = _loss(grid_a, grid_c, u_self, u_other, log_measured)
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        best = (float(a_axis[i]), float(c_axis[j]))
        da, dc = (a_hi - a_lo) / 20, (c_hi - c_lo) / 20
        a_lo, a_hi = max(_A_RANGE[0], best[0] - da), min(_A_RANGE[1], best[0] + da)
        c_lo, c_hi = max(_CAPACITY_RANGE[0], best[1] - dc), min(_CAPACITY_RANGE[1], best[1] + dc)
    params = SlowdownParams(best[0], best[1], len(samples))
    errors = [abs(params.slowdown(s.self_demand, s.others_demand) / s.slowdown - 1)
              for s in samples]
    return SlowdownParams(best[0], best[1], len(samples), float(np.median(errors)))


def fit_interference(samples: Sequence[InterferenceSample], gpu: str) -> InterferenceFit:
    """Decode and prefill fits; a phase without samples gets ``NO_INTERFERENCE``."""
    by_phase = {phase: [s for s in samples if s.phase == phase] for phase in ("decode", "prefill")}
    fits = {p: fit_slowdown(s) if s else NO_INTERFERENCE for p, s in by_phase.items()}
    return InterferenceFit(gpu, fits["decode"], fits["prefill"])
