"""The runner around the worker: resumption, budget, exports, process handling.

The worker here is a stand-in script speaking the worker's file protocol (job JSON in, JSONL
records out); the real engine worker is exercised by test_e2e_cpu.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fineserve
from fineserve.errors import SpecError
from fineserve.profiles.measure.devices import gpu_label
from fineserve.profiles.measure.grid import GridSpec
from fineserve.profiles.measure.runner import (
    ProfileRequest,
    plan_engines,
    run_profile,
    worker_env,
)
from fineserve.profiles.precision import Precision
from fineserve.profiles.schema import load_profile
from tests.profiles.measure.standin import profile_request, stand_in_python

GRID = GridSpec(sm_pcts=(100, 50), prefill_tokens=(64, 128), prefill_batches=(1,),
                decode_batches=(1, 2), decode_contexts=(64,), repeats=2, decode_tokens=8)

STAND_IN = r'''
import json, os, sys, time
from fineserve.profiles.measure.records import (EngineRecord, PointRecord, ProfileJob,
                                                append, read_job)
job = read_job(sys.argv[-1], ProfileJob)
with open(os.environ["STAND_IN_LOG"], "a") as f:
    f.write(json.dumps({"sm": job.label.sm_pct, "points": len(job.points),
                        "mps": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")}) + "\n")
append(job.results, EngineRecord(job.label, 1.0, True, vllm_version="stand-in"))
stop = int(os.environ.get("STAND_IN_STOP", "1000"))
for i, p in enumerate(job.points):
    if i >= stop:
        sys.exit(1)  # "killed" mid-run
    t = 0.001 * p.batch * p.tokens / job.label.sm_pct
    append(job.results, PointRecord(job.label, p.phase, p.batch, p.tokens, (t, t * 1.01),
                                    "stand-in"))
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_LOG", str(tmp_path / "calls.jsonl"))
    return stand_in_python(tmp_path, STAND_IN)


def request(tmp_path, python, **kw) -> ProfileRequest:
    return profile_request(tmp_path, python, GRID, **kw)


def calls(tmp_path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_one_worker_per_sm_share_and_a_loadable_profile(tmp_path, stand_in):
    summary = run_profile(request(tmp_path, stand_in))
    assert [c["sm"] for c in calls(tmp_path)] == [100, 50]
    assert summary.measured == 2 * len(GRID.points()) and not summary.failed
    (export,) = summary.exports
    assert export.complete == (50.0, 100.0)
    table = load_profile(export.csv)
    assert {p.sm_pct for p in table} == {50.0, 100.0}
    assert (tmp_path / "cache" / "models" / "llama-3.1-8b-bf16" / "config.json").exists()


def test_a_rerun_measures_only_what_is_missing(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_STOP", "2")
    first = run_profile(request(tmp_path, stand_in))
    assert first.measured == 4 and first.exports[0].csv is None  # no SM share complete
    monkeypatch.delenv("STAND_IN_STOP")
    second = run_profile(request(tmp_path, stand_in))
    n = len(GRID.points())
    assert [c["points"] for c in calls(tmp_path)] == [n, n, n - 2, n - 2]
    assert second.measured == 2 * (n - 2)
    assert second.exports[0].complete == (50.0, 100.0)
    third = run_profile(request(tmp_path, stand_in))
    assert third.measured == 0 and len(calls(tmp_path)) == 4  # nothing left: no worker


def test_a_budget_too_small_for_an_engine_start_starts_none(tmp_path, stand_in):
    summary = run_profile(request(tmp_path, stand_in, budget_s=5))
    assert summary.out_of_budget and summary.measured == 0 and calls(tmp_path) == []


def test_cpu_mode_records_sm_100_only(tmp_path, stand_in):
    req = request(tmp_path, stand_in, cpu=True, gpu=None)
    plans = plan_engines(req, "H100-SXM-80GB", tmp_path / "models")
    assert [p.label.sm_pct for p in plans] == [100.0]
    assert plans[0].args.enforce_eager


def test_int4_and_fp8_engines_get_their_vllm_arguments(tmp_path, stand_in):
    req = request(tmp_path, stand_in,
                  precisions=(Precision.parse("int4-gptq"), Precision.parse("fp8", "fp8")))
    plans = plan_engines(req, "H100-SXM-80GB", tmp_path / "models")
    gptq = json.loads(Path(plans[0].args.model_dir, "config.json").read_text())
    assert gptq["quantization_config"]["desc_act"] is False
    assert gptq["quantization_config"]["bits"] == 4
    assert plans[0].args.quantization is None
    assert plans[0].args.dtype == "float16"
    fp8 = plans[-1].args
    assert fp8.quantization == "fp8" and fp8.kv_cache_dtype == "fp8"
    assert fp8.dtype == "bfloat16"
    assert 0.05 <= fp8.gpu_memory_utilization <= 0.92


def test_gptq_names_every_quantized_block_layer(tmp_path, stand_in):
    # Without the list, vLLM 0.26 reads it from the (absent) safetensors headers and builds
    # the dummy model unquantized: the int4 engines of 2026-11-26 held 15 GiB of fp16 weights.
    req = request(tmp_path, stand_in, precisions=(Precision.parse("int4-gptq"),))
    plan = plan_engines(req, "H100-SXM-80GB", tmp_path / "models")[0]
    config = json.loads(Path(plan.args.model_dir, "config.json").read_text())
    modules = config["quantization_config"]["modules_in_block_to_quantize"]
    assert all(isinstance(m, str) for m in modules)  # flat: read the same by every vLLM
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(m.endswith("." + name) for m in modules), name


def test_int4_with_fp8_kv_runs_bf16(tmp_path, stand_in):
    # vLLM's FA3 fp8-KV path writes bf16 only: an fp16 int4 engine failed to start on the H100
    req = request(tmp_path, stand_in, precisions=(Precision.parse("int4-gptq", "fp8"),
                                                  Precision.parse("int4-awq", "fp8")))
    for plan in plan_engines(req, "H100-SXM-80GB", tmp_path / "models"):
        assert (plan.args.kv_cache_dtype, plan.args.dtype) == ("fp8", "bfloat16")


def test_bad_tp_is_a_named_error(tmp_path, stand_in):
    with pytest.raises(SpecError, match="tp"):
        plan_engines(request(tmp_path, stand_in, tps=(3,)), "H100-SXM-80GB", tmp_path)


def test_worker_env_sets_mps_share_caches_and_path(tmp_path, stand_in, monkeypatch):
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    env = worker_env(tmp_path / "cache", {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30"})
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "vllm")
    repo = Path(fineserve.__file__).resolve().parents[1]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(repo)


@pytest.mark.parametrize(("name", "label"), [
    ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
    ("NVIDIA H100 PCIe", "H100-PCIe-80GB"),
    ("NVIDIA H200", "H200-SXM-141GB"),
])
def test_gpu_labels_from_nvml_names(name, label):
    assert gpu_label(name) == label


def test_an_h100_nvl_or_a_gh200_gets_no_label_of_another_gpu():
    for name in ("NVIDIA H100 NVL", "NVIDIA GH200 480GB"):
        with pytest.raises(SpecError, match="not in the GPU catalog"):
            gpu_label(name)


def test_unknown_gpu_asks_for_the_option():
    with pytest.raises(SpecError, match="--gpu"):
        gpu_label("NVIDIA GeForce GTX 1080")


@pytest.mark.parametrize("parallel", [True, False])
def test_a_model_never_started_is_given_its_estimated_cold_start(tmp_path, stand_in, parallel):
    grid = GridSpec(sm_pcts=(100, 50), prefill_tokens=(64,), prefill_batches=(1,),
                    decode_batches=(1,), decode_contexts=(64,), repeats=2, decode_tokens=8)
    big = dict(model="llama-3.1-70b", precisions=(Precision.parse("int4-gptq"),),
               parallel=parallel)
    # 150 s covers the flat 60 s guess, not the 70B's ~200 s cold start: nothing starts
    summary = run_profile(profile_request(tmp_path, stand_in, grid, budget_s=150, **big))
    assert summary.out_of_budget and calls(tmp_path) == []
    first = run_profile(profile_request(tmp_path, stand_in, GridSpec(
        sm_pcts=(100,), prefill_tokens=(64,), prefill_batches=(1,), decode_batches=(1,),
        decode_contexts=(64,), repeats=2, decode_tokens=8), **big))  # no budget: SM 100 starts
    assert first.measured == 2 and len(calls(tmp_path)) == 1
    again = run_profile(profile_request(tmp_path, stand_in, grid, budget_s=150, **big))
    assert not again.out_of_budget and again.measured == 2  # its measured start (1 s) counts


@pytest.mark.parametrize("parallel", [True, False])
def test_an_engine_whose_first_point_cannot_finish_is_not_started(tmp_path, stand_in, parallel):
    """Session 6: a started 70B engine whose points did not fit measured 1-2 of them."""
    big = dict(model="llama-3.1-70b", precisions=(Precision.parse("int4-gptq"),),
               parallel=parallel)
    small = GridSpec(sm_pcts=(30,), prefill_tokens=(64,), prefill_batches=(1,),
                     decode_batches=(1,), decode_contexts=(64,), repeats=2, decode_tokens=8)
    assert run_profile(profile_request(tmp_path, stand_in, small, **big)).measured == 2
    # its start is now known (1 s + the process); the first point of this grid, 16 runs of
    # a 70B prefill of 2048 tokens behind its 2048-token blocker at SM 30, is not (> 60 s)
    heavy = GridSpec(sm_pcts=(30,), prefill_tokens=(2048,), prefill_batches=(1,),
                     decode_batches=(1,), decode_contexts=(64,), repeats=5, decode_tokens=8)
    summary = run_profile(profile_request(tmp_path, stand_in, heavy, budget_s=70, **big))
    assert summary.out_of_budget and len(calls(tmp_path)) == 1  # only the first run's engine
    assert run_profile(profile_request(tmp_path, stand_in, heavy, budget_s=400,
                                       **big)).measured == 1  # decode 1 x 64 was done
