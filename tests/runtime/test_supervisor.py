"""Restart backoff, give-up budget and fault domains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fineserve.runtime.options import RestartPolicy
from fineserve.runtime.state import Mode
from fineserve.runtime.supervisor import Backoff, restart_scope

POLICY = RestartPolicy(initial_backoff_s=2, max_backoff_s=20, max_restarts=4, window_s=100)


def test_backoff_doubles_caps_and_gives_up():
    b = Backoff(POLICY)
    assert [b.on_crash(t) for t in (0, 1, 2, 3)] == [2, 4, 8, 16]
    assert b.on_crash(4) is None  # fifth crash inside the window
    assert b.total == 4


def test_backoff_caps_at_max():
    b = Backoff(RestartPolicy(initial_backoff_s=5, max_backoff_s=12, max_restarts=10))
    assert [b.on_crash(t) for t in range(4)] == [5, 10, 12, 12]


def test_old_crashes_leave_the_window():
    b = Backoff(POLICY)
    for t in (0, 1, 2, 3):
        b.on_crash(t)
    assert b.on_crash(150) == 2  # the four old crashes are older than window_s
    assert b.recent == 1


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=30))
def test_backoff_never_exceeds_cap_and_budget(times):
    b = Backoff(POLICY)
    for t in sorted(times):
        d = b.on_crash(t)
        assert d is None or POLICY.initial_backoff_s <= d <= POLICY.max_backoff_s
        assert (d is None) == (b.recent > POLICY.max_restarts)


GROUPS = {"a": "gpu0", "b": "gpu0", "c": "gpu1", "d": ""}


def test_mps_crash_restarts_the_whole_group():
    assert restart_scope("a", GROUPS, Mode.MPS) == ["a", "b"]
    assert restart_scope("c", GROUPS, Mode.MPS) == ["c"]
    assert restart_scope("d", GROUPS, Mode.MPS) == ["d"]


def test_without_mps_only_the_crashed_engine_restarts():
    assert restart_scope("a", GROUPS, Mode.NO_MPS) == ["a"]
    assert restart_scope("a", GROUPS, Mode.CPU) == ["a"]
