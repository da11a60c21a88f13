"""``fineserve simulate`` and ``fineserve compare`` end to end on the bundled example."""

import json

from typer.testing import CliRunner

from fineserve.cli.app import app

runner = CliRunner(env={"COLUMNS": "200"})


def test_plan_workload_simulate(tmp_path):
    plan, trace, summary = tmp_path / "p.yaml", tmp_path / "t.jsonl", tmp_path / "s.json"
    assert runner.invoke(app, ["plan", "--time-limit", "5", "-o", str(plan)]).exit_code == 0
    assert runner.invoke(app, ["workload", str(plan), "-o", str(trace), "--duration",
                               "20"]).exit_code == 0
    res = runner.invoke(app, ["simulate", str(plan), str(trace), "-o", str(summary)])
    assert res.exit_code == 0, res.output
    data = json.loads(summary.read_text())
    assert data["source"] == "simulate"
    assert set(data["per_model"]) >= {"chat-8b", "reason-70b-int4"}
    assert data["overall"]["slo_attainment"] > 0.9  # the plan keeps headroom >= 1
    bad = runner.invoke(app, ["simulate", str(plan), str(tmp_path / "none.jsonl")])
    assert bad.exit_code == 2 and "cannot read trace" in bad.stderr
    assert data["kv_mode"] == "pooled" and data["kv_per_gpu"]
    # policies, static KV, interference, Chrome trace and KV plot
    ct, png, params = tmp_path / "t.json", tmp_path / "kv.png", tmp_path / "i.json"
    params.write_text(json.dumps({"a": 0.1, "capacity": 0.8}))
    res = runner.invoke(app, ["simulate", str(plan), str(trace), "--policy", "deadline",
                              "--kv", "static", "--interference", str(params),
                              "--chrome-trace", str(ct), "--plot", str(png), "-o", str(summary)])
    assert res.exit_code == 0, res.output
    data = json.loads(summary.read_text())
    assert data["policy"] == "deadline" and data["kv_mode"] == "static"
    assert data["interference"] == str(params)
    assert "drops" in data["overall"] and "queue_s" in data["overall"]
    assert json.loads(ct.read_text())["traceEvents"] and png.stat().st_size > 1000
    assert "KV memory per GPU" in res.stdout
    for flag, value, msg in (("--policy", "lifo", "--policy: unknown policy"),
                             ("--kv", "shared", "--kv: unknown KV mode")):
        bad = runner.invoke(app, ["simulate", str(plan), str(trace), flag, value])
        assert bad.exit_code == 2 and msg in bad.stderr


def test_compare_all_methods(tmp_path):
    png = tmp_path / "c.png"
    res = runner.invoke(app, ["compare", "--duration", "20", "--time-limit", "5", "--plot",
                              str(png)])
    assert res.exit_code == 0, res.output
    for method in ("ilp-ortools", "static", "muxserve", "kv-pressure"):
        assert method in res.stdout
    assert png.stat().st_size > 1000
