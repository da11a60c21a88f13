"""Arrival processes, lengths and traces: statistics, determinism, files, errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fineserve.cli.app import app
from fineserve.errors import SpecError
from fineserve.workload.arrivals import Diurnal, Gamma, Piecewise, Poisson, power_law_weights
from fineserve.workload.lengths import (
    FixedLengths,
    LogNormalLengths,
    ShareGptFile,
    length_distribution,
)
from fineserve.workload.trace import ModelLoad, Trace, generate


def gaps_cv(times):
    g = np.diff(times)
    return g.mean(), g.std() / g.mean()


@pytest.mark.parametrize("proc,cv", [(Poisson(50.0), 1.0), (Gamma(50.0, 2.0), 2.0),
                                     (Gamma(50.0, 0.5), 0.5)])
def test_renewal_rate_and_burstiness(proc, cv):
    t = proc.times(np.random.default_rng(1), 2000.0)
    mean_gap, got_cv = gaps_cv(t)
    assert mean_gap == pytest.approx(1 / 50, rel=0.03)
    assert got_cv == pytest.approx(cv, rel=0.06)
    assert np.all(np.diff(t) >= 0) and t.max() < 2000.0


def test_piecewise_and_diurnal_counts():
    rng = np.random.default_rng(2)
    t = Piecewise((0.0, 100.0), (10.0, 40.0)).times(rng, 200.0)
    assert (t < 100).sum() == pytest.approx(1000, rel=0.1)
    assert (t >= 100).sum() == pytest.approx(4000, rel=0.06)
    d = Diurnal(20.0, amplitude=0.8, period_s=100.0).times(rng, 1000.0)
    assert d.size == pytest.approx(20_000, rel=0.04)
    first_half = ((d % 100) < 50).sum()  # sin > 0 in the first half of each period
    assert first_half > 0.65 * d.size


def test_power_law():
    w = power_law_weights(5, 1.0)
    assert w.sum() == pytest.approx(1.0) and np.all(np.diff(w) < 0)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert np.allclose(power_law_weights(4, 0.0), 0.25)


def test_lognormal_lengths_match_moments():
    p, o = LogNormalLengths(300, 300, 200, 100, 10**6, 10**6).sample(
        np.random.default_rng(3), 200_000)
    assert p.mean() == pytest.approx(300, rel=0.03) and p.std() == pytest.approx(300, rel=0.1)
    assert o.mean() == pytest.approx(200, rel=0.02) and p.min() >= 1


def test_sharegpt_file(tmp_path):
    convs = [{"conversations": [{"from": "human", "value": "x" * 400},
                                {"from": "gpt", "value": "y" * 800}]},
             {"conversations": [{"from": "gpt", "value": "orphan"}]}]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(convs))
    dist = ShareGptFile.load(path)
    assert dist.pairs == ((100, 200),)
    p, o = dist.sample(np.random.default_rng(0), 5)
    assert list(p) == [100] * 5 and list(o) == [200] * 5
    path.write_text("[]")
    with pytest.raises(SpecError, match="no human/gpt turn pairs"):
        ShareGptFile.load(path)
    with pytest.raises(SpecError, match="unknown distribution 'zipf'"):
        length_distribution("zipf")
    assert length_distribution("fixed:10,20") == FixedLengths(10, 20)


def test_generate_is_deterministic_and_streams_are_per_model():
    loads = [ModelLoad("a", Poisson(5.0), FixedLengths(10, 20)),
             ModelLoad("b", Gamma(2.0, 3.0), LogNormalLengths(100, 50, 50, 20))]
    t1, t2 = generate(loads, 100, seed=7), generate(loads, 100, seed=7)
    assert t1.to_frame().equals(t2.to_frame())
    assert not generate(loads, 100, seed=8).to_frame().equals(t1.to_frame())
    only_a = generate(loads[:1], 100, seed=7).to_frame()
    a_in_both = t1.to_frame().query("model == 'a'").reset_index(drop=True)
    assert only_a.equals(a_in_both)
    assert np.all(np.diff(t1.arrival_s) >= 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_trace_round_trip(tmp_path, suffix):
    trace = generate([ModelLoad("m", Poisson(20.0), LogNormalLengths(100, 50, 50, 20))], 10, 1)
    back = Trace.load(trace.save(tmp_path / f"t{suffix}"))
    assert list(back.model) == list(trace.model)
    assert np.allclose(back.arrival_s, trace.arrival_s, atol=1e-6)
    assert (back.prompt_tokens == trace.prompt_tokens).all()


def test_bad_trace_names_row_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,model,prompt_tokens,output_tokens\n0.1,a,10,5\n0.2,a,ten,5\n")
    with pytest.raises(SpecError, match="t.csv row 2, column prompt_tokens: 'ten'"):
        Trace.load(path)
    path.write_text("arrival_s,model\n0.1,a\n")
    with pytest.raises(SpecError, match="missing column"):
        Trace.load(path)


def test_cli_workload(tmp_path):
    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "trace.jsonl"
    res = runner.invoke(app, ["workload", "-o", str(out), "--duration", "20", "--arrival",
                              "gamma", "--cv", "2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    trace = Trace.load(out)
    assert len(trace) > 100 and set(trace.model) >= {"chat-8b", "edge-3b"}
    bad = runner.invoke(app, ["workload", "-o", str(out), "--arrival", "weibull"])
    assert bad.exit_code == 2 and "unknown process 'weibull'" in bad.stderr
