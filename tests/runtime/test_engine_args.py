"""Plan engine -> vLLM command line and environment."""

from __future__ import annotations

import json

import pytest

from fineserve.runtime.engine_args import GpuBinding, build_launch, memory_utilization
from fineserve.runtime.errors import DeployError
from fineserve.runtime.model_dirs import resolve_sources
from fineserve.runtime.state import Mode

from .helpers import GIB, demand, engine, options

BIND = GpuBinding((0,), ("GPU-aaaa",), 80 * GIB, "/run/mps/gpu0", "/run/logs/mps-gpu0")


def _launch(tmp_path, weights="bf16", kv="bf16", mode=Mode.NO_MPS, **kw):
    m = demand("m", weights=weights, kv=kv)
    e = engine("m-0", m, sm=40, kv=2 * GIB)
    opts = options(tmp_path, mode, **kw)
    src = resolve_sources((m,), opts)["m"]
    return build_launch(e, m, src, BIND, 8123, opts), e


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_bf16_command_has_plan_sizes_and_dummy_loading(tmp_path):
    x, e = _launch(tmp_path)
    a = list(x.argv)
    assert a[:3] == ["/opt/py/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(a, "--served-model-name") == "m"
    assert _flag(a, "--kv-cache-memory-bytes") == str(2 * GIB)
    assert _flag(a, "--max-num-seqs") == "32"
    assert _flag(a, "--port") == "8123" and _flag(a, "--host") == "127.0.0.1"
    assert _flag(a, "--dtype") == "bfloat16"
    assert _flag(a, "--load-format") == "dummy"
    assert _flag(a, "--tensor-parallel-size") == "1"
    assert "--quantization" not in a and "--kv-cache-dtype" not in a
    assert "--enforce-eager" not in a and "--skip-tokenizer-init" not in a
    assert float(_flag(a, "--gpu-memory-utilization")) == memory_utilization(e, 80 * GIB)
    # 2 GiB of bf16 Llama-8B KV (128 KiB/token) holds 16384 tokens; capped at 8192
    assert _flag(a, "--max-model-len") == "8192"


def test_fp8_weights_and_kv(tmp_path):
    x, _ = _launch(tmp_path, weights="fp8", kv="fp8", enforce_eager=True)
    a = list(x.argv)
    assert _flag(a, "--quantization") == "fp8"
    assert _flag(a, "--kv-cache-dtype") == "fp8"
    assert "--enforce-eager" in a


def test_int4_gptq_dummy_folder_carries_quantization_config(tmp_path):
    x, _ = _launch(tmp_path, weights="int4-gptq")
    a = list(x.argv)
    assert "--quantization" not in a  # vLLM reads it from the config (and picks Marlin)
    assert _flag(a, "--dtype") == "float16"
    cfg = json.loads((tmp_path / "run/models/m/config.json").read_text())
    q = cfg["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"], q["desc_act"]) == ("gptq", 4, 128, False)
    # without the module list vLLM 0.26 finds no quantized layer in a folder without weight
    # files and serves the dummy model unquantized (fp16, 3x the memory)
    assert "mlp.down_proj" in q["modules_in_block_to_quantize"]
    assert "self_attn.q_proj" in q["modules_in_block_to_quantize"]
    assert cfg["num_hidden_layers"] == 32 and cfg["vocab_size"] == 128256


def test_int4_with_fp8_kv_runs_bf16(tmp_path):
    """FlashAttention 3's fp8-KV path writes bf16 only: an fp16 int4 engine fails to start."""
    x, _ = _launch(tmp_path, weights="int4-gptq", kv="fp8")
    assert _flag(list(x.argv), "--dtype") == "bfloat16"


def test_mps_env_sets_share_pipe_and_uuid(tmp_path):
    x, _ = _launch(tmp_path, mode=Mode.MPS)
    env = x.full_env({"CUDA_VISIBLE_DEVICES": "3", "CUDA_MPS_PIPE_DIRECTORY": "/tmp/other",
                      "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0"  # relative to the daemon, never a UUID
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps/gpu0"
    assert env["CUDA_MPS_LOG_DIRECTORY"] == "/run/logs/mps-gpu0"
    assert env["PATH"] == "/bin"


def test_no_mps_env_uses_indices_and_drops_inherited_mps(tmp_path):
    x, _ = _launch(tmp_path, mode=Mode.NO_MPS)
    env = x.full_env({"CUDA_MPS_PIPE_DIRECTORY": "/tmp/other", "CUDA_VISIBLE_DEVICES": "5"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in env
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env


def test_cpu_mode_hides_gpus_and_skips_memory_utilization(tmp_path):
    x, _ = _launch(tmp_path, mode=Mode.CPU)
    assert "--gpu-memory-utilization" not in x.argv
    assert dict(x.env)["CUDA_VISIBLE_DEVICES"] == ""


def test_max_model_len_beyond_kv_is_an_error(tmp_path):
    with pytest.raises(DeployError, match="holds at most 16384 tokens"):
        _launch(tmp_path, max_model_len=20000)


def test_kv_too_small_for_any_sequence(tmp_path):
    m = demand("m")
    e = engine("m-0", m, kv=1 << 20)  # 8 tokens of Llama-8B bf16 KV
    opts = options(tmp_path)
    src = resolve_sources((m,), opts)["m"]
    with pytest.raises(DeployError, match="holds only 8 tokens"):
        build_launch(e, m, src, BIND, 8000, opts)


def test_memory_utilization_is_the_engines_share():
    m = demand("m")
    e = engine("m-0", m, kv=10 * GIB)
    u = memory_utilization(e, 80 * GIB)
    assert u == pytest.approx(e.memory_bytes / (80 * GIB) * 1.02, abs=1e-4)
    assert memory_utilization(engine("x", m, kv=200 * GIB), 80 * GIB) == 0.95


def test_pooled_engine_gets_its_virtual_maximum_floor_and_plugin_env(tmp_path):
    from fineserve.runtime.kvslab.deploy_pool import PLUGIN_DIST, PooledEngine

    m = demand("m")
    e = engine("m-0", m, kv=2 * GIB)
    opts = options(tmp_path)
    src = resolve_sources((m,), opts)["m"]
    pe = PooledEngine("m-0", 0, "/dev/shm/pool.json", 64 << 20, 32, 900)
    x = build_launch(e, m, src, BIND, 8000, opts, pe)
    a, env = list(x.argv), dict(x.env)
    assert _flag(a, "--kv-cache-memory-bytes") == str(900 * (64 << 20))  # whole slabs
    assert _flag(a, "--max-model-len") == "8192"  # bounded by the floor, which is guaranteed
    u = float(_flag(a, "--gpu-memory-utilization"))
    assert u == memory_utilization(e, 80 * GIB, pooled=True) < memory_utilization(e, 80 * GIB)
    assert u == pytest.approx((e.weight_bytes + e.overhead_bytes) / (80 * GIB) * 1.02, abs=1e-4)
    assert (env["FINESERVE_KVSLAB"], env["FINESERVE_KVSLAB_LEDGER"],
            env["FINESERVE_KVSLAB_ENGINE_ID"], env["FINESERVE_KVSLAB_FLOOR_BYTES"]) == (
        "1", "/dev/shm/pool.json", "m-0", str(32 * (64 << 20)))
    first = env["PYTHONPATH"].split(":")[0]
    assert first.endswith("kvslab-plugin") and first.startswith(str(tmp_path))
    assert PLUGIN_DIST.endswith(".dist-info")


def test_static_engine_has_no_pool_variables(tmp_path):
    x, _ = _launch(tmp_path)
    assert not any(k.startswith("FINESERVE_KVSLAB") or k == "PYTHONPATH" for k, _ in x.env)
