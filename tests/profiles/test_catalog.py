"""Catalog byte arithmetic against values computed by hand from the published configs."""

import json

import pytest

from fineserve.errors import SpecError, UnknownModelError
from fineserve.profiles.catalog import builtin_models, model_spec, resolve_arch
from fineserve.profiles.precision import Precision, WeightFormat

KIB, GIB = 1024, 2**30


def test_llama8b_kv_bytes_per_token():
    # 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 131072 = 128 KiB
    assert model_spec("llama-3.1-8b").kv_bytes_per_token() == 128 * KIB
    assert model_spec("llama-3.1-8b", "bf16", "fp8").kv_bytes_per_token() == 64 * KIB


def test_llama8b_page_size_matches_vllm_attention_spec():
    # vLLM AttentionSpec.page_size_bytes = 2 x block 16 x 8 heads x 128 x 2 bytes = 64 KiB
    assert model_spec("llama-3.1-8b").page_size_bytes() == 64 * KIB
    assert model_spec("llama-3.1-8b", kv="fp8").page_size_bytes() == 32 * KIB
    assert model_spec("llama-3.1-8b").block_bytes() == 32 * 64 * KIB


@pytest.mark.parametrize("name,params_b", [
    ("llama-3.1-8b", 8.030), ("llama-3.1-70b", 70.554), ("llama-3.2-1b", 1.236),
    ("llama-3.2-3b", 3.213), ("qwen2.5-7b", 7.616), ("qwen2.5-14b", 14.770),
    ("qwen2.5-32b", 32.764), ("qwen2.5-72b", 72.706), ("qwen3-8b", 8.191),
    ("qwen3-32b", 32.762), ("mistral-7b", 7.248),
])
def test_parameter_counts_match_published_sizes(name, params_b):
    assert resolve_arch(name).total_params / 1e9 == pytest.approx(params_b, abs=0.002)


def test_bf16_weight_bytes_are_two_bytes_per_param():
    spec = model_spec("llama-3.1-8b")
    assert spec.weight_bytes() == 2 * spec.arch.total_params


def test_fp8_quantizes_linear_layers_only():
    spec = model_spec("llama-3.1-8b", "fp8", "fp8")
    a = spec.arch
    assert spec.weight_bytes() == a.linear_params + 2 * (a.embedding_params + a.small_params)


def test_int4_counts_group_scales_and_zeros():
    spec = model_spec("llama-3.1-8b", "int4-awq")
    a = spec.arch
    per_param = (4 + 20 / 128) / 8  # 4-bit weight + fp16 scale + 4-bit zero per 128
    expected = int(a.linear_params * per_param + 2 * (a.embedding_params + a.small_params))
    assert spec.weight_bytes() == expected
    assert 5.2 * GIB < spec.weight_bytes() < 5.5 * GIB


def test_tp_splits_weights_and_kv():
    spec = model_spec("llama-3.1-70b")
    a = spec.arch
    tp2 = spec.weight_bytes(2)
    assert tp2 == int(a.linear_params / 2 * 2 + 2 * (a.embedding_params / 2 + a.small_params))
    assert spec.kv_bytes_per_token(2) == spec.kv_bytes_per_token(1) // 2


def test_kv_heads_replicate_beyond_their_count():
    spec = model_spec("qwen2.5-7b")  # 4 KV heads
    assert spec.kv_bytes_per_token(8) == spec.kv_bytes_per_token(4)  # one head per rank
    assert spec.weight_bytes(8) > spec.weight_bytes(4) / 2  # replicated K/V projections


def test_check_tp():
    a = resolve_arch("llama-3.2-3b")  # 24 heads, 8 KV heads
    assert a.check_tp(2) is None
    assert "24 attention heads" in a.check_tp(16)
    assert "power of two" in a.check_tp(3)


def test_aliases_and_case():
    assert resolve_arch("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert resolve_arch("QWEN3-8B").name == "qwen3-8b"


def test_config_json_path(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
           "vocab_size": 1024}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    arch = resolve_arch(str(tmp_path / "tiny"))
    assert arch.name == "tiny" and arch.head_dim == 64
    # 2 x 2 layers x 2 heads x 64 x 2 bytes
    assert model_spec(str(tmp_path / "tiny")).kv_bytes_per_token() == 1024


def test_unknown_model_names_the_field():
    with pytest.raises(UnknownModelError, match="model: unknown model 'llama-9'"):
        resolve_arch("llama-9")


def test_bad_config_values(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": -1}))
    with pytest.raises(SpecError, match="hidden_size must be a positive integer"):
        resolve_arch(str(path))
    path.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4,
                                "num_hidden_layers": 2, "intermediate_size": 8,
                                "vocab_size": 8, "num_local_experts": 8}))
    with pytest.raises(SpecError, match="mixture-of-experts"):
        resolve_arch(str(path))


def test_precision_parsing_and_names():
    p = Precision.parse("W4A16", "fp8")
    assert p.weights is WeightFormat.INT4_AWQ and p.name == "int4-awq.kv-fp8"
    assert Precision.from_name(p.name) == p
    with pytest.raises(SpecError, match="unknown weight precision 'int3'"):
        Precision.parse("int3")


def test_every_builtin_has_consistent_bytes():
    for arch in builtin_models():
        for w in ("bf16", "fp8", "int4"):
            spec = model_spec(arch.name, w)
            assert 0 < spec.weight_bytes(1) <= 2 * arch.total_params
        assert arch.num_heads % arch.num_kv_heads == 0
