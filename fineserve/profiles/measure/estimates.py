"""Point costs for profiling-session estimates (``session.estimate_session``, the GPU split).

Where a profile (measured under the results folder, else shipped) covers the engine, its
points; elsewhere the roofline calibrated per precision on the measured points
(``profiles.calibration``): the default parameters were fitted to eager engines and put the
H100's real int4 prefill 72% off (calibrated: 7%), so they overstated the big int4 models'
sessions by a fifth to a quarter. A precision nobody measured takes the parameters of one
with the same weights (fp8 / bf16 KV from fp8 / fp8 KV), closer than the defaults. Results
that cannot be read as a profile (a precision cut short with decode points only) leave the
estimate on the default latency model (``note`` says why), not the run stopped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fineserve.errors import FineserveError
from fineserve.profiles.calibration import CalibratedLatency, Calibration, calibrate
from fineserve.profiles.composite import default_latency_model
from fineserve.profiles.latency import EngineShape, Latency, LatencyModel
from fineserve.profiles.precision import KVFormat, Precision
from fineserve.profiles.schema import load_profile

FIT_ITERS = 300  # Nelder-Mead iterations per precision (~1 s for the 8B set)


class EstimateLatency:
    """A ``LatencyModel`` for session estimates over the results under ``source``."""

    def __init__(self, source: Path) -> None:
        self.note = ""  # why the measured results were left out ("" where used)
        measured = any(source.rglob("*.csv"))
        try:
            self.profiles = default_latency_model([source] if measured else [])
            self.fallback: LatencyModel = self.profiles
            if measured:
                fit = calibrate(load_profile(source), source=str(source), iters=FIT_ITERS)
                self.fallback = CalibratedLatency(same_weights(fit))
        except FineserveError as exc:
            # a profile cut short (decode points only) must not stop a run over an estimate
            self.note = f"estimates use the default latency model: {exc.message}"
            self.profiles = default_latency_model([])
            self.fallback = self.profiles

    def _model(self, engine: EngineShape) -> LatencyModel:
        return self.profiles if self.profiles.measured(engine) else self.fallback

    def prefill(self, engine: EngineShape, prompt_tokens: int, sm_pct: float,
                batch: int = 1) -> Latency:  # fmt: skip
        return self._model(engine).prefill(engine, prompt_tokens, sm_pct, batch)

    def decode_step(self, engine: EngineShape, batch: int, context_tokens: float,
                    sm_pct: float) -> Latency:  # fmt: skip
        return self._model(engine).decode_step(engine, batch, context_tokens, sm_pct)


def same_weights(cal: Calibration) -> Calibration:
    """``cal`` plus, for each precision it lacks, the parameters of a fitted one with the
    same weight format (the first fitted, in ``cal``'s order)."""
    have = dict(cal.by_precision)
    extra = []
    for name, params in cal.by_precision:
        for kv in KVFormat:
            other = Precision(Precision.from_name(name).weights, kv).name
            if other not in have:
                have[other] = params
                extra.append((other, params))
    return replace(cal, by_precision=cal.by_precision + tuple(extra))
