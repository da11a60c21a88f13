"""Per request (same trace index), measured against simulated time per output token, binned
by the measured first-token time: where in a run the simulated decode is too slow or fast.

    R=/tmp/req/results-r4; mkdir -p $R && tar xzf bench/e2e/results-r4/b-requests.tgz -C $R
    [FLAGS=demand_from_profile] PYTHONPATH=. python \
        bench/e2e/results-r4/postrun3/tpot_by_first_token.py results-r4 b 3.5 CAL.json \
        chat-8b-fp8,assist-7b-int4
"""
import csv
import os
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import bench.e2e.predict as P
from bench.e2e.results import ResultsDir
from fineserve.profiles.composite import default_latency_model

BIN_S = 4


def main() -> None:
    d, cfg, scale, cal = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    flags = [f for f in os.environ.get("FLAGS", "").split(",") if f]
    opts = P.sim_options
    P.sim_options = lambda *a, **k: replace(opts(*a, **k), **dict.fromkeys(flags, True))
    captured = {}
    sim = P.simulate

    def keep(*a, **k):
        captured["r"] = sim(*a, **k)
        return captured["r"]

    P.simulate = keep
    res = ResultsDir(Path("bench/e2e") / d)
    s, ps = P.calibrated_terms(res, cal)
    P.predict_one(res, cfg, scale, default_latency_model(), decode_scale=s,
                  decode_s_per_seq=ps, calibration=cal, write=False)
    simulated = {r.index: r for r in captured["r"].records}
    with open(f"/tmp/req/{d}/{cfg}/r{scale:.2f}/requests.csv") as f:
        measured = list(csv.DictReader(f))
    for model in sys.argv[5].split(","):
        bins = defaultdict(list)
        for r in measured:
            if r["model"] != model or not r["first_token_s"] or not r["finished_s"]:
                continue
            n = int(r["tokens_received"] or 0)
            ft, fin = float(r["first_token_s"]), float(r["finished_s"])
            sr = simulated[int(r["index"])]
            if n < 20:
                continue
            sim_tpot = ((sr.finished_s - sr.first_token_s) / max(sr.output_tokens - 1, 1)
                        if sr.ok else None)
            bins[int(ft // BIN_S)].append(((fin - ft) / (n - 1), sim_tpot))
        print(f"== {d} {cfg} x{scale:g} {model}: first-token bin (s) | requests | measured "
              f"TPOT ms | simulated TPOT ms (same requests, those the simulation served)")
        for k in sorted(bins):
            v = bins[k]
            meas = [x[0] for x in v]
            sims = [x[1] for x in v if x[1] is not None]
            print(f"{k * BIN_S:4d} {len(v):4d} {1e3 * sum(meas) / len(meas):6.1f} "
                  f"{1e3 * sum(sims) / max(len(sims), 1):6.1f} ({len(sims)})")


if __name__ == "__main__":
    main()
