"""Highest request rate each placement method sustains at 99% SLO attainment (simulated).

For the 19-model / 32-GPU power-law instance (fineserve/planner/scenarios.py): scale every
model's rate by s, re-plan at that rate with each method on the same 32 GPUs (the ILP with
the max-headroom objective: the GPU budget is fixed), simulate a Poisson trace with log-normal
lengths around ShareGPT means, and bisect for the largest s whose overall SLO attainment is
>= 99%. Writes docs/capacity-sweep.md (table) and docs/capacity-sweep.png.

    python bench/capacity_sweep.py [--duration 120] [--time-limit 15] [--interference on|FILE]
                                   [--only ilp,static] [--out docs/capacity-sweep]
    python bench/capacity_sweep.py --calibrate   # capacity model against lone simulated engines

``worst-fit`` is the planner's worst-fit-decreasing baseline (fineserve/planner/worstfit.py),
which the ILP also warm-starts from; it replaced the ``ffd-probe`` witness of earlier runs.

Pooled plans are simulated with the KV Slab pool (the runtime's policy). HBM interference
between co-located engines is off unless ``--interference`` is given (its parameters are
uncalibrated until bench/interference_h100.py has run on an H100); off flatters every method
that shares GPUs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fineserve.errors import FineserveError
from fineserve.metrics.summary import summarize
from fineserve.planner.api import make_plan
from fineserve.planner.scenarios import muxserve_scale
from fineserve.planner.schema import Objective
from fineserve.profiles.composite import default_latency_model
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.interference import InterferenceParams
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import PRESETS
from fineserve.workload.trace import ModelLoad, generate

DOCS = Path(__file__).resolve().parents[1] / "docs"
METHODS = ("ilp", "static", "muxserve", "kv-pressure", "worst-fit")


@dataclass(frozen=True, slots=True)
class Point:
    """One planned and simulated scale of one method."""

    method: str
    scale: float
    attainment: float  # overall SLO attainment in simulation
    gpus: int  # GPUs the plan uses
    status: str  # the plan's report status (ilp: OPTIMAL, FEASIBLE or HEURISTIC)
    headroom: float  # the plan's minimum (routed) headroom
    unplaced_rps: float  # traffic the plan leaves unplaced

    def row(self) -> str:
        return (f"| {self.method} | {self.scale:.2f} | {self.attainment:.4f} | {self.gpus} | "
                f"{self.status} | {self.headroom:.3f} | {self.unplaced_rps:.1f} |")


def attainment(method, scale, latency, duration, time_limit, opts) -> Point:
    inst = muxserve_scale(total_rps=120.0 * scale)
    inst = replace(inst, settings=replace(inst.settings, objective=Objective.MAX_HEADROOM,
                                          time_limit_s=time_limit))
    try:
        plan = make_plan(inst, latency, method=method)
    except FineserveError:
        return Point(method, scale, 0.0, 0, "NONE", 0.0, sum(m.rate_rps for m in inst.models))
    trace = generate([ModelLoad(m.name, Poisson(m.rate_rps), PRESETS["sharegpt"])
                      for m in inst.models], duration, seed=1)
    result = simulate(plan, trace, latency, options=opts)
    s = summarize(result.records, {m.name: m.slo for m in inst.models},
                  max(result.duration_s, duration), "simulate")
    return Point(method, scale, s["overall"]["slo_attainment"], len(plan.gpus_used),
                 plan.report.status, plan.min_headroom, sum(u.rate_rps for u in plan.unplaced))


def sustained(method, latency, duration, time_limit, log, opts) -> float:
    lo, hi = 0.0, None
    scale = 1.0
    while hi is None:  # grow until attainment drops below 99%
        log.append(attainment(method, scale, latency, duration, time_limit, opts))
        print(log[-1].row(), flush=True)
        if log[-1].attainment >= 0.99:
            lo, scale = scale, scale * 1.5
            if scale > 20:
                return lo
        else:
            hi = scale
    while hi - lo > 0.05 * max(lo, 0.1):
        mid = (lo + hi) / 2
        log.append(attainment(method, mid, latency, duration, time_limit, opts))
        print(log[-1].row(), flush=True)
        lo, hi = (mid, hi) if log[-1].attainment >= 0.99 else (lo, mid)
    return lo


def calibrate(latency, duration: float) -> list[str]:
    """Lone engines of the instance: highest rate meeting 99% SLO attainment in simulation,
    over the capacity model's rate (docs/capacity.md, "Calibration")."""
    from fineserve.planner.options import engine_options
    from fineserve.planner.schema import EnginePlacement, KVMode, Plan, SolveReport

    inst = muxserve_scale()
    inst = replace(inst, settings=replace(inst.settings, kv_mode=KVMode.STATIC))
    opts = engine_options(inst, latency)
    rows = ["| engine | capacity req/s | cap (max_batch) | simulated 99% rate / capacity |",
            "|---|---|---|---|"]
    for name, sm in (("8b-0-bf16", 100), ("8b-4-int4", 50), ("32b-0-fp8", 30),
                     ("14b-0-bf16", 20), ("8b-4-int4", 10)):
        m = inst.model(name)
        o = max((o for o in opts[name] if o.tp == 1 and o.sm_pct == sm),
                key=lambda o: o.max_batch)

        def met(f, m=m, o=o, name=name, sm=sm):
            rate = f * o.capacity_rps
            one = replace(inst, models=(replace(m, rate_rps=rate),))
            e = EnginePlacement("e", name, "node0", (0,), sm, o.max_batch, o.weight_bytes,
                                o.overhead_bytes, o.kv_static_bytes, o.capacity_rps, rate)
            plan = Plan(one, (e,), (), SolveReport("calibration", "HEURISTIC", 0.0))
            tr = generate([ModelLoad(name, Poisson(rate), PRESETS["sharegpt"])], duration, 3)
            res = simulate(plan, tr, latency)
            s = summarize(res.records, {name: m.slo}, max(duration, res.duration_s), "simulate")
            return s["overall"]["slo_attainment"] >= 0.99

        lo, hi = 0.3, 1.5
        while hi - lo > 0.03:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if met(mid) else (lo, mid)
        rows.append(f"| {name}, {sm}% SMs | {o.capacity_rps:.2f} | {o.max_batch} | {lo:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=DOCS.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--time-limit", type=float, default=15.0)
    ap.add_argument("--interference", default="off", help="off, on, or a parameter file")
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--out", default=str(DOCS / "capacity-sweep"),
                    help="path stem of the .md table and .png plot")
    ap.add_argument("--calibrate", action="store_true",
                    help="only the lone-engine calibration of the capacity model (300 s traces)")
    a = ap.parse_args()
    if a.calibrate:
        print("\n".join(calibrate(default_latency_model(), 300.0)))
        return
    methods = [m for m in METHODS if m in a.only.split(",")]
    inter = {"off": None, "on": InterferenceParams()}.get(a.interference)
    if inter is None and a.interference not in ("off", "on"):
        inter = InterferenceParams.load(Path(a.interference))
    opts = SimOptions(interference=inter, max_samples=0)
    latency = default_latency_model()
    log: list[Point] = []
    t0 = time.perf_counter()
    load0, commit = os.getloadavg()[0], _commit()
    best = {m: sustained(m, latency, a.duration, a.time_limit, log, opts) for m in methods}
    base = best.get("static") or float("nan")
    lines = ["# Capacity sweep (simulated)", "",
             f"`python bench/capacity_sweep.py --duration {a.duration:g} --time-limit "
             f"{a.time_limit:g} --interference {a.interference} --only {','.join(methods)}` "
             f"({time.perf_counter() - t0:.0f} s) at commit {commit} on {os.cpu_count()} "
             f"cores, load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at "
             "the end. Base load: 120 req/s over 19 models (power "
             "law); scale s multiplies every rate; 32 H100s. Pooled KV simulated with the KV "
             "Slab pool; HBM interference "
             f"{'off' if inter is None else 'on (' + inter.source + ')'}.", "",
             "| method | highest s at >= 99% SLO attainment | x static | plan there |",
             "|---|---|---|---|"]
    for m in methods:
        top = max((p for p in log if p.method == m and p.scale == best[m]),
                  key=lambda p: p.attainment, default=None)
        there = "-" if top is None else f"{top.status}, min headroom {top.headroom:.3f}"
        lines.append(f"| {m} | {best[m]:.2f} | {best[m] / base:.2f} | {there} |")
    lines += ["", "| method | scale | SLO attainment | GPUs used | plan status | min headroom "
              "| unplaced req/s |", "|---|---|---|---|---|---|---|"]
    lines += [p.row() for p in log]
    out = Path(a.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m in methods:
            pts = sorted((p.scale, p.attainment) for p in log if p.method == m)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=m)
        ax.axhline(99, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("rate scale s (x 120 req/s)")
        ax.set_ylabel("SLO attainment (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print("\n".join(lines[:10]))


if __name__ == "__main__":
    main()
