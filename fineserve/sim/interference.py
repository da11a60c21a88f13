"""HBM-bandwidth interference between engines co-located on one GPU (MPS).

MPS partitions SMs, not memory bandwidth, so co-located engines slow each other down when
their decode steps together want more bytes per second than the GPU's HBM delivers. The model:

* A step of engine e moves ``bytes_e`` through HBM - its weights (per rank) once, plus the
  KV cache of every decoding sequence (context tokens x KV bytes per token per rank) - and
  takes ``t_e`` seconds alone (the latency model at e's SM share). Its bandwidth demand while
  it runs is ``d_e = bytes_e / t_e``.
* At the start of a step, the demand on each of e's GPUs is ``D = d_e + sum of the demands of
  the other steps in flight there``. The GPU delivers ``C = efficiency x peak HBM bandwidth``.
  When ``D > C`` the bandwidth is shared in proportion to demand, so e's step stretches by

      slowdown = max(1, D / C) ** exponent  x  (1 + overhead x other engines in flight)

  (``exponent`` 1 is proportional sharing; ``overhead`` is a per-neighbour cost such as cache
  thrash, 0 by default). A lone engine always gets slowdown 1: the latency model measured it
  alone. A TP engine takes the largest slowdown over its GPUs.
* Quasi-static: the slowdown is fixed when a step starts from the steps in flight then; later
  arrivals do not re-stretch it. Steps are short (tens of ms) against request lifetimes, so
  this first-order model is what the calibration targets.

Parameters are placeholders until ``bench/interference_h100.py`` measures co-located engines
on an H100; ``InterferenceParams.load`` reads its JSON or YAML output (unknown keys are an
error naming the key).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from fineserve.errors import SpecError


@dataclass(frozen=True, slots=True)
class InterferenceParams:
    efficiency: float = 0.85  # fraction of peak HBM bandwidth co-located steps draw together
    exponent: float = 1.0  # slowdown = (demand / capacity) ** exponent above capacity
    overhead: float = 0.0  # extra fractional slowdown per other engine with a step in flight
    source: str = "default (uncalibrated)"  # where the numbers come from

    def __post_init__(self) -> None:
        if not (math.isfinite(self.efficiency) and 0 < self.efficiency <= 1.5):
            raise SpecError(f"interference.efficiency: must be in (0, 1.5], got {self.efficiency}")
        if not (math.isfinite(self.exponent) and self.exponent >= 0):
            raise SpecError(f"interference.exponent: must be >= 0, got {self.exponent}")
        if not (math.isfinite(self.overhead) and self.overhead >= 0):
            raise SpecError(f"interference.overhead: must be >= 0, got {self.overhead}")

    @classmethod
    def load(cls, path: Path) -> InterferenceParams:
        """Read a parameter file (JSON or YAML mapping of the fields above)."""
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
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise SpecError(f"interference file {path}: unknown key {key!r}",
                                hint=f"known keys: {', '.join(sorted(known))}")
        data.setdefault("source", str(path))
        return cls(**data)


def slowdown(own_demand: float, others_demand: float, others: int, capacity: float,
             params: InterferenceParams) -> float:
    """Stretch factor (>= 1) of a step whose demand is ``own_demand`` bytes/s while ``others``
    steps demanding ``others_demand`` in total run on the same GPU of ``capacity`` bytes/s."""
    if others <= 0:
        return 1.0
    total = own_demand + others_demand
    bw = max(1.0, total / capacity) ** params.exponent if capacity > 0 else 1.0
    return bw * (1.0 + params.overhead * others)


class HbmShare:
    """Demand of the steps in flight on each GPU; engines call ``begin`` / ``end`` per step."""

    def __init__(self, peak_bytes_per_s: dict[int, float], params: InterferenceParams) -> None:
        self.params = params
        self.capacity = {g: bw * params.efficiency for g, bw in peak_bytes_per_s.items()}
        self.demand = dict.fromkeys(peak_bytes_per_s, 0.0)
        self.active = dict.fromkeys(peak_bytes_per_s, 0)

    def begin(self, gpus: tuple[int, ...], seconds: float, step_bytes: float
              ) -> tuple[float, float]:
        """Register a step that takes ``seconds`` alone; returns (stretched seconds, demand)."""
        own = step_bytes / seconds if seconds > 0 else 0.0
        factor = 1.0
        for g in gpus:
            f = slowdown(own, self.demand[g], self.active[g], self.capacity[g], self.params)
            factor = max(factor, f)
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
            assert n >= 0 and self.demand[g] >= -1e-3 * max(1.0, self.capacity[g]), (g, n)
