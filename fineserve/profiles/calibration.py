"""Calibrating the roofline estimator to measured profiles, one parameter set per precision.

``RooflineParams`` defaults were fitted once to FineServe's eager-mode apex table. A measured
profile (another vLLM version, CUDA graphs, another GPU) moves the overheads, the host-launch
floor and the kernel efficiencies, and differently per weight format. ``calibrate`` refits the
parameters that matter for each precision (mean |log(estimate / measured)|, prefill and decode
weighted equally, Nelder-Mead over each parameter mapped onto a plausible range);
``calibrate_shared`` fits the engine-wide parameters to all precisions at once, which carries
to models the fit has not seen (``heldout.py`` measures both). ``CalibratedLatency`` answers
with the set of the engine's precision.
Results: docs/calibration.md (``bench/calibrate_estimator.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from fineserve.errors import SpecError
from fineserve.profiles.latency import EngineShape, Latency, LatencySource
from fineserve.profiles.precision import Precision, WeightFormat
from fineserve.profiles.roofline import AnalyticLatency, RooflineParams
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable, check_query

# field -> (low, high): the plausible range each fitted parameter is mapped onto.
BOUNDS: dict[str, tuple[float, float]] = {
    "bf16_gemm_eff": (0.25, 0.8),
    "fp8_gemm_eff": (0.2, 0.8),
    "int4_gemm_eff": (0.15, 0.8),
    "sm_saturation": (0.1, 0.7),
    "sm_compute_exponent": (0.6, 1.0),
    "int4_dequant_flops_per_param": (0.0, 400.0),
    "gemm_half_tokens": (0.0, 1024.0),
    "prefill_overhead_s": (0.0, 30e-3),
    "decode_overhead_s": (0.0, 5e-3),
    "host_layer_s": (1e-6, 500e-6),
    "fp8_host_layer_s": (0.0, 200e-6),
    "tp_host_layer_s": (0.0, 200e-6),
    "allreduce_latency_s": (5e-6, 80e-6),
}
_COMMON = ("sm_saturation", "sm_compute_exponent", "prefill_overhead_s", "decode_overhead_s",
           "host_layer_s")
_GEMM = {WeightFormat.BF16: "bf16_gemm_eff", WeightFormat.FP8: "fp8_gemm_eff",
         WeightFormat.INT4_AWQ: "int4_gemm_eff", WeightFormat.INT4_GPTQ: "int4_gemm_eff"}


def fitted_fields(weights: WeightFormat, multi_gpu: bool) -> tuple[str, ...]:
    """The parameters a precision's data can pin down."""
    names = [_GEMM[weights], "gemm_half_tokens", *_COMMON]
    if weights is WeightFormat.FP8:
        names.append("fp8_host_layer_s")
    if weights.is_int4:
        names.append("int4_dequant_flops_per_param")
    if multi_gpu:
        names += ["tp_host_layer_s", "allreduce_latency_s"]
    return tuple(names)


def _errors(params: RooflineParams, points: Sequence[LatencyPoint],
            shapes: Sequence[EngineShape]) -> np.ndarray:  # fmt: skip
    """log(estimate / measured) per point."""
    est = AnalyticLatency(params)
    out = np.empty(len(points))
    for i, (p, shape) in enumerate(zip(points, shapes, strict=True)):
        if p.phase is Phase.PREFILL:
            t = est.prefill_s(shape, p.tokens, p.sm_pct, p.batch)
        else:
            t = est.decode_step_s(shape, p.batch, p.tokens, p.sm_pct)
        out[i] = math.log(t / p.latency_s)
    return out


def _objective(params: RooflineParams, points: Sequence[LatencyPoint],
               shapes: Sequence[EngineShape]) -> float:  # fmt: skip
    """Mean absolute log error, prefill and decode weighted equally. Absolute, not squared:
    measured prefill tables have cells off by up to 2x (FineServe's apex), and a squared loss
    bends every other point towards them; the absolute one tracks the median."""
    err = np.abs(_errors(params, points, shapes))
    loss = 0.0
    for phase in Phase:
        mask = np.array([p.phase is phase for p in points])
        if mask.any():
            loss += float(err[mask].mean())
    return loss


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, iters: int = 400,
                step: float = 0.5) -> np.ndarray:  # fmt: skip
    """Minimise ``f`` from ``x0`` (standard reflection / expansion / contraction / shrink)."""
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


def _to_unit(name: str, value: float) -> float:
    lo, hi = BOUNDS[name]
    frac = min(max((value - lo) / (hi - lo), 1e-4), 1 - 1e-4)
    return math.log(frac / (1 - frac))


def _from_unit(name: str, z: float) -> float:
    """The logistic map back into the bounds; the simplex may step far out (|z| > 709 would
    overflow exp), where the value is simply at its bound."""
    lo, hi = BOUNDS[name]
    return lo + (hi - lo) / (1 + math.exp(-min(max(z, -700.0), 700.0)))


def fit_params(points: Sequence[LatencyPoint], base: RooflineParams | None = None,
               names: Sequence[str] | None = None, iters: int = 400) -> RooflineParams:  # fmt: skip
    """``base`` with ``names`` refitted to ``points`` (all of one precision, any engines).

    Raises:
        SpecError: no points, or points of more than one precision.
    """
    if not points:
        raise SpecError("calibration: no points to fit")
    precisions = {p.engine.precision for p in points}
    if len(precisions) != 1:
        raise SpecError(f"calibration: fit one precision at a time, got {len(precisions)}")
    base = base or RooflineParams()
    weights = next(iter(precisions)).weights
    names = tuple(names or fitted_fields(weights, any(p.tp > 1 for p in points)))
    shapes = [p.engine.shape() for p in points]

    def params_at(z: np.ndarray) -> RooflineParams:
        return replace(base, **{n: _from_unit(n, float(v)) for n, v in zip(names, z, strict=True)})

    z0 = np.array([_to_unit(n, getattr(base, n)) for n in names])
    loss = lambda z: _objective(params_at(z), points, shapes)  # noqa: E731
    best = nelder_mead(loss, z0, iters // 2)
    best = nelder_mead(loss, best, iters - iters // 2, step=0.1)  # restart: a non-smooth loss
    return params_at(best)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Fitted parameters per precision name (``bf16.kv-bf16``); others use ``default``. With
    ``gpu`` set, engines on other GPUs get ``RooflineParams()`` (a host floor or an SM curve
    measured on one GPU says nothing of another)."""

    by_precision: tuple[tuple[str, RooflineParams], ...]
    default: RooflineParams = RooflineParams()
    source: str = ""
    gpu: str = ""  # catalog name of the GPU the points were measured on; "": any

    def params_for(self, precision_name: str) -> RooflineParams:
        return dict(self.by_precision).get(precision_name, self.default)

    def to_json(self) -> str:
        body = {"source": self.source, "gpu": self.gpu, "default": asdict(self.default),
                "by_precision": {name: asdict(p) for name, p in self.by_precision}}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "calibration") -> Calibration:
        known = {f.name for f in fields(RooflineParams)}

        def params(d: dict[str, float]) -> RooflineParams:
            unknown = set(d) - known
            if unknown:
                raise SpecError(f"{where}: unknown parameter {sorted(unknown)[0]!r}")
            return RooflineParams(**d)

        try:
            data = json.loads(text)
            by = tuple(sorted((k, params(v)) for k, v in data["by_precision"].items()))
            return cls(by, params(data.get("default", {})), str(data.get("source", "")),
                       str(data.get("gpu", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"{where}: not a calibration file ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_json(Path(path).read_text(), where=str(path))


class CalibratedLatency:
    """A ``LatencyModel``: the roofline with the engine's precision's calibrated parameters."""

    __slots__ = ("_models", "calibration")

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._models: dict[str, AnalyticLatency] = {}

    def estimator(self, engine: EngineShape) -> AnalyticLatency:
        """The roofline with the parameters of ``engine``'s precision (and GPU)."""
        cal = self.calibration
        other_gpu = bool(cal.gpu) and engine.gpu.name != cal.gpu
        key = engine.gpu.name if other_gpu else engine.model.precision.name  # never collide
        model = self._models.get(key)
        if model is None:
            params = RooflineParams() if other_gpu else cal.params_for(key)
            model = self._models[key] = AnalyticLatency(params)
        return model

    def covers(self, engine: EngineShape) -> bool:
        return True

    def prefill(self, engine: EngineShape, prompt_tokens: float, sm_pct: float,
                batch: float = 1) -> Latency:  # fmt: skip
        check_query(sm_pct, batch, prompt_tokens)
        seconds = self.estimator(engine).prefill_s(engine, prompt_tokens, sm_pct, batch)
        return Latency(seconds, LatencySource.ESTIMATED)

    def decode_step(self, engine: EngineShape, batch: float, context_tokens: float,
                    sm_pct: float) -> Latency:  # fmt: skip
        check_query(sm_pct, batch, context_tokens)
        seconds = self.estimator(engine).decode_step_s(engine, batch, context_tokens, sm_pct)
        return Latency(seconds, LatencySource.ESTIMATED)


def _groups(table: Iterable[LatencyPoint]) -> dict[str, list[LatencyPoint]]:
    groups: dict[str, list[LatencyPoint]] = {}
    for p in table:
        groups.setdefault(p.engine.precision.name, []).append(p)
    return groups


def calibrate(table: ProfileTable | Iterable[LatencyPoint], source: str = "",
              iters: int = 400) -> Calibration:  # fmt: skip
    """One fitted parameter set per precision found in ``table`` (``calibrate_shared``: the
    engine-wide parameters fitted to every precision at once)."""
    groups = _groups(table)
    fitted = tuple(sorted((name, fit_params(pts, iters=iters)) for name, pts in groups.items()))
    return Calibration(fitted, source=source)


def shared_fields(multi_gpu: bool) -> tuple[str, ...]:
    """Parameters of the engine and host, not of the weight format: SM-share behaviour, fixed
    overheads, the per-layer launch floor (and TP launch / all-reduce costs)."""
    return _COMMON + (("tp_host_layer_s", "allreduce_latency_s") if multi_gpu else ())


def calibrate_shared(table: ProfileTable | Iterable[LatencyPoint], source: str = "",
                     iters: int = 400, rounds: int = 2) -> Calibration:  # fmt: skip
    """Per-precision parameters with the engine-wide ones (``shared_fields``) fitted jointly.

    One model's points cannot tell a per-layer launch floor or a fixed step overhead from
    HBM time: Llama-3.1-8B bf16 decode (7 ms) fits either, and the wrong split puts 3B
    decode 53% off. Its bf16, fp8 and int4 engines together can (same layers, different
    bytes), and so can several models of one format. Block coordinate descent: each precision
    alone, then ``rounds`` x (shared fields on all points at once, each precision's own
    fields with the shared ones fixed). ``default`` (precisions not in ``table``) is the
    defaults with the shared fields fitted.

    Raises:
        SpecError: no points.
    """
    groups = _groups(table)
    if not groups:
        raise SpecError("calibration: no points to fit")
    params = {name: fit_params(pts, iters=iters) for name, pts in groups.items()}
    common = shared_fields(any(p.tp > 1 for pts in groups.values() for p in pts))
    shapes = {name: [p.engine.shape() for p in pts] for name, pts in groups.items()}

    def with_common(z: np.ndarray) -> dict[str, float]:
        return {n: _from_unit(n, float(v)) for n, v in zip(common, z, strict=True)}

    def loss(z: np.ndarray) -> float:
        values = with_common(z)
        return sum(_objective(replace(params[name], **values), pts, shapes[name])
                   for name, pts in groups.items())

    values: dict[str, float] = {}
    for _ in range(rounds):
        z0 = np.array([_to_unit(n, float(np.median([getattr(q, n) for q in params.values()])))
                       for n in common])
        best = nelder_mead(loss, z0, iters // 2)
        values = with_common(nelder_mead(loss, best, iters - iters // 2, step=0.1))
        for name, pts in groups.items():
            own = [n for n in fitted_fields(Precision.from_name(name).weights,
                                            any(p.tp > 1 for p in pts)) if n not in common]
            params[name] = fit_params(pts, replace(params[name], **values), own, iters)
    return Calibration(tuple(sorted(params.items())), replace(RooflineParams(), **values),
                       source)
