"""Leave-one-run-out errors, calibrations side by side: each (configuration, rate) of a
held-out results directory predicted with each calibration given (each fitted on the other
runs only, ``loro_fit.py``), attainment (points and relative to measured) and throughput
(relative) against the measurement, the prediction rebased to the replay's wall time as
report.py does; the worst of each; then the TPOT medians (measured / each, ms) and TTFT
attainment (%) of the int4 7B and the 3B. Predictions are not written.

    PYTHONPATH=. python bench/e2e/results-r6/postrun/loro_eval.py bench/e2e/results-r6 \
        BEFORE.json AFTER.json [MORE.json ...]
"""
import sys
from pathlib import Path

from bench.e2e.predict import predict_one
from bench.e2e.report import _rebased
from bench.e2e.results import Calibration, ResultsDir
from fineserve.profiles.composite import default_latency_model

FOCUS = ("assist-7b-int4", "edge-3b")


def predicted(res: ResultsDir, cfg: str, rate: float, cal: Path) -> dict:
    c = Calibration.load(cal)
    p = predict_one(res, cfg, rate, default_latency_model(), decode_scale=c.decode_scale,
                    decode_s_per_seq=c.decode_s_per_seq, calibration=cal, write=False)
    return _rebased(p["summary"], res.measured(cfg, rate).summary)


def main() -> None:
    res, cals = ResultsDir(Path(sys.argv[1])), [Path(p) for p in sys.argv[2:]]
    rows, focus = [], []
    worst = [[0.0, 0.0, 0.0] for _ in cals]  # |pt|, |relative att|, |thr|
    for cfg in "abc":
        for rate in res.scales():
            m = res.measured(cfg, rate)
            if m is None:
                continue
            ms = m.summary
            ps = [predicted(res, cfg, rate, c) for c in cals]
            att, thr = ms["overall"]["slo_attainment"], ms["overall"]["output_tokens_per_s"]
            cells = []
            for i, p in enumerate(ps):
                a = p["overall"]["slo_attainment"]
                t = p["overall"]["output_tokens_per_s"]
                e = (100 * (a - att), 100 * (a / att - 1), 100 * (t / thr - 1))
                worst[i] = [max(w, abs(x)) for w, x in zip(worst[i], e, strict=True)]
                cells.append(f"{e[0]:+.1f} pt ({e[1]:+.0f}%) | {e[2]:+.1f}%")
            rows.append(f"| ({cfg}) x{rate:g} | {100 * att:.1f} | {thr:.0f} | "
                        + " | ".join(cells) + " |")
            for model in FOCUS:
                g = [s["per_model"][model] for s in (ms, *ps)]
                tp = " / ".join(f"{x['tpot_s']['p50'] * 1e3:.1f}" for x in g)
                ta = " / ".join(f"{100 * x['ttft_attainment']:.0f}" for x in g)
                focus.append(f"| ({cfg}) x{rate:g} | {model} | {tp} | {ta} |")
    print(f"{res.root.name}: " + ", ".join(f"[{i}] {c}" for i, c in enumerate(cals)) + "\n")
    print("| run | measured att % | measured tok/s | "
          + " | ".join(f"[{i}] att err | [{i}] thr err" for i in range(len(cals))) + " |")
    print("|---|---|---|" + "---|---|" * len(cals))
    print("\n".join(rows))
    print("| worst | | | " + " | ".join(f"{w[0]:.1f} pt ({w[1]:.0f}%) | {w[2]:.1f}%"
                                        for w in worst) + " |")
    print("\n| run | model | TPOT p50 ms measured / " + " / ".join(f"[{i}]" for i in
                                                            range(len(cals)))
          + " | TTFT attainment % measured / ... |")
    print("|---|---|---|---|")
    print("\n".join(focus))


if __name__ == "__main__":
    main()
