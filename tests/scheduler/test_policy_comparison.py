"""On an overloaded fake engine, deadline-aware policies serve their admitted requests within
the SLO far more often than FCFS, and do not lose goodput doing so."""

from __future__ import annotations

from fineserve.scheduler import SloTargets
from tests.scheduler.fake_engine import FakeEngine, poisson_arrivals, run_policy

SLO = SloTargets(ttft_s=1.0, tpot_s=0.1)
# First token and decode both slow down with concurrency; ~6 req/s at 16 in flight.
ENGINE = FakeEngine(
    ttft_base=0.05,
    ttft_per_inflight=0.03,
    ttft_per_token=1e-4,
    tpot_base=0.01,
    tpot_per_inflight=0.002,
)
TRACE = poisson_arrivals(rate=15.0, duration=30.0, prompt=400, out=50, seed=1)


def outcome(policy: str) -> tuple[float, int]:
    res = run_policy(policy, SLO, ENGINE, TRACE)
    return res.attainment(SLO), res.goodput(SLO)


def test_deadline_policies_beat_fcfs_on_an_overloaded_engine() -> None:
    fcfs, deadline, adaptive = (outcome(p) for p in ("fcfs", "deadline", "adaptive"))
    assert fcfs[0] < 0.3  # FCFS: the queue fills, everyone waits far past the TTFT SLO
    assert deadline[0] > 0.85 and adaptive[0] > 0.85
    assert deadline[1] > fcfs[1] and adaptive[1] > fcfs[1]
