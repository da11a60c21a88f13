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
    python -m bench.e2e.calibrate --out bench/e2e/results --time-sliced --fit-rates 2
        [--write bench/e2e/results-r3/postrun/calibration.json]

``--time-sliced`` fits the time-sliced configuration (a) apart, keeping the MPS fit: one
decode factor per engine, since no common one fits - its chat-8b-fp8 ran ~120 sequences,
beyond the profiles' 32 (steps too short in the model), beside a 3B and an int4 7B that only
have roofline estimates (too long). Under the factors sits the MPS fit's per-sequence term
at 100% SMs (``EngineScaledLatency``): a factor fitted at one batch cannot carry a step's
growth with batch to another (r3's batch cap 1024 let chat-8b-fp8 reach 500). Fixed-point
iteration: each engine's factor x the geometric mean of its measured / simulated TPOT medians
over the fit rates, until they agree (the engines' stretches depend on each other, so a few
rounds). ``--write`` puts the result in another file (a held-out test: fit on one results
directory, predict another with ``predict.py --calibration``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from bench.e2e.predict import predict_one
from bench.e2e.results import Calibration, Measured, ResultsDir, SlicedCalibration
from fineserve.profiles.latency import LatencyModel

ROOT = Path(__file__).resolve().parents[2]

MIN_SCALE, MAX_SCALE = 1.0, 8.0
PER_SEQ_GRID_S = tuple(i * 1e-5 for i in range(9))  # 0 - 0.08 ms per sequence at 100% SMs
PER_SEQ_REFINE_S = 5e-6  # then half a grid step either side of the best


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


Sources = ResultsDir | tuple[ResultsDir, ...]


def fit_runs(res: Sources, configs: tuple[str, ...], fit_rates: tuple[float, ...]
             ) -> dict[tuple[ResultsDir, str, float], Measured]:
    """The measured (results directory, configuration, rate) runs a fit sees: ``res`` is one
    directory or several (a fit on more than one run, e.g. for a pre-registration)."""
    dirs = res if isinstance(res, tuple) else (res,)
    found = {(r, c, s): r.measured(c, s) for r in dirs for c in configs for s in fit_rates}
    measured = {k: m for k, m in found.items() if m is not None}
    if not measured:
        names = ", ".join(str(r.root) for r in dirs)
        raise ValueError(f"no measured result in {names} for configs {configs} at rates "
                         f"{fit_rates}")
    return measured


def fit(res: Sources, latency: LatencyModel, configs: tuple[str, ...],
        fit_rates: tuple[float, ...], steps: int = 10,
        per_seq_grid: tuple[float, ...] = PER_SEQ_GRID_S, by_size: bool = False
        ) -> Calibration:
    """The (factor, per-sequence term) pair whose simulated TPOT medians of the fit runs match
    the measured ones in the geometric mean with the least spread across models. For each
    per-sequence term: bisection on log(factor) in [1, 8] (the mean log ratio falls as the
    factor grows; the simulated TPOT grows less than in proportion, since prefill chunks and
    interference are not scaled). A grid of ``(0,)`` fits the factor alone. ``by_size``: the
    term is an 8B's, scaled by each engine's linear parameters (``stepscale.size_weight``)."""
    measured = fit_runs(res, configs, fit_rates)

    def logs_at(scale: float, per_seq: float) -> list[float]:
        out = []
        for (r, c, s), m in measured.items():
            p = predict_one(r, c, s, latency, decode_scale=scale, write=False,
                            decode_s_per_seq=per_seq, per_seq_by_size=by_size, mps_factors=())
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
    return Calibration(scale, configs, fit_rates, points, round(sd, 3), round(per_seq, 7),
                       per_seq_by_size=by_size)


def fit_sliced(res: Sources, latency: LatencyModel, configs: tuple[str, ...],
               fit_rates: tuple[float, ...], rounds: int = 5, tol: float = 0.01,
               per_seq: float = 0.0, by_size: bool = False,
               mps: Calibration | None = None) -> SlicedCalibration:
    """Per-engine decode factors of time-sliced runs, over ``per_seq`` seconds per decoding
    sequence at 100% SMs (not fitted here: the MPS fit's): start at 1, multiply each by the
    geometric mean of its measured / simulated TPOT medians; stop when every mean log ratio
    is within ``tol`` (or after ``rounds``). With ``mps`` (a common MPS fit) the same
    per-model factors are fitted on top of its terms for MPS runs instead
    (``Calibration.mps_factors``)."""
    from fineserve.planner.planfile import load_plan

    measured = fit_runs(res, configs, fit_rates)
    keys = {m.name: m.spec.key for r, c, _ in measured for m in load_plan(r.plan_path(c)).models}
    factors: dict[str, float] = {}
    done, logs = 0, {}
    while done < rounds:
        done += 1
        logs = {}
        for (r, c, s), m in measured.items():
            now = tuple(sorted(factors.items()))
            if mps is None:
                p = predict_one(r, c, s, latency, write=False, sliced_factors=now,
                                sliced_per_seq=per_seq, per_seq_by_size=by_size)
            else:
                p = predict_one(r, c, s, latency, write=False, decode_scale=mps.decode_scale,
                                decode_s_per_seq=mps.decode_s_per_seq,
                                per_seq_by_size=mps.per_seq_by_size, mps_factors=now)
            for model, r in tpot_log_ratios_by_model(m.summary, p["summary"]).items():
                logs.setdefault(keys[model], []).append(r)
        means = {k: sum(v) / len(v) for k, v in logs.items()}
        factors = {k: round(factors.get(k, 1.0) * math.exp(x), 4) for k, x in means.items()}
        if all(abs(x) < tol for x in means.values()):
            break
    flat = [x for v in logs.values() for x in v]
    mean = sum(flat) / len(flat)
    sd = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
    return SlicedCalibration(factors, configs, fit_rates, len(flat), round(sd, 3), done,
                             per_seq)


# the protocol of the r3 held-out test (results-r3/postrun2) and the r4 pre-registration:
# MPS terms and per-model factors on (b), (c) TPOT medians at x2-x3, the sizes' per-sequence
# term; time-sliced factors on (a) x2 over the same term
PROTOCOL_MPS = (("b", "c"), (2.0, 2.5, 3.0))
PROTOCOL_SLICED = (("a",), (2.0,))


def fit_protocol(runs: Sources, latency: LatencyModel, source: str) -> Calibration:
    """Every term the predictions use, fitted on ``runs`` by the protocol above (TPOT
    medians only; attainment and throughput never fitted)."""
    cal = fit(runs, latency, *PROTOCOL_MPS, by_size=True)
    pm = fit_sliced(runs, latency, cal.configs, cal.fit_rates, mps=cal)
    sliced = fit_sliced(runs, latency, *PROTOCOL_SLICED, per_seq=cal.decode_s_per_seq,
                        by_size=True)
    return replace(cal, source=source, mps_factors=pm.factors, mps_factors_fit=(
        f"{source}: {','.join(pm.configs)} at x{','.join(f'{r:g}' for r in pm.fit_rates)}, "
        f"{pm.points} TPOT medians, log sd {pm.residual_log_sd}, {pm.rounds} rounds"),
        time_sliced=replace(sliced, source=source))


def tpot_log_ratios_by_model(measured: dict, predicted: dict) -> dict[str, float]:
    """Model -> log(measured / simulated TPOT median), where both have one."""
    out = {}
    for model, g in measured.get("per_model", {}).items():
        r = tpot_log_ratios({"per_model": {model: g}}, predicted)
        if r:
            out[model] = r[0]
    return out


def _source_name(out: Path) -> str:
    """``out`` as the report compares it: from the repo root where it lies inside the repo."""
    out = out.resolve()
    return str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)


def main(argv: list[str] | None = None) -> None:
    from fineserve.profiles.composite import default_latency_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results directory")
    ap.add_argument("--configs", default="b,c", help="MPS configurations to fit on")
    ap.add_argument("--fit-rates", default="1,2", help="rates to fit on (the rest held out)")
    ap.add_argument("--no-per-seq", action="store_true",
                    help="fit the factor alone (no per-sequence term)")
    ap.add_argument("--time-sliced", action="store_true",
                    help="fit the time-sliced configurations' per-engine factors (default "
                         "--configs a), keeping the MPS fit in calibration.json")
    ap.add_argument("--no-sliced-per-seq", action="store_true",
                    help="--time-sliced without the MPS per-sequence term under the factors "
                         "(as fits before 2026-11-26 r3)")
    ap.add_argument("--per-model", action="store_true",
                    help="after the common MPS fit, one factor per model on top of it, "
                         "fitted on the same TPOT medians (Calibration.mps_factors)")
    ap.add_argument("--per-seq-by-size", action="store_true",
                    help="scale the per-sequence term by each engine's linear parameters "
                         "(an 8B's term; a 3B pays 0.40 of it); --time-sliced keeps the MPS "
                         "fit's choice")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another results directory to fit on as well (repeatable; the "
                         "calibration's source names them all)")
    ap.add_argument("--write", type=Path, default=None,
                    help="write the calibration here (default OUT/calibration.json)")
    args = ap.parse_args(argv)
    res = ResultsDir(args.out)
    path = res.calibration_path()
    dest = args.write or path
    source = " + ".join(_source_name(p) for p in (args.out, *args.also))
    runs = (res, *(ResultsDir(p) for p in args.also)) if args.also else res
    base = dest if dest.is_file() else path  # a --write file chains fits: MPS, then sliced
    if args.time_sliced:
        old = Calibration.load(base)
        if old is None:
            raise SystemExit(f"--time-sliced: no {base} (fit the MPS runs first)")
        configs = "a" if args.configs == "b,c" else args.configs
        sliced = fit_sliced(runs, default_latency_model(),
                            tuple(c for c in configs.split(",") if c),
                            tuple(float(x) for x in args.fit_rates.split(",") if x),
                            per_seq=0.0 if args.no_sliced_per_seq else old.decode_s_per_seq,
                            by_size=old.per_seq_by_size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = replace(old, source=old.source or source)
        dest.write_text(replace(old, time_sliced=replace(sliced, source=source)).to_json())
        print(f"time-sliced decode factors {sliced.factors} + "
              f"{sliced.decode_s_per_seq * 1e3:.4f} ms per sequence from {sliced.points} TPOT "
              f"medians (log sd {sliced.residual_log_sd}, {sliced.rounds} rounds); wrote {dest}")
        return
    cal = fit(runs, default_latency_model(), tuple(c for c in args.configs.split(",") if c),
              tuple(float(x) for x in args.fit_rates.split(",") if x),
              per_seq_grid=(0.0,) if args.no_per_seq else PER_SEQ_GRID_S,
              by_size=args.per_seq_by_size)
    old = Calibration.load(base)  # a time-sliced fit survives an MPS refit
    cal = replace(cal, time_sliced=old.time_sliced if old is not None else None, source=source)
    if args.per_model:
        pm = fit_sliced(runs, default_latency_model(), cal.configs, cal.fit_rates, mps=cal)
        cal = replace(cal, mps_factors=pm.factors, mps_factors_fit=(
            f"{source}: {','.join(pm.configs)} at x{','.join(f'{r:g}' for r in pm.fit_rates)},"
            f" {pm.points} TPOT medians, log sd {pm.residual_log_sd}, {pm.rounds} rounds"))
        print(f"per-model MPS factors {pm.factors}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(cal.to_json())
    print(f"decode x{cal.decode_scale} + {cal.decode_s_per_seq * 1e3:.4f} ms per sequence at "
          f"100% SMs from {cal.points} TPOT medians (log sd {cal.residual_log_sd}); wrote {dest}")


if __name__ == "__main__":
    main()
