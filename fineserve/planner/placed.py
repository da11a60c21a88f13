"""A placement as engines with their traffic: what packing, the local search, rounding and
the ILP's plan assembly hand each other (in the ILP's integer units)."""

from __future__ import annotations

from typing import NamedTuple

from fineserve.planner.options import TpGroup


class PlacedEngine(NamedTuple):
    """One engine: option ``option`` of ``model`` on ``group``, routing ``flow`` milli-rps."""

    model: str
    option: int
    group: TpGroup
    flow: int


Placed = list[PlacedEngine]
