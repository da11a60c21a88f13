"""Held-out errors of one results directory, SimOptions.colocation_when_busy off vs on: each
(configuration, rate) predicted with CAL_OFF (flag off) and CAL_ON (flag on), attainment and
throughput against the measurement, the prediction rebased to the measured wall time as
report.py does. Predictions are not written (as bench.e2e.predict would with --calibration).

    PYTHONPATH=. python bench/e2e/results-r5/postrun/heldout.py bench/e2e/results-r5 \
        CAL_OFF.json CAL_ON.json
"""
import sys
from dataclasses import replace
from pathlib import Path

import bench.e2e.predict as P
from bench.e2e.report import _rebased
from bench.e2e.results import Calibration, ResultsDir
from fineserve.profiles.composite import default_latency_model

_opts = P.sim_options


def overall(res: ResultsDir, cfg: str, rate: float, cal: Path, on: bool) -> dict:
    P.sim_options = lambda *a, **k: replace(_opts(*a, **k), colocation_when_busy=on)
    c = Calibration.load(cal)
    p = P.predict_one(res, cfg, rate, default_latency_model(), decode_scale=c.decode_scale,
                      decode_s_per_seq=c.decode_s_per_seq, calibration=cal, write=False)
    return _rebased(p["summary"], res.measured(cfg, rate).summary)["overall"]


def main() -> None:
    res, off, on = ResultsDir(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
    print("| run | measured att | off att err | on att err | measured thr | off thr err "
          "| on thr err |")
    print("|---|---|---|---|---|---|---|")
    for cfg in "abc":
        for rate in res.scales():
            m = res.measured(cfg, rate)
            if m is None:
                continue
            mo = m.summary["overall"]
            att, thr = mo["slo_attainment"], mo["output_tokens_per_s"]
            po, pn = overall(res, cfg, rate, off, False), overall(res, cfg, rate, on, True)
            ea = [100 * (p["slo_attainment"] - att) for p in (po, pn)]
            et = [100 * (p["output_tokens_per_s"] / thr - 1) for p in (po, pn)]
            print(f"| {cfg} x{rate:g} | {100 * att:.1f} | {ea[0]:+.1f} pt | {ea[1]:+.1f} pt "
                  f"| {thr:.0f} | {et[0]:+.1f}% | {et[1]:+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
