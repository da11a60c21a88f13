"""Engines started in waves and measured one at a time (runner + waves), with stand-in workers
that speak the worker's file protocol and its real ready/go wait (``worker.wait_for_go``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fineserve.profiles.measure.grid import GridSpec
from fineserve.profiles.measure.runner import ProfileRequest, run_profile
from fineserve.profiles.measure.waves import WaveMember, run_wave
from tests.profiles.measure.standin import profile_request, stand_in_python

GRID = GridSpec(sm_pcts=(100, 70, 50, 30), prefill_tokens=(64,), prefill_batches=(1,),
                decode_batches=(1,), decode_contexts=(64,), repeats=2, decode_tokens=8)

STAND_IN = r'''
import json, os, sys, time
from pathlib import Path
from fineserve.profiles.measure.records import (EngineRecord, PointRecord, ProfileJob,
                                                append, read_job)
from fineserve.profiles.measure.worker import wait_for_go
job = read_job(sys.argv[-1], ProfileJob)
def event(what):
    with open(os.environ["EVENTS"], "a") as f:
        f.write(json.dumps([job.tag, what, os.getpid()]) + "\n")
event("started")
append(job.results, EngineRecord(job.label, 1.0, True))
if job.tag and job.tag.startswith(os.environ.get("STAND_IN_FAIL", "-")):
    Path(job.control, job.tag + ".failed").write_text("no memory")
    sys.exit(3)
time.sleep(0.3)  # an engine start
if job.control and not wait_for_go(Path(job.control), job.tag, job.deadline, 0.01):
    sys.exit(0)
event("measure")
for p in job.points:
    append(job.results, PointRecord(job.label, p.phase, p.batch, p.tokens, (0.01, 0.0101), "x"))
event("done")
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("EVENTS", str(tmp_path / "events.jsonl"))
    return stand_in_python(tmp_path, STAND_IN)


def request(tmp_path, python, **kw) -> ProfileRequest:
    return profile_request(tmp_path, python, GRID, **{"parallel": True, **kw})


def events(tmp_path) -> list[tuple[str, str, int]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [tuple(json.loads(x)) for x in lines]


def test_a_wave_starts_its_leader_first_then_measures_one_engine_at_a_time(tmp_path, stand_in):
    summary = run_profile(request(tmp_path, stand_in))
    assert summary.measured == 4 * len(GRID.points()) and not summary.failed
    assert summary.exports[0].complete == (30.0, 50.0, 70.0, 100.0)
    ev = events(tmp_path)
    # 8B bf16 engines (~19 GiB each) : 3 in the first wave, the fourth in a second one
    first = [t for t, what, _ in ev if what == "started"]
    assert first[0] == "sm100-bf16.kv-bf16-tp1" and first[-1] == "sm30-bf16.kv-bf16-tp1"
    leader_measured = ev.index(("sm100-bf16.kv-bf16-tp1", "measure", ev[0][2]))
    followers = [i for i, (t, what, _) in enumerate(ev) if what == "started" and t in
                 ("sm70-bf16.kv-bf16-tp1", "sm50-bf16.kv-bf16-tp1")]
    assert all(i < leader_measured for i in followers)  # every start before any measuring
    where = {(t, what): i for i, (t, what, _) in enumerate(ev)}
    assert where[("sm30-bf16.kv-bf16-tp1", "started")] > where[("sm50-bf16.kv-bf16-tp1", "done")]
    turns = [(t, what) for t, what, _ in ev if what in ("measure", "done")]
    assert turns == [(t, w) for t in ("sm100-bf16.kv-bf16-tp1", "sm70-bf16.kv-bf16-tp1",
                                      "sm50-bf16.kv-bf16-tp1", "sm30-bf16.kv-bf16-tp1")
                     for w in ("measure", "done")]  # never two at once, in SM order
    for _, _, pid in ev:  # nothing left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list((tmp_path / "out").rglob(".wave-*")) and not list(
        (tmp_path / "out").rglob(".job-*"))


def test_an_engine_that_does_not_start_leaves_the_others_measured(tmp_path, stand_in,
                                                                   monkeypatch):
    monkeypatch.setenv("STAND_IN_FAIL", "sm70")
    summary = run_profile(request(tmp_path, stand_in))
    assert summary.measured == 3 * len(GRID.points())
    assert summary.exports[0].complete == (30.0, 50.0, 100.0)
    assert summary.exports[0].incomplete == (70.0,)
    rerun = run_profile(request(tmp_path, stand_in, parallel=False))
    assert rerun.measured == len(GRID.points())  # one by one, the missing engine only


def test_a_wave_past_its_time_kills_what_it_started(tmp_path):
    killed = []

    def kill(proc):
        killed.append(proc.pid)
        os.killpg(proc.pid, 9)
        proc.wait()

    def start():
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                start_new_session=True)

    members = [WaveMember("a", True, start), WaveMember("b", False, start)]
    result = run_wave(members, tmp_path / "control", time.time() + 1.0, kill)
    assert result.out_of_time and result.measured == ()
    assert len(killed) == 1  # the leader never came up, so the follower never started
    assert (tmp_path / "control" / "stop").exists()
