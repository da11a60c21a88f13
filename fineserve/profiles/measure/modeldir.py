"""A model folder vLLM can load with dummy weights: just a config.json from the catalog.

Random weights run at the speed of real ones (same shapes, same kernels), so no checkpoint is
downloaded. int4 formats get a ``quantization_config`` so that vLLM builds the same packed
layers and Marlin kernels as for a real AWQ / GPTQ checkpoint (``desc_act: false``); fp8 is
quantized online from the dummy bf16 weights with ``quantization="fp8"`` (W8A8).

GPTQ names its quantized modules (``modules_in_block_to_quantize``): vLLM (0.26) otherwise
reads them from the checkpoint's safetensors headers, finds none in a folder without weight
files and builds every linear layer unquantized (fp16, 15 GiB for the 8B: the int4 engines of
the 2026-11-26 H100 run measured a dense fp16 model and held 3x the memory planned).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fineserve.errors import SpecError
from fineserve.profiles.catalog import ModelArch, ModelSpec
from fineserve.profiles.precision import INT4_GROUP_SIZE, WeightFormat


def _architecture(arch: ModelArch) -> tuple[str, str]:
    """(architectures entry, model_type) of the vLLM model class with this shape."""
    if arch.qk_norm:
        return "Qwen3ForCausalLM", "qwen3"
    if arch.qkv_bias:
        return "Qwen2ForCausalLM", "qwen2"
    return "LlamaForCausalLM", "llama"


def base_config(arch: ModelArch) -> dict[str, Any]:
    """Hugging Face config.json keys of ``arch`` (no quantization)."""
    architecture, model_type = _architecture(arch)
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "intermediate_size": arch.intermediate_size,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_embeddings,
        "attention_bias": arch.qkv_bias,
        "max_position_embeddings": arch.max_context,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


# The linear layers of a decoder block that GPTQ quantizes (Llama and Qwen2/3 share the names);
# vLLM matches them as substrings of each layer's prefix and maps its fused qkv / gate_up. A
# flat list: versions that flatten GPTQModel's nested form and versions that do not read it.
GPTQ_BLOCK_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantization_config(weights: WeightFormat) -> dict[str, Any] | None:
    """The checkpoint's ``quantization_config`` for int4 formats; None otherwise."""
    if weights is WeightFormat.INT4_GPTQ:
        return {"quant_method": "gptq", "bits": 4, "group_size": INT4_GROUP_SIZE,
                "desc_act": False, "sym": True, "static_groups": False,
                "damp_percent": 0.01, "true_sequential": True,
                "modules_in_block_to_quantize": list(GPTQ_BLOCK_MODULES)}
    if weights is WeightFormat.INT4_AWQ:
        return {"quant_method": "awq", "bits": 4, "group_size": INT4_GROUP_SIZE,
                "zero_point": True, "version": "gemm"}
    return None


def vllm_quantization(weights: WeightFormat) -> str | None:
    """The ``quantization`` argument: fp8 online; int4 picked by vLLM from the config (it
    upgrades gptq/awq to their Marlin kernels on Hopper by itself)."""
    return "fp8" if weights is WeightFormat.FP8 else None


def vllm_dtype(weights: WeightFormat, kv_cache_dtype: str) -> str:
    """The ``dtype`` argument. bf16 wherever the KV cache is fp8: vLLM's FlashAttention 3
    path quantizes the query to fp8 and then writes bf16 only ("For FP8 input, output must
    have dtype BF16"), so an fp16 engine (int4's checkpoint default) fails its first forward.
    Marlin int4 kernels run bf16 activations too. Otherwise the checkpoint's own dtype."""
    if kv_cache_dtype.startswith("fp8"):
        return "bfloat16"
    return "float16" if weights.is_int4 else "bfloat16"


def write_model_dir(spec: ModelSpec, root: Path, source_config: Path | None = None) -> Path:
    """Write ``root/{model}-{weights}/config.json`` and return the folder.

    ``source_config`` (a user's config.json) is copied with its architecture kept; built-in
    models are written from the catalog. An existing ``quantization_config`` is replaced.
    """
    if source_config is not None:
        try:
            config = json.loads(source_config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"model: cannot read {source_config}: {exc}") from None
    else:
        config = base_config(spec.arch)
    config.pop("quantization_config", None)
    quant = quantization_config(spec.precision.weights)
    if quant is not None:
        config["quantization_config"] = quant
        config["torch_dtype"] = "float16"  # Marlin int4 kernels run fp16 activations
    folder = root / f"{spec.arch.name}-{spec.precision.weights.value}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    return folder
