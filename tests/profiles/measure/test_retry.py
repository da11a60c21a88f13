"""A point measured once more at once when its repeats spread over 5% or the GPU's clock
moved (session 7's runs that slowed mid-point): the worker's retry, the store's choice of the
attempt that stands, the metadata line, and the session plan's time for it."""

from __future__ import annotations

import json
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.profiles.measure import engine as eng
from fineserve.profiles.measure import worker
from fineserve.profiles.measure.records import (
    DECODE_METHOD,
    PREFILL_METHOD,
    EngineLabel,
    PointRecord,
    PointSpec,
    ProfileJob,
    append,
    read_records,
)
from fineserve.profiles.measure.runner import EnginePlan, with_retries
from fineserve.profiles.measure.stats import rel_spread
from fineserve.profiles.measure.store import ResultStore, attempt_runs, kept
from fineserve.profiles.measure.telemetry import Telemetry
from fineserve.profiles.precision import Precision
from fineserve.profiles.schema import load_profile
from tests.profiles.measure.test_worker import ARGS, LABEL

QUIET, NOISY = (0.0131, 0.0132, 0.0133), (0.0131, 0.0185, 0.0210)  # session 7's 8B 1 x 512


def _record(latencies, attempt=1, clock=(1980, 1980), key=("prefill", 1, 512),
            label=LABEL) -> PointRecord:  # fmt: skip
    t = Telemetry(4, clock[0], float(clock[1]), clock[1], 600.0, 650.0, 0)
    return PointRecord(label, *key, tuple(latencies), PREFILL_METHOD, telemetry=t,
                       attempt=attempt)


def test_a_point_is_retried_for_its_spread_once_only():
    assert worker.retry_reason(_record(QUIET)) is None
    assert worker.retry_reason(_record(NOISY)) == "repeats spread 42.7% > 5%"
    # the power-capped clock's swing alone is no reason (session 7: quiet points at 1725-1905)
    assert worker.retry_reason(_record(QUIET, clock=(1410, 1980))) is None
    assert worker.retry_reason(_record(NOISY, attempt=2)) is None  # the retry stands
    no_nvml = PointRecord(LABEL, "decode", 8, 256, QUIET, DECODE_METHOD)
    assert worker.retry_reason(no_nvml) is None


@pytest.fixture
def engine_answers(monkeypatch):
    """Decode steps answering from a list per call (1 untimed + 3 timed runs a point)."""
    answers: list[float] = []
    monkeypatch.setattr(eng, "decode_step",
                        lambda *a, **k: (eng.Timing(answers.pop(0), DECODE_METHOD), True))
    monkeypatch.setattr(eng, "lone_decode", lambda *a, **k: 0.007)
    return answers


def _job(tmp_path, points, deadline=4e9) -> ProfileJob:
    return ProfileJob(LABEL, ARGS, tuple(points), 128, str(tmp_path / "r.jsonl"), deadline)


def test_the_worker_appends_the_retry_as_a_second_attempt(tmp_path, engine_answers):
    noisy, quiet = PointSpec("decode", 1, 256, 3), PointSpec("decode", 8, 256, 3)
    engine_answers += [0.007, 0.0070, 0.0090, 0.0071,  # noisy: 27%
                       0.007, 0.0070, 0.0071, 0.0070,  # its retry: 1.4%
                       0.008, 0.0080, 0.0080, 0.0081]  # quiet
    job = _job(tmp_path, (noisy, quiet))
    worker._measure_points(None, None, job, None, worker.LeadReference(), False, None)
    records = read_records(job.results)
    assert [(r.key, r.attempt) for r in records] == [(noisy.key, 1), (noisy.key, 2),
                                                      (quiet.key, 1)]
    assert not engine_answers  # no retry of the quiet point


def test_a_retry_that_cannot_end_before_the_deadline_is_not_made(tmp_path, engine_answers,
                                                                  monkeypatch):
    clock = count(1000.0, 0.5)  # every call of time.time: half a second later
    monkeypatch.setattr(worker.time, "time", lambda: next(clock))
    monkeypatch.setattr(worker.time, "perf_counter", lambda: next(clock))
    noisy = PointSpec("decode", 1, 256, 3)
    engine_answers += [0.007, 0.0070, 0.0090, 0.0071]
    job = _job(tmp_path, (noisy,), deadline=1000.0 + worker.SAFETY_S + 1.5)
    worker._measure_points(None, None, job, None, worker.LeadReference(), False, None)
    assert [r.attempt for r in read_records(job.results)] == [1]


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path, LABEL.gpu, LABEL.model, Precision.parse("bf16"))
    s.prepare()
    return s


def test_the_attempt_whose_repeats_spread_least_stands_and_the_metadata_says_both(store):
    append(store.results, _record(NOISY))
    append(store.results, _record(QUIET, attempt=2, clock=(1755, 1980)))
    (point,) = store.points()
    assert point.latencies == QUIET and point.attempt == 2
    (line,) = store.retried()
    assert line == ("SM 100 prefill 1 x 512: 2 attempts, spreads 42.7% / 1.5%, SM clock "
                    "1980-1980 MHz / 1755-1980 MHz, kept attempt 2")
    # a worse retry does not replace the first attempt
    append(store.results, _record(QUIET))
    append(store.results, _record(NOISY, attempt=2))
    assert store.points()[-1].attempt == 1 and store.points()[-1].latencies == QUIET
    assert store.retried()[0].endswith("kept attempt 1")
    store.export({LABEL: (PointSpec("prefill", 1, 512, 3),)})
    (row,) = load_profile(store.csv)
    assert row.rel_spread == pytest.approx(rel_spread(QUIET))  # the kept attempt's, whole
    assert json.loads(store.meta.read_text())["retried"] == store.retried()


def test_a_later_sessions_first_attempt_starts_a_new_run(store):
    append(store.results, _record(QUIET))
    append(store.results, _record(NOISY))  # a later session: attempt 1, not a retry
    assert [len(run) for run in store.runs()] == [1, 1]
    assert store.points()[-1].latencies == NOISY and store.retried() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([128, 512]), st.sampled_from([1, 2]),
                          st.floats(0.0, 0.5)), max_size=12))
def test_runs_partition_the_records_and_keep_the_least_spread_attempt(rows):
    records = [_record((0.01, 0.01 * (1 + s), 0.01), attempt=a, key=("prefill", 1, t))
               for t, a, s in rows]
    runs = attempt_runs(records)
    assert sorted(map(id, (r for run in runs for r in run))) == sorted(map(id, records))
    for run in runs:
        assert len({r.key for r in run}) == 1 and all(r.attempt > 1 for r in run[1:])
        assert rel_spread(kept(run).latencies) == min(rel_spread(r.latencies) for r in run)
    # every first attempt starts a run; a retry starts one only with nothing before it
    firsts = sum(r.attempt == 1 for r in records)
    assert firsts <= len(runs) <= len(records)


def test_a_session_plan_leaves_time_for_the_retry_of_each_redone_point(store):
    redo, fresh = PointSpec("prefill", 1, 512, 3), PointSpec("prefill", 1, 128, 3)
    append(store.results, _record(NOISY))
    other = EngineLabel(LABEL.gpu, LABEL.model, "bf16", "bf16", 1, 50.0)
    plan = EnginePlan(LABEL, ARGS, (fresh, redo), (fresh, redo), store)
    assert with_retries(plan) == (fresh, redo, redo)
    assert with_retries(EnginePlan(other, ARGS, (fresh, redo), (fresh, redo), store)) == \
        (fresh, redo)
