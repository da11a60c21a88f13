"""`fineserve compare --measured`: a run's summary beside the simulator's prediction."""

import json

from typer.testing import CliRunner

from fineserve.cli.app import app
from fineserve.metrics.versus import FigurePair, pair_summaries
from tests.cli.test_cli import spec_file

runner = CliRunner(env={"COLUMNS": "200"})


def _plan_and_trace(tmp_path):
    plan, trace = tmp_path / "plan.yaml", tmp_path / "trace.jsonl"
    r = runner.invoke(app, ["plan", spec_file(tmp_path), "-o", str(plan)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["workload", str(plan), "-o", str(trace), "--duration", "30"])
    assert r.exit_code == 0, r.output
    return plan, trace


def test_prediction_against_itself_has_zero_error(tmp_path):
    plan, trace = _plan_and_trace(tmp_path)
    results = tmp_path / "run"
    results.mkdir()
    # a simulate summary has the replay's format: as "measured", every error must be zero
    r = runner.invoke(app, ["simulate", str(plan), str(trace), "-o",
                            str(results / "summary.json")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "versus.json"
    r = runner.invoke(app, ["compare", "--measured", str(results), "--plan", str(plan),
                            str(trace), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "Measured" in r.stdout and "TTFT p99 ms" in r.stdout
    rows = json.loads(out.read_text())["errors"]
    assert {row["model"] for row in rows} == {"chat", "small", "all"}
    errors = [row["error"] for row in rows if row["error"] is not None]
    assert errors and all(abs(e) < 1e-9 for e in errors)


def test_a_shorter_replay_is_predicted_on_the_same_requests(tmp_path):
    plan, trace = _plan_and_trace(tmp_path)
    results = tmp_path / "run"
    results.mkdir()
    lines = trace.read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    r = runner.invoke(app, ["simulate", str(plan), str(short), "-o",
                            str(results / "summary.json")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "versus.json"
    r = runner.invoke(app, ["compare", "--measured", str(results), "--plan", str(plan),
                            str(trace), "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["predicted"]["overall"]["requests"] == data["measured"]["overall"]["requests"]


def test_errors_name_the_missing_piece(tmp_path):
    plan, trace = _plan_and_trace(tmp_path)
    r = runner.invoke(app, ["compare", "--measured", str(tmp_path), str(trace)])
    assert r.exit_code == 2 and "--plan" in r.output
    r = runner.invoke(app, ["compare", "--measured", str(tmp_path), "--plan", str(plan),
                            str(trace)])
    assert r.exit_code == 2 and "summary.json not found" in r.output


def test_error_kinds():
    att = FigurePair("m", "SLO met", 0.5, 0.55)
    assert abs(att.error - 0.05) < 1e-12  # points, not relative
    lat = FigurePair("m", "TTFT p50 ms", 100.0, 110.0)
    assert abs(lat.error - 0.10) < 1e-12
    assert FigurePair("m", "tok/s", 0.0, 5.0).error is None
    pairs = pair_summaries({"per_model": {}, "overall": {"requests": 0}},
                           {"per_model": {}, "overall": {"requests": 0}})
    assert all(p.error is None for p in pairs)
