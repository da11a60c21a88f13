"""Deadline admission: provably late requests are rejected (or deprioritised), feasible ones not."""

from __future__ import annotations

from fineserve.scheduler import (
    Decision,
    EngineScheduler,
    RequestInfo,
    SchedulerConfig,
    SloTargets,
    Verdict,
)


def sched(ttft: float, **kw: object) -> EngineScheduler:
    cfg = SchedulerConfig(policy="deadline", **{"initial_limit": 1, "max_queue": 8, **kw})
    return EngineScheduler("e0", SloTargets(ttft, 0.1), cfg)


def req(rid: str, at: float, prompt: int = 100) -> RequestInfo:
    return RequestInfo(rid, "m", prompt, 16, at)


def test_prefill_hint_rejects_a_prompt_too_long_for_the_slo() -> None:
    s = sched(1.0, est_prefill_s_per_token=0.001)
    d = s.submit(req("long", 0.0, prompt=5000), 0.0)  # 5 s of prefill vs a 1 s SLO
    assert d.verdict is Verdict.REJECT and "TTFT" in d.reason
    assert d.retry_after_s is not None and d.retry_after_s >= 3.9
    assert s.submit(req("short", 0.0, prompt=500), 0.0).verdict is Verdict.ADMIT


def learned_with(ttft: float, **kw: object) -> EngineScheduler:
    s = sched(ttft, **kw)
    s.submit(req("r0", 0.0), 0.0)
    s.on_first_token("r0", 0.1)
    s.on_finish("r0", 2.0, 16, True)
    assert s.submit(req("r1", 10.0), 10.0).verdict is Verdict.ADMIT
    return s


def learned(ttft: float) -> EngineScheduler:
    """One request observed: 0.1 s to first token (100 tokens), 2 s in service."""
    return learned_with(ttft)


def test_learned_service_time_rejects_what_cannot_start_in_time() -> None:
    # r2 must wait ~2 s for r1's slot, then 0.1 s of prefill: 2.1 s > 1 s SLO.
    d = learned(1.0).submit(req("r2", 10.0), 10.0)
    assert d.verdict is Verdict.REJECT
    assert 0.9 <= d.retry_after_s <= 1.3  # about how late it would have been


def test_learned_service_time_queues_what_can() -> None:
    assert learned(3.0).submit(req("r2", 10.0), 10.0).verdict is Verdict.QUEUE


def test_time_already_spent_counts_against_the_deadline() -> None:
    s = sched(1.0, est_prefill_s_per_token=0.001)
    assert s.submit(req("old", 0.0, prompt=500), 0.7).verdict is Verdict.REJECT  # 0.7 + 0.5
    assert s.submit(req("new", 0.7, prompt=500), 0.7).verdict is Verdict.ADMIT


def test_deprioritised_requests_wait_behind_on_time_ones() -> None:
    s = learned_with(5.0, late="deprioritise")
    assert s.submit(req("r2", 10.0), 10.0) == Decision(Verdict.QUEUE)  # first token ~12.1
    late = s.submit(req("late", 6.0), 10.0)  # ~14.1 > 6 + 5: cannot make it
    assert late.verdict is Verdict.QUEUE and late.reason == "late: deprioritised"
    assert s.submit(req("r3", 10.0), 10.0) == Decision(Verdict.QUEUE)  # ~14.1 <= 15
    order = []
    for t, done in [(11.0, "r1"), (12.0, "r2"), (13.0, "r3")]:
        s.on_finish(done, t, 16, True)
        order += s.poll(t)[0]
    assert order == ["r2", "r3", "late"]
    assert s.stats.deprioritised == 1 and s.stats.rejected == 0


def test_deprioritised_requests_expire_at_the_late_timeout() -> None:
    s = learned_with(1.0, late="deprioritise", late_timeout_factor=3.0)
    assert s.submit(req("late", 10.0), 10.0).reason == "late: deprioritised"
    assert s.poll(12.9) == ([], [])
    ids, expired = s.poll(13.0)
    assert ids == [] and [rid for rid, _ in expired] == ["late"]
