"""`deploy --ray` CLI: Ray missing is one line naming the extra; bad addresses are one line."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from fineserve.cli.app import app
from fineserve.planner.planfile import save_plan

from ..helpers import demand, engine, plan


@pytest.fixture
def plan_file(tmp_path):
    a = demand("a")
    path = tmp_path / "plan.yaml"
    save_plan(plan([a], [engine("a-0", a)]), path)
    return path


def test_without_ray_the_error_names_the_extra(plan_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(app, ["deploy", str(plan_file), "--ray", "127.0.0.1:1",
                                   "--cpu", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "fineserve[ray]" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "run").exists()  # nothing done


def test_unreachable_cluster_is_one_line(plan_file, tmp_path):
    pytest.importorskip("ray")
    res = CliRunner().invoke(app, ["deploy", str(plan_file), "--ray", "127.0.0.1:9",
                                   "--cpu", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "no Ray head answers there" in res.output
