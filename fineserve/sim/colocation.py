"""How busy an engine's MPS neighbours are (``SimOptions.colocation_when_busy``).

The calibration's common decode factor (``stepscale.ScaledLatency.decode_scale``, ~1.3) was
fitted on runs where every engine had busy neighbours: it carries the co-location slowdown,
which the simulator otherwise keeps when the neighbours go idle (the drain after arrivals
stop: results-r4/postrun3 measured chat-8b-fp8's step 1.8x faster there than simulated).
With the option, the common factor s = decode_scale applies to the whole calibrated MPS step
(the per-sequence term included, which at batches of 300+ is most of it) in proportion to how
busy the neighbours are:

    step = w x calibrated + (1 - w) x calibrated / s       (stepscale.without_colocation)
         = per-model factor x (s x model + per-sequence term) x (1 + (s - 1) w) / s

with ``w`` = ``Neighbours.busy(engine)`` at the step's start: 1 (every neighbour has work)
gives the calibrated step unchanged, 0 (all idle, or no neighbour) the step without the
co-location factor. The per-model factors are kept whole. Time slicing is untouched.
"""

from __future__ import annotations

from typing import Any


class Neighbours:
    """The engines on each GPU; ``busy(e)`` is the SM-share-weighted fraction of the other
    engines on e's GPU that have work (queued, prefilling or decoding), 0 for an engine alone
    (a TP engine takes its busiest GPU). Who shares which GPU is fixed for a simulation, so
    each engine's neighbours and their share total are found once, not at every step."""

    def __init__(self, engines: list[Any]) -> None:
        on: dict[int, list[Any]] = {}
        for e in engines:
            for g in e.gpus:
                on.setdefault(g, []).append(e)
        self._groups: dict[int, list[tuple[list[Any], float]]] = {}
        for e in engines:
            groups = ([x for x in on[g] if x is not e] for g in e.gpus)
            self._groups[id(e)] = [(o, t) for o in groups if (t := sum(x.sm_pct for x in o)) > 0]

    def busy(self, engine: Any) -> float:
        return max((sum(x.sm_pct for x in others if not x.idle) / total
                    for others, total in self._groups[id(engine)]), default=0.0)
