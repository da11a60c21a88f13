"""HBM-bandwidth interference between engines co-located on one GPU (MPS).

MPS partitions SMs, not memory bandwidth, so co-located engines slow each other down when
their decode steps together want more bytes per second than the GPU's HBM delivers. The model:

* A step of engine e moves ``bytes_e`` through HBM - its weights (per rank) once, plus the
  KV cache of every decoding sequence (context tokens x KV bytes per token per rank) - and
  takes ``t_e`` seconds alone (the latency model at e's SM share). Its bandwidth demand while
  it runs is ``d_e = bytes_e / t_e``.
* At the start of a step, with demands as fractions of the GPU's peak HBM bandwidth
  (``u = d / peak``), ``u_self`` for e and ``u_others`` for the other steps in flight on its
  GPU, the step stretches by the profiler's fitted model (``fineserve.profiles.measure.
  interference_fit``, issue 5)

      f(u_self, u_others) = (1 + a u_others) x max(1, (u_self + u_others) / capacity)

  normalised by ``f(u_self, 0)``: the latency model measured e alone, so a lone engine is
  never slowed. ``capacity`` is the total demand at which bandwidth saturates and everyone
  slows in proportion; ``a`` the mild cost of sharing below saturation. Steps with decoders
  use the decode fit, prefill-only steps the prefill fit. A TP engine takes the largest
  slowdown over its GPUs.
* Quasi-static: the slowdown is fixed when a step starts from the steps in flight then; later
  arrivals do not re-stretch it. Steps are short (tens of ms) against request lifetimes, so
  this first-order model is what the calibration targets.

Defaults (no sharing cost, saturation at 85% of peak) are placeholders until
``bench/interference_h100.py`` measures co-located engines on an H100;
``InterferenceParams.load`` reads its fit (``interference-fit.json``) or a plain JSON/YAML
mapping ``{a, capacity}`` (both phases) or ``{decode: {a, capacity}, prefill: {...}}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fineserve.errors import SpecError
from fineserve.profiles.measure.interference_fit import FORMAT, InterferenceFit, SlowdownParams

UNCALIBRATED = SlowdownParams(a=0.0, capacity=0.85)


@dataclass(frozen=True, slots=True)
class InterferenceParams:
    decode: SlowdownParams = field(default_factory=lambda: UNCALIBRATED)
    prefill: SlowdownParams = field(default_factory=lambda: UNCALIBRATED)
    source: str = "default (uncalibrated)"  # where the numbers come from

    def __post_init__(self) -> None:
        for phase in ("decode", "prefill"):
            p = getattr(self, phase)
            if not (math.isfinite(p.a) and p.a >= 0):
                raise SpecError(f"interference.{phase}.a: must be >= 0, got {p.a}")
            if not (p.capacity > 0):
                raise SpecError(f"interference.{phase}.capacity: must be > 0, got {p.capacity}")

    @classmethod
    def load(cls, path: Path) -> InterferenceParams:
        """Read the profiler's fit or a plain mapping (see the module docstring)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"interference file {path}: cannot read ({exc.strerror})") from None
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the same user error
            raise SpecError(f"interference file {path}: not valid JSON/YAML ({exc})") from None
        if not isinstance(data, dict):
            raise SpecError(f"interference file {path}: expected a mapping of parameters")
        if "format" in data and data["format"] == FORMAT:
            fit = InterferenceFit.load(path)
            return cls(fit.decode, fit.prefill, f"{path} ({fit.gpu})")
        phases = data if {"decode", "prefill"} & set(data) else {"decode": data,
                                                                   "prefill": data}
        out = {}
        for phase in ("decode", "prefill"):
            body = phases.get(phase, {})
            if not isinstance(body, dict):
                raise SpecError(f"interference file {path}: {phase} must be a mapping")
            for key in body:
                if key not in ("a", "capacity"):
                    raise SpecError(f"interference file {path}: unknown key {key!r}",
                                    hint="known keys: a, capacity (optionally under decode / "
                                         "prefill)")
            out[phase] = SlowdownParams(float(body.get("a", UNCALIBRATED.a)),
                                        float(body.get("capacity", UNCALIBRATED.capacity)))
        return cls(out["decode"], out["prefill"], str(path))


def slowdown(u_self: float, u_others: float, params: SlowdownParams) -> float:
    """Stretch factor (>= 1, exactly 1 with no other step in flight) of a step demanding
    ``u_self`` of peak bandwidth while the other steps on its GPU demand ``u_others``."""
    if u_others <= 0:
        return 1.0
    return params.slowdown(u_self, u_others) / params.slowdown(u_self, 0.0)


class HbmShare:
    """Demand (fraction of peak) of the steps in flight on each GPU; engines call ``begin`` and
    ``end`` around each step."""

    def __init__(self, peak_bytes_per_s: dict[int, float], params: InterferenceParams) -> None:
        self.params = params
        self.peak = dict(peak_bytes_per_s)
        self.demand = dict.fromkeys(peak_bytes_per_s, 0.0)
        self.active = dict.fromkeys(peak_bytes_per_s, 0)

    def begin(self, gpus: tuple[int, ...], seconds: float, step_bytes: float, decoding: bool,
              alone_s: float | None = None) -> tuple[float, float]:
        """Register a step that takes ``seconds`` before interference; returns (stretched
        seconds, demand in bytes/s, to hand back to ``end``). The demand is ``step_bytes``
        over ``alone_s``, the step's time alone as profiled (the fit's definition of demand;
        None: ``seconds``)."""
        t = seconds if alone_s is None or alone_s <= 0 else alone_s
        own = step_bytes / t if t > 0 else 0.0
        fit = self.params.decode if decoding else self.params.prefill
        factor = 1.0
        for g in gpus:
            peak = self.peak[g]
            if self.active[g]:
                factor = max(factor, slowdown(own / peak, self.demand[g] / peak, fit))
            self.demand[g] += own
            self.active[g] += 1
        return seconds * factor, own

    def end(self, gpus: tuple[int, ...], demand: float) -> None:
        for g in gpus:
            self.demand[g] -= demand
            self.active[g] -= 1
            if self.active[g] == 0:
                self.demand[g] = 0.0  # drop float drift when the GPU goes quiet

    def check_integrity(self) -> None:
        for g, n in self.active.items():
            assert n >= 0 and self.demand[g] >= -1e-3 * self.peak[g], (g, n, self.demand[g])
