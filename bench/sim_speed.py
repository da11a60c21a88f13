"""Simulator speed: a million requests through the MuxServe-scale plan on one core.

    python bench/sim_speed.py [--requests 1000000] [--method muxserve] [--kv plan|static|pooled]
                              [--policy none|fcfs|deadline|adaptive] [--interference]

Plans the 19-model instance (fineserve/planner/scenarios.py) with the given method (a greedy
one by default, so planning time stays out of the way), generates a Poisson trace with
ShareGPT-like lengths at the instance's rates, and times `simulate` alone.
"""

from __future__ import annotations

import argparse
import time

from fineserve.metrics.summary import summarize
from fineserve.planner.api import make_plan
from fineserve.planner.scenarios import muxserve_scale
from fineserve.profiles.composite import default_latency_model
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.interference import InterferenceParams
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import PRESETS
from fineserve.workload.trace import ModelLoad, generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--method", default="muxserve")
    ap.add_argument("--kv", default="plan", help="plan (pooled for this plan), static, pooled")
    ap.add_argument("--policy", default="none")
    ap.add_argument("--interference", action="store_true")
    a = ap.parse_args()
    opts = SimOptions(kv=a.kv, interference=InterferenceParams() if a.interference else None,
                      scheduler=None if a.policy == "none" else SchedulerConfig(policy=a.policy))
    latency = default_latency_model()
    inst = muxserve_scale()
    plan = make_plan(inst, latency, method=a.method)
    total = sum(m.rate_rps for m in inst.models)
    duration = a.requests / total
    trace = generate([ModelLoad(m.name, Poisson(m.rate_rps), PRESETS["sharegpt"])
                      for m in inst.models], duration, seed=0)
    t0 = time.perf_counter()
    result = simulate(plan, trace, latency, options=opts)
    sim_s = time.perf_counter() - t0
    summary = summarize(result.records, {m.name: m.slo for m in inst.models},
                        result.duration_s, "simulate")
    steps = sum(result.steps.values())
    print(f"KV {result.kv_mode}, policy {a.policy}, interference {a.interference}")
    print(f"{len(trace):,} requests, {duration:,.0f} simulated s, {len(plan.engines)} engines, "
          f"{steps:,} engine steps: simulated in {sim_s:.1f} s on one core "
          f"({len(trace) / sim_s:,.0f} requests/s)")
    print(f"SLO attainment {summary['overall']['slo_attainment']:.3f}, preemptions "
          f"{sum(result.preemptions.values())}")


if __name__ == "__main__":
    main()
