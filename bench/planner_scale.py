"""Planner at cluster scale: ILP (CP-SAT, PuLP) against the greedy baselines.

Instances (fineserve/planner/scenarios.py): MuxServe's 19-model mix on 4 x 8 H100 and 100
models on 16 x 8 H100, power-law rates, ShareGPT lengths, mixed precisions, pooled KV, the
shipped latency profiles (roofline estimates where unmeasured). Writes the table into
docs/planner-benchmarks.md between the GENERATED markers.

    python bench/planner_scale.py            # full run (~3 min on 2 cores)
    python bench/planner_scale.py --quick    # shorter time limits
    python bench/planner_scale.py --small-limit 300 --only-small   # long run, 19 models
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from fineserve.planner.api import make_plan
from fineserve.planner.options import engine_options
from fineserve.planner.scenarios import hundred_models, muxserve_scale
from fineserve.planner.validate import check_plan
from fineserve.profiles.composite import default_latency_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "planner-benchmarks.md"
BEGIN, END = "<!-- GENERATED:BEGIN -->", "<!-- GENERATED:END -->"


def run_case(name, inst, latency, methods):
    rows = []
    t = time.perf_counter()
    options = engine_options(inst, latency)
    opt_s = time.perf_counter() - t
    # make_plan counts the engine options against the time limit when it builds them; they
    # are built once here for every method, so the ILP gets the limit less their time
    budget = replace(inst.settings, time_limit_s=max(1.0, inst.settings.time_limit_s - opt_s))
    timed = replace(inst, settings=budget)
    for method, backend in methods:
        t = time.perf_counter()
        plan = make_plan(timed, latency, method=method, backend=backend, options=options)
        wall = time.perf_counter() - t + opt_s
        problems = check_plan(inst, plan, latency)
        stages = "; ".join(
            f"{s.name} {s.objective:g} (bound {s.bound:g}, {s.status.lower()})"
            for s in plan.report.stages) or "-"
        gap = plan.report.gap
        gap = "-" if not plan.report.stages else ("?" if gap != gap else f"{gap:.1%}")
        rows.append((name, plan.report.method, len(plan.gpus_used), plan.min_headroom,
                     sum(u.rate_rps for u in plan.unplaced), wall, stages, gap,
                     "valid" if not problems else f"INVALID: {problems[0]}"))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--small-limit", type=float, default=30.0, help="s, 19-model instance")
    ap.add_argument("--large-limit", type=float, default=60.0, help="s, 100-model instance")
    ap.add_argument("--only-small", action="store_true", help="skip the 100-model instance")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    scale = 0.3 if args.quick else 1.0
    latency = default_latency_model()
    small = muxserve_scale()
    small = replace(small, settings=replace(small.settings,
                                            time_limit_s=args.small_limit * scale))
    big = hundred_models()
    big = replace(big, settings=replace(big.settings, time_limit_s=args.large_limit * scale))
    greedy = [("static", "ortools"), ("muxserve", "ortools"), ("kv-pressure", "ortools"),
              ("worst-fit", "ortools")]
    rows = run_case("19 models / 32 GPUs", small, latency,
                    [*greedy, ("ilp", "ortools"), ("ilp", "pulp")])
    if not args.only_small:
        rows += run_case("100 models / 128 GPUs", big, latency, [*greedy, ("ilp", "ortools")])
    table = ["| instance | method | GPUs | min headroom | unplaced req/s | wall s | stages "
             "(objective, bound) | gap | validator |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.1f} | "
                     f"{r[6]} | {r[7]} | {r[8]} |")
    load = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    flags = (" --quick" if args.quick else "") + (" --only-small" if args.only_small else "")
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}, load average "
              f"{load}; command: `python bench/planner_scale.py{flags}` "
              f"(limits {args.small_limit:g} s / {args.large_limit:g} s).")
    text = DOC.read_text() if DOC.exists() else f"# Planner benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{header}\n\n" + "\n".join(table) + f"\n{END}{tail}")
    print("\n".join(table))


if __name__ == "__main__":
    main()
