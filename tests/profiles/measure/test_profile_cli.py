"""``fineserve profile`` through CliRunner: one-line errors, the request handed to the runner."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from fineserve.cli.profile_cmd import profile
from fineserve.profiles.measure import runner as runner_module
from fineserve.profiles.measure.runner import ProfileSummary

app = typer.Typer()
app.command("profile")(profile)
app.command("noop")(lambda: None)  # two commands, so "profile" stays a subcommand


def test_bad_sm_share_is_one_line_and_exit_2():
    result = CliRunner().invoke(app, ["profile", "llama-3.1-8b", "--sm", "120", "--gpu", "h100"])
    assert result.exit_code == 2
    assert "sm_pcts" in result.output and "Traceback" not in result.output


def test_options_reach_the_runner(monkeypatch, tmp_path):
    seen = {}

    def fake_run(request, progress):
        seen["request"] = request
        return ProfileSummary((), 0, (), False)

    monkeypatch.setattr(runner_module, "run_profile", fake_run)
    result = CliRunner().invoke(app, [
        "profile", "llama-3.1-8b", "--precisions", "bf16,fp8.kv-fp8", "--sm", "100,50",
        "--decode-batches", "1,16", "--out", str(tmp_path), "--budget-s", "300", "--gpu", "h100",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    req = seen["request"]
    assert [p.name for p in req.precisions] == ["bf16.kv-bf16", "fp8.kv-fp8"]
    assert req.grid.sm_pcts == (50.0, 100.0) and req.grid.decode_batches == (1, 16)
    assert req.budget_s == 300 and req.out == tmp_path and req.gpu == "h100"
