"""The simulator's decode steps, calibrated on some runs and tested on the rest.

The H100 run measured time per output token 1.6-4.4x the latency model's step at the plan's
SM share and the measured batch (docs/benchmarks.md, "Where the simulator is wrong"): the
profiles stop at batch 32 and SM 30%, and measure one engine alone. This fits the two terms
of ``fineserve.sim.stepscale`` - a factor on the model's step and a time per decoding sequence
at 100% SMs - to the TPOT medians of every model of the MPS configurations on the *fit* rates
only (x1, x2 by default): for each per-sequence term on a grid, the factor that matches the
medians in the geometric mean; of those pairs, the one whose per-model log ratios spread
least. The figures the acceptance judges - attainment, goodput, throughput - are never
fitted; the report gives the simulator's errors on the held-out runs apart.

    python -m bench.e2e.calibrate --out bench/e2e/results [--fit-rates 1,2] [--configs b,c]
        [--no-per-seq]   (the factor alone, as before 2026-11-26's second calibration)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.e2e.predict import predict_one
from bench.e2e.results import ResultsDir
from fineserve.profiles.latency import LatencyModel

MIN_SCALE, MAX_SCALE = 1.0, 8.0
PER_SEQ_GRID_S = tuple(i * 1e-5 for i in range(9))  # 0 - 0.08 ms per sequence at 100% SMs
PER_SEQ_REFINE_S = 5e-6  # then half a grid step either side of the best


@dataclass(frozen=True, slots=True)
class Calibration:
    decode_scale: float
    configs: tuple[str, ...]  # fitted on these configurations ...
    fit_rates: tuple[float, ...]  # ... at these rates; every other rate is held out
    points: int  # (configuration, rate, model) TPOT medians in the fit
    residual_log_sd: float  # spread of log(measured / simulated TPOT) at the fitted scale
    decode_s_per_seq: float = 0.0  # seconds per decoding sequence at 100% SMs (0: older file)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> Calibration | None:
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        d["configs"], d["fit_rates"] = tuple(d["configs"]), tuple(d["fit_rates"])
        return cls(**d)


def tpot_log_ratios(measured: dict, predicted: dict) -> list[float]:
    """log(measured / simulated TPOT median) per model present in both summaries."""
    out = []
    for model, g in measured.get("per_model", {}).items():
        p = predicted.get("per_model", {}).get(model)
        m50 = (g.get("tpot_s") or {}).get("p50")
        p50 = ((p or {}).get("tpot_s") or {}).get("p50")
        if m50 and p50 and m50 > 0 and p50 > 0 and math.isfinite(m50 + p50):
            out.append(math.log(m50 / p50))
    return out


def fit(res: ResultsDir, latency: LatencyModel, configs: tuple[str, ...],
        fit_rates: tuple[float, ...], steps: int = 10,
        per_seq_grid: tuple[float, ...] = PER_SEQ_GRID_S) -> Calibration:
    """The (factor, per-sequence term) pair whose simulated TPOT medians of the fit runs match
    the measured ones in the geometric mean with the least spread across models. For each
    per-sequence term: bisection on log(factor) in [1, 8] (the mean log ratio falls as the
    factor grows; the simulated TPOT grows less than in proportion, since prefill chunks and
    interference are not scaled). A grid of ``(0,)`` fits the factor alone."""
    found = {(c, s): res.measured(c, s) for c in configs for s in fit_rates}
    measured = {k: m for k, m in found.items() if m is not None}
    if not measured:
        raise ValueError(f"no measured result for configs {configs} at rates {fit_rates}")

    def logs_at(scale: float, per_seq: float) -> list[float]:
        out = []
        for (c, s), m in measured.items():
            p = predict_one(res, c, s, latency, decode_scale=scale, write=False,
                            decode_s_per_seq=per_seq)
            out += tpot_log_ratios(m.summary, p["summary"])
        return out

    def at(per_seq: float) -> tuple[float, float, float, int]:
        """(spread, factor, per-sequence term, points) with the factor matched."""
        lo, hi = math.log(MIN_SCALE), math.log(MAX_SCALE)
        logs = logs_at(MIN_SCALE, per_seq)
        scale = MIN_SCALE
        if sum(logs) > 0:  # measured slower than the model: find where they meet
            for _ in range(steps):
                mid = (lo + hi) / 2
                if sum(logs_at(math.exp(mid), per_seq)) > 0:
                    lo = mid
                else:
                    hi = mid
            scale = math.exp((lo + hi) / 2)
            logs = logs_at(scale, per_seq)
        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
        return sd, round(scale, 3), per_seq, len(logs)

    best = min((at(x) for x in per_seq_grid), key=lambda r: r[0])
    if len(per_seq_grid) > 1:  # refine around the best grid point
        near = [best[2] + d for d in (-PER_SEQ_REFINE_S, PER_SEQ_REFINE_S) if best[2] + d >= 0]
        best = min([best, *(at(x) for x in near)], key=lambda r: r[0])
    sd, scale, per_seq, points = best
    return Calibration(scale, configs, fit_rates, points, round(sd, 3), round(per_seq, 7))


def main(argv: list[str] | None = None) -> None:
    from fineserve.profiles.composite import default_latency_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results directory")
    ap.add_argument("--configs", default="b,c", help="MPS configurations to fit on")
    ap.add_argument("--fit-rates", default="1,2", help="rates to fit on (the rest held out)")
    ap.add_argument("--no-per-seq", action="store_true",
                    help="fit the factor alone (no per-sequence term)")
    args = ap.parse_args(argv)
    res = ResultsDir(args.out)
    cal = fit(res, default_latency_model(), tuple(c for c in args.configs.split(",") if c),
              tuple(float(x) for x in args.fit_rates.split(",") if x),
              per_seq_grid=(0.0,) if args.no_per_seq else PER_SEQ_GRID_S)
    path = res.calibration_path()
    path.write_text(cal.to_json())
    print(f"decode x{cal.decode_scale} + {cal.decode_s_per_seq * 1e3:.4f} ms per sequence at "
          f"100% SMs from {cal.points} TPOT medians (log sd {cal.residual_log_sd}); wrote {path}")


if __name__ == "__main__":
    main()
