"""Write the what-if notebooks from the cell sources below (outputs stripped).

Notebooks are generated so their source stays reviewable as plain Python; run
`python notebooks/build_notebooks.py` after editing. Each honours FINESERVE_NB_QUICK=1 (set in
CI) with smaller sweeps and shorter traces.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent

SETUP = """\
import os
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from dataclasses import replace
from fineserve.planner.api import make_plan
from fineserve.planner.spec import load_example
from fineserve.planner.schema import KVMode, Objective
from fineserve.profiles.composite import default_latency_model
from fineserve.sim.cluster import simulate
from fineserve.metrics.summary import summarize
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import around_means
from fineserve.workload.trace import ModelLoad, generate

QUICK = os.environ.get("FINESERVE_NB_QUICK") == "1"
DURATION = 20 if QUICK else 120      # seconds of simulated traffic per point
TIME_LIMIT = 3 if QUICK else 20      # planner time limit
latency = default_latency_model()
base = load_example()
base = replace(base, settings=replace(base.settings, time_limit_s=TIME_LIMIT, num_workers=2))


def trace_for(inst, seed=0):
    return generate([ModelLoad(m.name, Poisson(m.rate_rps), around_means(
        m.lengths.prompt_mean, m.lengths.output_mean)) for m in inst.models], DURATION, seed)


def attainment(plan, inst):
    result = simulate(plan, trace_for(inst), latency)
    s = summarize(result.records, {m.name: m.slo for m in inst.models},
                  max(result.duration_s, DURATION), "simulate")
    return s["overall"]["slo_attainment"]


def scaled(inst, factor):
    return replace(inst, models=tuple(replace(m, rate_rps=m.rate_rps * factor)
                                      for m in inst.models))
"""

NOTEBOOKS = {
    "01-walkthrough": [
        ("md", "# Walkthrough: what a plan says\n\nPlan the bundled example (six models of "
               "mixed precision on 4 H100s), read the placement, and see why each engine got "
               "its SM share: the capacity model's rate against MPS share."),
        ("code", SETUP),
        ("code", "plan = make_plan(base, latency)\n"
                 "print(plan.report.method, plan.report.status, 'GPUs', len(plan.gpus_used))\n"
                 "for e in plan.engines:\n"
                 "    print(f'{e.engine_id:18s} gpus {e.gpus} SM {e.sm_pct:3d}%  '\n"
                 "          f'{e.rate_rps:6.2f} of {e.capacity_rps:6.2f} req/s  '\n"
                 "          f'KV {e.kv_bytes / 2**30:5.1f} GiB')"),
        ("md", "Headroom is capacity over offered rate: how big a burst each model absorbs."),
        ("code", "for m in plan.models:\n"
                 "    print(f'{m.name:16s} {m.spec.precision.name:18s} headroom '\n"
                 "          f'{plan.headroom_of(m.name):.2f}x')"),
        ("code", "from fineserve.planner.capacity import engine_capacity\n"
                 "from fineserve.profiles.latency import EngineShape\n"
                 "gpu = base.cluster.nodes[0].gpu\n"
                 "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
                 "for m in base.models[:3]:\n"
                 "    shape = EngineShape(gpu, m.spec, 1)\n"
                 "    sms = list(range(10, 101, 10))\n"
                 "    caps = [engine_capacity(latency, shape, s, m.slo, m.lengths, max_batch=256,"
                 "\n                            slo_safety=0.9).rate_rps for s in sms]\n"
                 "    ax.plot(sms, caps, marker='o', label=m.name)\n"
                 "ax.set_xlabel('MPS SM share (%)'); ax.set_ylabel('capacity (req/s)')\n"
                 "ax.legend(); ax.grid(alpha=0.3)\n"
                 "assert all(c >= 0 for c in caps)"),
    ],
    "02-rate-sweep": [
        ("md", "# Rate sweep: SLO attainment against load, per placement method\n\nEach "
               "method re-plans the same 4 GPUs at each load (the ILP maximising headroom, "
               "since the budget is fixed), then the simulator replays a Poisson trace."),
        ("code", SETUP),
        ("code", "factors = [0.5, 1.0, 2.0] if QUICK else [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]\n"
                 "methods = ['ilp', 'static', 'muxserve', 'kv-pressure']\n"
                 "head = replace(base, settings=replace(base.settings, "
                 "objective=Objective.MAX_HEADROOM))\n"
                 "results = {m: [] for m in methods}\n"
                 "for f in factors:\n"
                 "    inst = scaled(head, f)\n"
                 "    for m in methods:\n"
                 "        plan = make_plan(inst, latency, method=m)\n"
                 "        results[m].append(attainment(plan, inst))\n"
                 "results"),
        ("code", "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
                 "for m, ys in results.items():\n"
                 "    ax.plot(factors, [100 * y for y in ys], marker='o', label=m)\n"
                 "ax.axhline(99, color='grey', ls='--', lw=0.8)\n"
                 "ax.set_xlabel('load (x the spec rates)'); ax.set_ylabel('SLO attainment (%)')\n"
                 "ax.legend(); ax.grid(alpha=0.3)\n"
                 "assert all(0 <= y <= 1 for ys in results.values() for y in ys)"),
    ],
    "03-gpu-budget": [
        ("md", "# GPU budget: what fewer or more GPUs do to the same workload"),
        ("code", SETUP),
        ("code", "from fineserve.errors import FineserveError\n"
                 "from fineserve.planner.schema import Cluster, NodeSpec\n"
                 "budgets = [2, 3, 4] if QUICK else [2, 3, 4, 6, 8]\n"
                 "rows = []\n"
                 "for n in budgets:\n"
                 "    node = replace(base.cluster.nodes[0], num_gpus=n)\n"
                 "    inst = replace(base, cluster=Cluster((node,)), settings=replace(\n"
                 "        base.settings, objective=Objective.MAX_HEADROOM))\n"
                 "    try:\n"
                 "        plan = make_plan(inst, latency)\n"
                 "    except FineserveError as exc:\n"
                 "        rows.append((n, 0.0, 0.0, str(exc))); continue\n"
                 "    unplaced = sum(u.rate_rps for u in plan.unplaced)\n"
                 "    rows.append((n, plan.min_headroom, attainment(plan, inst), "
                 "f'{unplaced:.1f} req/s unplaced'))\n"
                 "rows"),
        ("code", "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
                 "ax.plot([r[0] for r in rows], [100 * r[2] for r in rows], marker='o')\n"
                 "ax.set_xlabel('GPUs'); ax.set_ylabel('simulated SLO attainment (%)')\n"
                 "ax.grid(alpha=0.3)\n"
                 "assert rows[-1][2] >= rows[0][2]"),
    ],
    "04-precision-what-if": [
        ("md", "# Precision what-if: serve the busiest model in fp8 or int4 instead of bf16"),
        ("code", SETUP),
        ("code", "from fineserve.profiles.catalog import ModelSpec\n"
                 "from fineserve.profiles.precision import Precision\n"
                 "rows = []\n"
                 "for w, kv in [('bf16', 'bf16'), ('fp8', 'fp8'), ('int4-awq', 'bf16')]:\n"
                 "    spec = lambda m: ModelSpec(m.spec.arch, Precision.parse(w, kv))\n"
                 "    models = tuple(replace(m, spec=spec(m)) if m.name == 'chat-8b' else m\n"
                 "                   for m in base.models)\n"
                 "    inst = replace(base, models=models)\n"
                 "    plan = make_plan(inst, latency)\n"
                 "    rows.append((f'{w}/{kv}', len(plan.gpus_used), plan.min_headroom,\n"
                 "                 plan.capacity_of('chat-8b'), attainment(plan, inst)))\n"
                 "for r in rows:\n"
                 "    print(f'{r[0]:14s} GPUs {r[1]}  min headroom {r[2]:.2f}  chat-8b capacity '\n"
                 "          f'{r[3]:.1f} req/s  simulated SLO {r[4]:.1%}')"),
        ("code", "fig, ax = plt.subplots(figsize=(5, 3))\n"
                 "ax.bar([r[0] for r in rows], [r[3] for r in rows])\n"
                 "ax.set_ylabel('chat-8b capacity (req/s)')\n"
                 "assert len(rows) == 3"),
    ],
    "05-kv-pool-vs-static": [
        ("md", "# KV pool against static partitions\n\nPooled KV (KV Slab) reserves each "
               "engine a floor for its load and lends the rest of the GPU's memory where the "
               "demand is, in slabs (one 2 MiB granule in every layer's K and V); static KV "
               "fixes each engine's share. Two questions: what the planner does with each "
               "mode, and what the same plan does at run time under each."),
        ("code", SETUP),
        ("code", "rows = []\n"
                 "for mode in (KVMode.POOLED, KVMode.STATIC):\n"
                 "    inst = replace(base, settings=replace(base.settings, kv_mode=mode))\n"
                 "    plan = make_plan(inst, latency)\n"
                 "    kv = sum(e.kv_bytes * e.tp for e in plan.engines) / 2**30\n"
                 "    rows.append((mode.value, len(plan.gpus_used), plan.min_headroom, kv,\n"
                 "                 attainment(plan, inst)))\n"
                 "for r in rows:\n"
                 "    print(f'{r[0]:7s} GPUs {r[1]}  min headroom {r[2]:.2f}  KV reserved '\n"
                 "          f'{r[3]:.1f} GiB  simulated SLO {r[4]:.1%}')\n"
                 "assert {r[0] for r in rows} == {'pooled', 'static'}"),
        ("md", "## Same plan, two memory policies at run time\n\nThe pooled plan, at 3x its "
               "planned load, simulated with the KV Slab pool (the runtime's policy) and with "
               "its memory split once into static partitions (floor + an equal share of the "
               "rest)."),
        ("code", "from fineserve.sim.cluster import SimOptions\n"
                 "from fineserve.metrics.kv import kv_summary\n"
                 "plan = make_plan(base, latency)\n"
                 "hot = scaled(base, 3.0)\n"
                 "tr = trace_for(hot, seed=3)\n"
                 "runs = {}\n"
                 "for kv in ('static', 'pooled'):\n"
                 "    res = simulate(plan, tr, latency, options=SimOptions(kv=kv))\n"
                 "    s = summarize(res.records, {m.name: m.slo for m in hot.models},\n"
                 "                  max(res.duration_s, DURATION), 'simulate')\n"
                 "    runs[kv] = (s, kv_summary(res.kv_samples), sum(res.preemptions.values()))\n"
                 "    gpus = runs[kv][1]\n"
                 "    util = sum(v['util_mean'] for v in gpus.values()) / len(gpus)\n"
                 "    stranded = sum(v['stranded_mean'] for v in gpus.values()) / len(gpus)\n"
                 "    print(f\"{kv:7s} SLO {s['overall']['slo_attainment']:.1%}  preemptions \"\n"
                 "          f\"{runs[kv][2]}  KV util {util:.1%}  stranded {stranded:.1%}\")"),
        ("code", "fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)\n"
                 "for ax, kv in zip(axes, ('static', 'pooled')):\n"
                 "    for g, v in runs[kv][1].items():\n"
                 "        ax.plot(v['series']['t'], [100 * u for u in v['series']['util']],\n"
                 "                lw=0.8, label=f'GPU {g}')\n"
                 "    ax.set_title(f'{kv} KV'); ax.set_xlabel('time (s)'); ax.grid(alpha=0.3)\n"
                 "axes[0].set_ylabel('KV utilisation (%)'); axes[1].legend(fontsize=7)\n"
                 "assert set(runs) == {'static', 'pooled'}"),
    ],
    "06-scheduler-policies": [
        ("md", "# Local scheduler policies under overload\n\nThe same plan at 4x its planned "
               "load, with no local scheduler (every request queues at its engine) and with "
               "the runtime's FCFS, deadline and adaptive schedulers in front of each engine. "
               "Rejected requests count as SLO misses."),
        ("code", SETUP),
        ("code", "from fineserve.scheduler import SchedulerConfig\n"
                 "from fineserve.sim.cluster import SimOptions\n"
                 "plan = make_plan(base, latency)\n"
                 "hot = scaled(base, 4.0)\n"
                 "tr = trace_for(hot, seed=4)\n"
                 "rows = []\n"
                 "for policy in ('none', 'fcfs', 'deadline', 'adaptive'):\n"
                 "    sched = None if policy == 'none' else SchedulerConfig(policy=policy)\n"
                 "    res = simulate(plan, tr, latency, options=SimOptions(scheduler=sched))\n"
                 "    s = summarize(res.records, {m.name: m.slo for m in hot.models},\n"
                 "                  max(res.duration_s, DURATION), 'simulate')['overall']\n"
                 "    rows.append((policy, s['slo_attainment'], s['goodput_rps'], s['drops'],\n"
                 "                 s['ttft_s']['p99']))\n"
                 "for r in rows:\n"
                 "    print(f'{r[0]:9s} SLO {r[1]:.1%}  goodput {r[2]:.1f} req/s  drops {r[3]}'\n"
                 "          f'  TTFT p99 {r[4]:.2f} s')"),
        ("code", "fig, ax = plt.subplots(figsize=(6, 3.2))\n"
                 "ax.bar([r[0] for r in rows], [r[2] for r in rows], color='#4c72b0')\n"
                 "ax.set_ylabel('goodput (SLO-meeting req/s)'); ax.grid(axis='y', alpha=0.3)\n"
                 "assert rows[0][3] == 0 and all(0 <= r[1] <= 1 for r in rows)"),
    ],
}


def build() -> list[Path]:
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                    else nbformat.v4.new_code_cell(src) for kind, src in cells]
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build():
        print(p)
