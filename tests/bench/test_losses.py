"""bench/e2e/losses.py (where a run lost attainment) and the report's pre-run comparison."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.e2e.losses import engine_limits, loss_lines, model_losses
from bench.e2e.predict import deployed_default
from bench.e2e.report import PRIOR, Row, _rebased, prior_lines
from bench.e2e.results import Measured, ResultsDir
from fineserve.metrics.summary import RequestRecord, summarize
from fineserve.planner.schema import Slo

SLO = {"m": Slo(ttft_s=1.0, tpot_s=0.1)}


def _rec(i: int, status: int = 200, ttft: float = 0.1, tpot: float = 0.01) -> RequestRecord:
    return RequestRecord(i, "m", 0.0, 0.0, 10, 11, status, ttft, ttft + 10 * tpot, 11)


def _measured(records: list[RequestRecord], series=None) -> Measured:
    return Measured("c", 2.0, "d", deployed_default("c"), summarize(records, SLO, 10.0, "replay"),
                    {}, 30.0, engine_series=series or {})


def test_misses_split_into_refused_ttft_late_and_tpot_late():
    recs = ([_rec(i) for i in range(5)] + [_rec(5, status=429), _rec(6, status=429)]
            + [_rec(7, ttft=2.0), _rec(8, ttft=2.0, tpot=0.5)] + [_rec(9, tpot=0.5)])
    (x,) = model_losses(_measured(recs))
    assert (x.requests, x.rejected_429, x.errors, x.ttft_late, x.tpot_late) == (10, 2, 0, 2, 1)
    assert x.misses == 5  # = requests - SLO met


@given(st.lists(st.tuples(st.sampled_from([200, 429, 0]), st.floats(0.01, 3.0),
                          st.floats(0.001, 0.3)), min_size=1, max_size=40))
def test_misses_always_add_up_to_requests_not_meeting_the_slo(spec):
    recs = [_rec(i, s, t, p) if s != 0 else
            RequestRecord(i, "m", 0.0, 0.0, 10, 11, 0, math.nan, math.nan, 0, "boom")
            for i, (s, t, p) in enumerate(spec)]
    m = _measured(recs)
    (x,) = model_losses(m)
    met = round(m.summary["per_model"]["m"]["slo_attainment"] * len(recs))
    assert x.misses == len(recs) - met
    assert min(x.rejected_429, x.errors, x.ttft_late, x.tpot_late) >= 0


def test_limit_drops_are_put_down_to_the_engine_state_at_the_next_sample():
    # [t, running, waiting, kv, preemptions, limit]
    rows = [[0, 10, 0, 0.5, 0, 100], [1, 10, 0, 0.5, 0, 90],  # nothing wrong: latency
            [2, 10, 0, 0.5, 3, 80],  # preempted: KV
            [3, 10, 2, 0.97, 3, 70],  # waiting with a full cache: KV
            [4, 10, 2, 0.50, 3, 60],  # waiting, cache not full: the clamp
            [5, 10, 0, 0.5, 3, 90], [6, 10, 0, 0.5, 3, -1]]  # rise; no limit reported
    (e,) = engine_limits(_measured([_rec(0)], {"e0": rows}))
    assert (e.cuts_kv, e.cuts_waiting, e.cuts_latency) == (2, 1, 1)
    assert (e.first, e.lowest, e.last, e.preemptions, e.waiting_max) == (100, 60, 90, 3, 2)
    text = "\n".join(loss_lines(_measured([_rec(0)], {"e0": rows})))
    assert "| e0 | 100 / 60 / 90 |" in text and "| 2 / 1 / 1 |" in text


def test_a_prior_prediction_is_compared_over_the_replay_wall_time(tmp_path):
    pred = {"duration_s": 35.0, "overall": {"output_tokens_per_s": 100.0, "slo_attainment": 0.5,
                                            "goodput_rps": 7.0}}
    got = _rebased(pred, {"duration_s": 70.0})
    assert got["overall"]["output_tokens_per_s"] == pytest.approx(50.0)
    assert got["overall"]["goodput_rps"] == pytest.approx(3.5)
    assert got["overall"]["slo_attainment"] == 0.5  # a fraction, not a rate
    res = ResultsDir(tmp_path)
    (tmp_path / PRIOR).mkdir()
    (tmp_path / PRIOR / res.predicted_path("c", 2.0).name).write_text(
        json.dumps({"summary": {**pred, "overall": {**pred["overall"],
                                                    "rejected_429": 3}}}))
    measured = {"duration_s": 70.0, "overall": {"output_tokens_per_s": 50.0,
                                                "slo_attainment": 0.6, "rejected_429": 1}}
    rows = [Row("c", 2.0, 48.0, measured, measured, None, None),
            Row("c", 3.0, 72.0, None, measured, None, None)]  # not measured: left out
    lines = prior_lines(res, rows, tmp_path / PRIOR)
    body = [x for x in lines if x.startswith("| (c)")]
    assert body == ["| (c) | 2 | 60.0% | 50.0% (-10.0 pt, +0.0%) | 60.0% (+0.0 pt, +0.0%)"
                    " | 1 / 3 / 1 |"]
    assert prior_lines(res, rows, tmp_path / "none") == []
