"""Example-based tests of EngineScheduler: verdicts, FIFO, expiry, cancel, stats."""

from __future__ import annotations

import pytest

from fineserve.scheduler import (
    EngineScheduler,
    RequestInfo,
    SchedulerConfig,
    SchedulerConfigError,
    SloTargets,
    Verdict,
)

SLO = SloTargets(ttft_s=1.0, tpot_s=0.05)


def req(i: int, at: float = 0.0, prompt: int = 100, priority: int = 0) -> RequestInfo:
    return RequestInfo(f"r{i}", "m", prompt, 16, at, priority)


def make(policy: str = "fcfs", **kw: object) -> EngineScheduler:
    cfg = SchedulerConfig(policy=policy, **{"initial_limit": 2, "max_queue": 3, **kw})
    return EngineScheduler("e0", SLO, cfg)


@pytest.mark.parametrize("policy", ["fcfs", "deadline", "adaptive"])
def test_admit_then_queue_then_reject_when_full(policy: str) -> None:
    s = make(policy)
    verdicts = [s.submit(req(i), 0.0).verdict for i in range(6)]
    assert verdicts == [Verdict.ADMIT] * 2 + [Verdict.QUEUE] * 3 + [Verdict.REJECT]
    st = s.stats
    assert (st.in_flight, st.queued, st.admitted, st.rejected) == (2, 3, 2, 1)
    s.check_integrity()


def test_reject_carries_retry_after() -> None:
    s = make(max_queue=0)
    s.submit(req(0), 0.0)
    s.submit(req(1), 0.0)
    d = s.submit(req(2), 0.0)
    assert d.verdict is Verdict.REJECT and d.retry_after_s is not None and d.retry_after_s > 0


def test_finish_frees_slot_and_poll_dispatches_fifo() -> None:
    s = make()
    for i in range(5):
        s.submit(req(i), 0.0)
    s.on_finish("r0", 0.1, 4, True)
    assert s.poll(0.1) == (["r2"], [])
    s.on_finish("r1", 0.2, 4, True)
    s.on_finish("r2", 0.2, 4, True)
    assert s.poll(0.2) == (["r3", "r4"], [])
    assert s.poll(0.3) == ([], [])


def test_higher_priority_jumps_the_queue_fifo_within_priority() -> None:
    s = make(max_queue=10)
    s.submit(req(0), 0.0)
    s.submit(req(1), 0.0)
    for i, p in [(2, 0), (3, 1), (4, 0), (5, 1)]:
        assert s.submit(req(i, priority=p), 0.0).verdict is Verdict.QUEUE
    order = []
    for done in ["r0", "r1", "r3", "r5", "r2", "r4"]:
        s.on_finish(done, 0.1, 2, True)
        order += s.poll(0.1)[0]
    assert order == ["r3", "r5", "r2", "r4"]


def test_deadline_policy_expires_queued_fcfs_does_not() -> None:
    for policy, expect in [("deadline", ["r2"]), ("fcfs", [])]:
        s = make(policy)
        for i in range(3):
            s.submit(req(i), 0.0)
        dispatch, expired = s.poll(1.5)
        assert dispatch == []
        assert [rid for rid, _ in expired] == expect
        assert all(d.verdict is Verdict.REJECT and d.retry_after_s for _, d in expired)
        assert s.stats.expired == len(expect)


def test_cancel_queued_unknown_and_in_flight_is_safe() -> None:
    s = make()
    for i in range(3):
        s.submit(req(i), 0.0)
    s.cancel("r2", 0.1)  # queued
    s.cancel("nope", 0.1)  # unknown
    s.cancel("r2", 0.1)  # twice
    s.cancel("r0", 0.1)  # in flight: frees the slot
    s.on_finish("r0", 0.2, 3, True)  # late finish of a cancelled id: ignored
    st = s.stats
    assert (st.in_flight, st.queued, st.cancelled, st.finished) == (1, 0, 1, 1)
    s.check_integrity()


def test_duplicate_id_raises() -> None:
    s = make()
    s.submit(req(0), 0.0)
    with pytest.raises(ValueError, match="r0"):
        s.submit(req(0), 0.0)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"policy": "lifo"}, "policy"),
        ({"late": "drop"}, "late"),
        ({"min_limit": 0}, "min_limit"),
        ({"initial_limit": 500}, "initial_limit"),
        ({"max_queue": -1}, "max_queue"),
    ],
)
def test_bad_config_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(SchedulerConfigError, match=field):
        SchedulerConfig(**kw)


def test_bad_slo_names_the_field() -> None:
    with pytest.raises(SchedulerConfigError, match="ttft_s"):
        SloTargets(0.0, 0.1)
