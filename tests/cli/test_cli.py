"""The command line through typer's CliRunner: exit codes, one-line errors, outputs."""

import json

import pytest
from typer.testing import CliRunner

from fineserve.cli.app import app
from fineserve.planner.planfile import load_plan

runner = CliRunner(env={"COLUMNS": "200"})

SPEC = """
cluster: {gpu: h100, nodes: 1, gpus_per_node: 2}
models:
  - {name: chat, model: llama-3.1-8b, weights: fp8, kv: fp8, rate: 4,
     slo: {ttft_ms: 800, tpot_ms: 60}, prompt_tokens: 256, output_tokens: 128}
  - {name: small, model: llama-3.2-3b, rate: 2, slo: {ttft_ms: 800, tpot_ms: 60}}
planner: {time_limit_s: 5, num_workers: 2}
"""


def spec_file(tmp_path, text=SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_plan_writes_a_valid_plan_file(tmp_path):
    out = tmp_path / "plan.yaml"
    result = runner.invoke(app, ["plan", spec_file(tmp_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Placement" in result.stdout and "ilp-ortools" in result.stdout
    plan = load_plan(out)
    assert {e.model for e in plan.engines} == {"chat", "small"}
    assert not plan.unplaced


def test_plan_json(tmp_path):
    result = runner.invoke(app, ["plan", spec_file(tmp_path), "--json", "--method", "static"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["fineserve_plan"] == 1 and data["solver"]["method"] == "static"


def test_compare_lists_every_method(tmp_path):
    result = runner.invoke(app, ["plan", spec_file(tmp_path), "--compare", "--solver", "pulp"])
    assert result.exit_code == 0, result.output
    for method in ("ilp-pulp", "static", "muxserve", "kv-pressure"):
        assert method in result.stdout


def test_bundled_example_runs():
    result = runner.invoke(app, ["plan", "--time-limit", "5"])
    assert result.exit_code == 0, result.output
    assert "reason-70b-int4" in result.stdout


@pytest.mark.parametrize("text,needle", [
    ("models: [\n", "malformed YAML at line"),
    (SPEC.replace("llama-3.2-3b", "llama-9"), "models[1].model: unknown model 'llama-9'"),
    (SPEC.replace("weights: fp8", "weights: fp4"), "unknown weight precision 'fp4'"),
    (SPEC.replace("ttft_ms: 800, tpot_ms: 60}, prompt", "ttft_ms: 2, tpot_ms: 60}, prompt"),
     "models[0] (chat).slo.ttft_ms: 2 ms is below the fastest possible TTFT"),
    (SPEC.replace("llama-3.2-3b", "llama-3.1-70b").replace("gpus_per_node: 2",
                                                           "gpus_per_node: 1"),
     "models[1] (small).weights: bf16 weights need 131.4 GiB per GPU at tp=1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, text, needle):
    result = runner.invoke(app, ["plan", spec_file(tmp_path, text)])
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.output


def test_bad_options_exit_2(tmp_path):
    for args in (["--solver", "gurobi"], ["--method", "magic"], ["--kv-mode", "elastic"],
                 ["--time-limit", "0"]):
        result = runner.invoke(app, ["plan", spec_file(tmp_path), *args])
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: ")


def test_missing_spec_file(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read spec" in result.stderr


def test_models_lists_bytes():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {r["model"]: r for r in json.loads(result.stdout)}
    assert rows["llama-3.1-8b"]["kv_kib_per_token_bf16"] == 128
    assert rows["llama-3.1-8b"]["kv_kib_per_token_fp8"] == 64
    table = runner.invoke(app, ["models", "--tp", "2"])
    assert table.exit_code == 0 and "qwen2.5-72b" in table.stdout


def test_profiles_show_lists_shipped_engines():
    result = runner.invoke(app, ["profiles", "show"])
    assert result.exit_code == 0, result.output
    assert "llama-3.1-8b" in result.stdout and "int4-awq" in result.stdout
    assert "An engine not listed is estimated" in result.stdout  # origins shown


def test_profile_origins_name_the_measured_reference_entries():
    from fineserve.profiles.composite import MEASURED, PUBLISHED, profile_origins

    by_model = {}
    for o in profile_origins():
        by_model.setdefault(o.engine.model, set()).add((o.prefill, o.decode))
    assert by_model["qwen2.5-14b"] == {(MEASURED, MEASURED)}
    assert by_model["llama-3.2-3b"] == {(MEASURED, MEASURED)}
    assert (PUBLISHED, PUBLISHED) in by_model["llama-3.1-8b"]  # tp 2 / 4: FineServe's tables
    # the 70B int4 measured (session 7) beside FineServe's published 70B tables
    assert (MEASURED, MEASURED) in by_model["llama-3.1-70b"]
