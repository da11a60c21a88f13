"""The calibrated int4 7B and 3B steps as the simulator times them, per calibration: the
decode step at a few batches (context 450 tokens, the plan's SM share), its growth per
sequence, and a 160-token prefill (the bench's mean prompt) - what TPOT and capacity rest on.

    PYTHONPATH=. python bench/e2e/results-r6/postrun/stepcurve.py CAL.json [CAL.json ...]
"""
import sys
from pathlib import Path

from bench.e2e.plans import planning_latency
from bench.e2e.predict import with_estimator
from bench.e2e.results import Calibration, ResultsDir
from fineserve.planner.planfile import load_plan
from fineserve.profiles.composite import default_latency_model
from fineserve.profiles.latency import EngineShape

BATCHES = (24, 63, 100)


def main() -> None:
    plan = load_plan(ResultsDir(Path("bench/e2e/results-r6")).plan_path("b"))
    specs = {m.name: m.spec for m in plan.models}
    print("| calibration | model | SM % | " + " | ".join(f"step b{b} ms" for b in BATCHES)
          + " | ms per extra sequence | prefill 160 tok ms |")
    print("|---|---|---|" + "---|" * (len(BATCHES) + 2))
    for path in map(Path, sys.argv[1:]):
        c = Calibration.load(path)
        lat = planning_latency(with_estimator(default_latency_model(), c), c.decode_scale,
                               c.decode_s_per_seq, c.per_seq_by_size,
                               tuple(sorted(c.mps_factors.items())))
        for e in plan.engines:
            if e.model not in ("assist-7b-int4", "edge-3b"):
                continue
            sh = EngineShape(plan.cluster.gpus[0].spec, specs[e.model], e.tp)
            t = [lat.decode_step(sh, b, 450, e.sm_pct).seconds * 1e3 for b in BATCHES]
            pf = lat.prefill(sh, 160, e.sm_pct).seconds * 1e3
            slope = (t[-1] - t[0]) / (BATCHES[-1] - BATCHES[0])
            print(f"| {path.name} | {e.model} | {e.sm_pct:g} | "
                  + " | ".join(f"{x:.1f}" for x in t) + f" | {slope:.3f} | {pf:.1f} |")


if __name__ == "__main__":
    main()
