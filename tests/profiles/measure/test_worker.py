"""The worker's repeat logic around the engine calls (the engine itself: test_e2e_cpu.py)."""

from __future__ import annotations

import os
from itertools import count

import pytest

from fineserve.profiles.measure import engine as eng
from fineserve.profiles.measure import worker
from fineserve.profiles.measure.records import (
    DECODE_METHOD,
    PREFILL_METHOD,
    STAMP_PREFILL_METHOD,
    EngineArgs,
    EngineLabel,
    PointSpec,
    ProfileJob,
)

LABEL = EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "bf16", "bf16", 1, 100.0)
ARGS = EngineArgs("/m", 1, None, "auto", 8224, 32, 8192, 1 << 30, 0.3, False, 128256)


def job(points: tuple[PointSpec, ...]) -> ProfileJob:
    return ProfileJob(LABEL, ARGS, points, 128, "/dev/null", 4e9)


@pytest.fixture
def fake_runs(monkeypatch):
    """Engine calls answering 1, 2, 3, ... ms in order (the first is the untimed run)."""
    n = count(1)
    monkeypatch.setattr(eng, "prefill", lambda *a, **k: eng.Timing(next(n) / 1e3, PREFILL_METHOD))
    monkeypatch.setattr(eng, "decode_step",
                        lambda *a, **k: (eng.Timing(next(n) / 1e3, DECODE_METHOD), True))
    monkeypatch.setattr(eng, "lone_ttft", lambda *a, **k: (0.05, 0.04))
    monkeypatch.setattr(eng, "lone_decode", lambda *a, **k: 0.007)


def test_a_prefill_repeat_is_the_median_of_its_runs(fake_runs):
    point = PointSpec("prefill", 4, 2048, repeats=2, samples=3)
    record = worker._measure(None, None, job((point,)), point, floor=0.01)
    # run 1 is untimed; runs 2-4 and 5-7 are the two repeats (stamps: no settling runs)
    assert record.runs == (0.002, 0.003, 0.004, 0.005, 0.006, 0.007)
    assert record.latencies == (0.003, 0.006)
    assert record.method == f"{PREFILL_METHOD} med3"
    assert record.check_s is None  # batch 4: no lone-prompt cross-check


def test_prefill_settles_until_two_runs_agree(monkeypatch):
    """Session 7's 3B at SM 100: 10.1, 10.7, 5.8 ms, then 4.1 ms steadily. The settling runs
    are not timed repeats: the record's runs start after two in a row agreed within 5%."""
    answers = iter([0.0101, 0.0107, 0.0058, 0.00412, 0.00413, 0.00414] + [0.00412] * 20)
    monkeypatch.setattr(eng, "prefill",
                        lambda *a, **k: eng.Timing(next(answers), PREFILL_METHOD))
    monkeypatch.setattr(eng, "lone_ttft", lambda *a, **k: (0.05, 0.04))
    monkeypatch.setattr(eng, "time_steps", lambda llm, on=None: True)
    point = PointSpec("prefill", 1, 128, repeats=2, samples=3)
    record = worker._measure(None, None, job((point,)), point, floor=0.001, timed=True)
    # settled after 0.00412 / 0.00413; 0.00414 was the untimed run
    assert record.runs == (0.00412,) * 6
    assert record.latencies == (0.00412, 0.00412)


def test_single_run_repeats_keep_the_method_name_and_no_runs(fake_runs):
    point = PointSpec("decode", 1, 256, repeats=3)
    record = worker._measure(None, None, job((point,)), point, floor=None)
    assert record.latencies == (0.002, 0.003, 0.004) and record.runs == ()
    assert record.method == f"{DECODE_METHOD} n128"
    assert record.check_s == 0.007


def test_time_guess_counts_the_runs_of_a_repeat():
    small = PointSpec("prefill", 1, 128, repeats=5, samples=3)
    big = PointSpec("prefill", 1, 512, repeats=5, samples=3)
    assert worker._guess([(small, 2.0)], big) == pytest.approx(4.0)
    assert worker._guess([(small, 2.0)], PointSpec("decode", 1, 128, 5)) == 0.0


def test_the_worker_waits_for_its_memory_then_starts_or_says_why_not(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    frees = iter([10 << 30, 12 << 30, 30 << 30])  # a previous wave's engines exiting
    assert worker.wait_for_memory(20 << 30, 4e9, lambda: next(frees)) is None
    why = worker.wait_for_memory(20 << 30, 0.0, lambda: 5 << 30)  # never enough, out of time
    assert why is not None and "5.0 GiB free" in why and "20.0 GiB planned" in why
    assert worker.wait_for_memory(20 << 30, 0.0, lambda: None) is None  # no NVML: go ahead
    assert worker.wait_for_memory(0, 0.0, lambda: 0) is None  # nothing planned


def test_an_engine_without_its_memory_is_recorded_as_not_started(monkeypatch):
    monkeypatch.setattr(eng, "device_identity",
                        lambda d: eng.DeviceIdentity("H100", "570", "GPU-1234"))
    monkeypatch.setattr(eng, "versions", lambda: {"vllm_version": "0.26", "torch_version": "2"})
    monkeypatch.setattr(eng, "device_memory_free", lambda d: 1 << 30)
    monkeypatch.setattr(eng, "start_engine", lambda *a: pytest.fail("started without memory"))
    monkeypatch.setattr(worker, "MEMORY_WAIT_S", 0.0)
    j = ProfileJob(LABEL, ARGS, (), 128, "/dev/null", 4e9, memory_bytes=20 << 30)
    llm, record = worker._start(j)
    assert llm is None and "not enough free device memory" in record.error
    assert record.device_uuid == "GPU-1234"  # a later run compares per GPU
    assert record.host_cpus == len(os.sched_getaffinity(0))


def test_blocker_steps_are_recorded_and_a_shorter_one_lowers_the_reference(monkeypatch):
    leads = iter([0.050, 0.049, 0.0495, 0.060, 0.049])  # untimed run first; one late run
    refs = []

    def prefill(llm, prompts, batch, tokens, blocker, reference, timed=False):
        assert not timed  # no device timer: the stamps and their late-stamp retries
        refs.append(reference)
        lead = next(leads)
        return eng.Timing(0.01, STAMP_PREFILL_METHOD, lead_s=lead, late=lead > 0.055)

    monkeypatch.setattr(eng, "prefill", prefill)
    point = PointSpec("prefill", 4, 512, repeats=4)
    ref = worker.LeadReference(0.0500)
    record = worker._measure(None, None, job((point,)), point, floor=None, lead=ref)
    assert refs == [0.05, 0.05, 0.049, 0.049, 0.049]  # a late lead never raises it
    assert record.leads == (0.049, 0.0495, 0.060, 0.049)
    assert record.lead_reference == 0.049
    assert "blocker stamped late" in record.note
    assert record.method == STAMP_PREFILL_METHOD == "step-ts/3"


def test_an_engine_that_is_not_the_planned_precision_measures_nothing():
    gib = 1 << 30
    assert worker.wrong_weights(None, 5 * gib) is None  # vLLM said nothing
    assert worker.wrong_weights(6 * gib, 5 * gib) is None  # within the slack
    assert worker.wrong_weights(15 * gib, 0) is None  # nothing planned
    why = worker.wrong_weights(15 * gib, int(5.3 * gib))  # the unquantized GPTQ engine
    assert why is not None and "15.0 GiB" in why and "5.3 GiB planned" in why


def test_device_timed_prefill_records_device_runs_beside_their_stamp_readings(monkeypatch):
    switches, calls = [], []
    monkeypatch.setattr(eng, "time_steps", lambda llm, on=None: switches.append(on) or True)

    def prefill(llm, prompts, batch, tokens, blocker, reference, timed=False):
        calls.append(timed)
        n = len(calls)
        # device 10 ms each run; the stamps read one run 0.7 ms (a late blocker stamp)
        return eng.Timing(0.010 + n * 1e-5, PREFILL_METHOD, lead_s=0.05,
                          stamp_s=0.0007 if n == 5 else 0.0100)

    monkeypatch.setattr(eng, "prefill", prefill)
    monkeypatch.setattr(eng, "lone_ttft", lambda *a, **k: (0.05, 0.04))
    point = PointSpec("prefill", 1, 512, repeats=2, samples=3)
    record = worker._measure(None, None, job((point,)), point, floor=0.03, timed=True)
    # 2 settling runs (10.01 / 10.02 ms agree), 1 untimed, 6 timed; on for the point, then off
    assert calls == [True] * 9 and switches == [True, False]
    assert record.method == f"{PREFILL_METHOD} med3" == "step-ev/2 med3"
    assert len(record.runs) == 6 and min(record.runs) > 0.0100
    assert record.stamp_runs[1] == 0.0007 and len(record.stamp_runs) == 6  # kept, not used
    assert record.note == "" and record.lead_reference is None


def test_decode_points_are_never_device_timed(monkeypatch):
    monkeypatch.setattr(eng, "time_steps", lambda *a, **k: pytest.fail("timer switched"))
    monkeypatch.setattr(eng, "decode_step",
                        lambda *a, **k: (eng.Timing(0.005, DECODE_METHOD), True))
    monkeypatch.setattr(eng, "lone_decode", lambda *a, **k: 0.005)
    point = PointSpec("decode", 1, 256, repeats=3)
    assert worker._measure(None, None, job((point,)), point, None, timed=True).latencies \
        == (0.005,) * 3


def test_time_guess_scales_the_estimate_by_what_measured_points_took():
    p128 = PointSpec("prefill", 1, 128, repeats=5, samples=3)
    p2048 = PointSpec("prefill", 1, 2048, repeats=5, samples=3)
    dec = PointSpec("decode", 1, 256, repeats=3, samples=3)
    # the 70B at SM 50 (session 6): blocker-bound points, 55 s measured for 11.6 s estimated
    est = {p128.key: 11.6, p2048.key: 21.3, dec.key: 12.0}
    assert worker._guess([(p128, 55.0)], p2048, est) == pytest.approx(21.3 * 55 / 11.6)
    assert worker._guess([(p128, 55.0)], p2048) == pytest.approx(220.0)  # the size rule
    # decode guessed from prefill's ratio until a decode point is measured, then its own
    assert worker._guess([(p128, 23.2)], dec, est) == pytest.approx(24.0)
    assert worker._guess([(p128, 23.2), (dec, 12.0)], dec, est) == pytest.approx(12.0)
    assert worker._guess([], p2048, est) == 0.0  # nothing measured: the first point runs


def test_device_timing_is_used_only_where_the_probe_passes(monkeypatch, capsys):
    answers = iter([None, "the batch's step not found among 3 timed steps"])
    monkeypatch.setattr(eng, "probe_device_timing", lambda *a, **k: next(answers))
    assert worker.device_timing(None, None, 2048)
    assert "timed on the device: yes" in capsys.readouterr().err
    assert not worker.device_timing(None, None, 2048)
    assert "no, the batch's step not found" in capsys.readouterr().err
