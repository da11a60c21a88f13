"""What the bench/e2e tests share: the three configurations' plans for a small benchmark and
a results directory holding them (the planner and latency model are the real ones)."""

from __future__ import annotations

from pathlib import Path

from bench.e2e.plans import make_config_plan
from bench.e2e.results import ResultsDir
from bench.e2e.workload import BenchSet
from fineserve.planner.planfile import save_plan
from fineserve.planner.schema import Plan
from fineserve.profiles.latency import LatencyModel


def config_plans(bench: BenchSet, latency: LatencyModel) -> dict[str, Plan]:
    """Plans of configurations (a), (b), (c) for ``bench``."""
    return {k: make_config_plan(bench, k, latency, time_limit_s=5) for k in "abc"}


def results_dir(tmp_path: Path, bench: BenchSet, plans: dict[str, Plan]) -> ResultsDir:
    """A results directory with ``bench`` and the ``plans`` saved, nothing run yet."""
    res = ResultsDir(tmp_path / "res")
    res.save_bench(bench)
    for k, plan in plans.items():
        save_plan(plan, res.plan_path(k))
    return res
