"""Interference bookkeeping: scenario checks, resumption, slowdown rows and the fit export."""

from __future__ import annotations

import csv

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.measure.interference import (
    InterferenceRequest,
    Member,
    Scenario,
    done_scenarios,
    export,
)
from fineserve.profiles.measure.interference_fit import InterferenceFit
from fineserve.profiles.measure.records import EngineLabel, LoadRecord, append
from fineserve.profiles.precision import Precision

BF16 = Precision.parse("bf16")
PAIR = Scenario("pair-50-50", (Member("a", "llama-3.1-8b", BF16, 50),
                               Member("b", "llama-3.1-8b", BF16, 50)))


def label(sm: float) -> EngineLabel:
    return EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "bf16", "bf16", 1, sm)


def record(member: str, phase: str, active, step: float, ttft: float) -> LoadRecord:
    return LoadRecord(label(50), PAIR.name, member, phase, tuple(active),
                      (step, step * 1.01, step * 0.99), (ttft, ttft), 32, 544)


def test_scenarios_are_checked():
    with pytest.raises(SpecError, match="add up"):
        Scenario("x", (Member("a", "llama-3.1-8b", BF16, 70),
                       Member("b", "llama-3.1-8b", BF16, 50)))
    with pytest.raises(SpecError, match="distinct"):
        Scenario("x", (Member("a", "llama-3.1-8b", BF16, 50),))


def test_a_scenario_is_done_once_every_member_ran_together(tmp_path):
    results = tmp_path / "interference.jsonl"
    append(results, record("a", "alone-a", "a", 0.010, 0.05))
    append(results, record("a", "together", "ab", 0.012, 0.055))
    assert done_scenarios(results, (PAIR,)) == set()
    append(results, record("b", "together", "ab", 0.012, 0.055))
    assert done_scenarios(results, (PAIR,)) == {PAIR.name}


def test_export_writes_slowdowns_and_a_loadable_fit(tmp_path):
    results = tmp_path / "interference.jsonl"
    for m in "ab":
        append(results, record(m, f"alone-{m}", m, 0.010, 0.050))
        append(results, record(m, "together", "ab", 0.013, 0.052))
    request = InterferenceRequest(scenarios=(PAIR,), out=tmp_path)
    fit = export(request, results)
    rows = list(csv.DictReader(open(tmp_path / "interference.csv")))
    decode = [r for r in rows if r["phase"] == "decode"]
    assert len(rows) == 4 and len(decode) == 2
    assert float(decode[0]["slowdown"]) == pytest.approx(1.3)
    # each engine alone reads ~16 GB + KV per 10 ms step: about half the H100's bandwidth
    assert 0.4 < float(decode[0]["self_demand"]) < 0.6
    assert float(decode[0]["others_demand"]) == pytest.approx(float(decode[1]["self_demand"]))
    assert InterferenceFit.load(tmp_path / "interference-fit.json") == fit
    assert fit.decode.slowdown(float(decode[0]["self_demand"]),
                               float(decode[0]["others_demand"])) == pytest.approx(1.3, rel=0.02)
