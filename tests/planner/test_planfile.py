"""Plan files round-trip exactly and reject what is not a plan."""

import pytest

from fineserve.errors import SpecError
from fineserve.planner.api import make_plan
from fineserve.planner.planfile import dump_plan, load_plan, plan_to_dict, save_plan
from fineserve.planner.validate import check_plan
from tests.planner.fakes import FakeLatency, demand, instance

LAT = FakeLatency()


@pytest.fixture(scope="module")
def plan():
    models = [demand("a", rate=6), demand("b", "llama-3.1-70b", "int4", rate=1, tpot=0.15)]
    return make_plan(instance(models, gpus=2, time_limit_s=5, num_workers=2), LAT)


def test_round_trip_is_exact(plan, tmp_path):
    path = tmp_path / "plan.yaml"
    save_plan(plan, path)
    again = load_plan(path)
    assert again.engines == plan.engines
    assert again.unplaced == plan.unplaced
    assert again.instance == plan.instance
    assert check_plan(again.instance, again, LAT) == []
    assert dump_plan(again) == dump_plan(plan)


def test_plan_file_has_runtime_view(plan):
    d = plan_to_dict(plan)
    gpu0 = d["gpus"][0]
    assert gpu0["engines"] and gpu0["sm_pct"] <= 100
    for name, m in d["models"].items():
        assert sum(m["traffic"].values()) == pytest.approx(1.0, abs=1e-5), name
    assert d["solver"]["method"] == "ilp-ortools"


def test_not_a_plan(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("fineserve_plan: 7\n")
    with pytest.raises(SpecError, match="fineserve_plan must be 1"):
        load_plan(path)
    path.write_text("fineserve_plan: 1\nengines: []\n")
    with pytest.raises(SpecError, match="not a FineServe plan"):
        load_plan(path)
