"""bench/e2e/whatif.py: the simulator on a changed plan or scheduler, on the measured traces."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.e2e.predict import predict_one, sim_options
from bench.e2e.results import Deployed
from bench.e2e.whatif import EngineChange, WhatIfError, changed, main, what_if
from bench.e2e.workload import H100_SET
from fineserve.scheduler import SchedulerConfig
from tests.bench.helpers import config_plans, results_dir

SMALL = replace(H100_SET, duration_s=6.0, rate_scales=(3.0,))


@pytest.fixture(scope="module")
def plans(latency):
    return config_plans(SMALL, latency)


def test_a_change_is_parsed_or_refused_with_the_field_named():
    assert EngineChange.parse("chat-0:max_batch=384") == EngineChange("chat-0", "max_batch", 384)
    for bad in ("chat-0", "chat-0:kv_bytes=5", "chat-0:sm_pct=x", "chat-0:sm_pct=0", ":sm_pct=5"):
        with pytest.raises(WhatIfError, match="ENGINE:FIELD=N"):
            EngineChange.parse(bad)


def test_changes_apply_to_the_named_engine_and_sm_shares_must_fit(plans):
    plan = plans["c"]
    first, *rest = plan.engines
    got = changed(plan, (EngineChange(first.engine_id, "max_batch", 999),))
    assert got.engines[0].max_batch == 999 and got.engines[1:] == tuple(rest)
    assert changed(plan, ()) == plan
    with pytest.raises(WhatIfError, match="no engine 'nope'"):
        changed(plan, (EngineChange("nope", "sm_pct", 10),))
    with pytest.raises(WhatIfError, match="would take"):
        changed(plan, (EngineChange(first.engine_id, "sm_pct", 100),))
    # a plan made with MPS oversubscription may take that much, no more
    over = replace(plan, instance=replace(plan.instance, settings=replace(
        plan.instance.settings, sm_oversubscription=1.5)))
    others = sum(e.sm_pct for e in rest)
    assert changed(over, (EngineChange(first.engine_id, "sm_pct", 150 - others),)
                   ).engines[0].sm_pct == 150 - others
    with pytest.raises(WhatIfError, match="would take 151%"):
        changed(over, (EngineChange(first.engine_id, "sm_pct", 151 - others),))


def test_the_scheduler_override_keeps_the_deployed_policy():
    opts = sim_options(Deployed(False, True, "fcfs", False), SchedulerConfig(max_limit=512))
    assert (opts.scheduler.policy, opts.scheduler.max_limit) == ("fcfs", 512)
    assert sim_options(Deployed(False, True, "adaptive", False)).scheduler.max_limit == 256


def test_unchanged_what_if_is_the_prediction_and_a_starved_engine_does_worse(
        tmp_path, plans, latency):
    res = results_dir(tmp_path, SMALL, plans)
    plan = plans["c"]
    (row,) = what_if(res, "c", (3.0,), latency, plan, None)
    pred = predict_one(res, "c", 3.0, latency, write=False)["summary"]
    assert row.measured is None
    assert row.predicted == pred["overall"]["slo_attainment"]
    assert row.rejected_429 == pred["overall"]["rejected_429"]
    # every engine capped at one sequence: far fewer requests meet their SLOs at x3
    starved = changed(plan, tuple(EngineChange(e.engine_id, "max_batch", 1)
                                  for e in plan.engines))
    one = SchedulerConfig(initial_limit=1, max_limit=1)
    (low,) = what_if(res, "c", (3.0,), latency, starved, one)
    assert low.predicted < row.predicted


def test_a_bad_set_exits_2_with_one_line(tmp_path, plans, capsys):
    res = results_dir(tmp_path, SMALL, plans)
    with pytest.raises(SystemExit) as e:
        main(["--out", str(res.root), "--set", "nope:sm_pct=5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --set: no engine 'nope'") and "\n" not in err
