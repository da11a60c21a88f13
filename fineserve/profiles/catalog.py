"""Model catalog: architecture + precision -> weight bytes, KV bytes per token, vLLM page size.

The byte arithmetic lives here once (``ModelSpec``); planner, simulator and runtime never
branch on a precision. Architectures come from a Hugging Face ``config.json`` or from the
built-in list in ``data/models.yaml`` (same keys).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fineserve.errors import SpecError, UnknownModelError
from fineserve.profiles.precision import Precision

VLLM_BLOCK_SIZE = 16  # tokens per KV block, vLLM's default on CUDA


@dataclass(frozen=True, slots=True)
class ModelArch:
    """The shape of a dense decoder-only transformer, as far as memory and FLOPs need it."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    max_context: int = 131072

    @property
    def attention_params_per_layer(self) -> int:
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * self.hidden_size
        return q + kv + o

    @property
    def mlp_params_per_layer(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size  # gate, up, down

    @property
    def linear_params(self) -> int:
        """Parameters of the quantizable linear layers (attention and MLP projections)."""
        return self.num_layers * (self.attention_params_per_layer + self.mlp_params_per_layer)

    @property
    def small_params(self) -> int:
        """Biases and norms: kept in 16 bits by every quantization scheme."""
        per_layer = 2 * self.hidden_size
        if self.qkv_bias:
            per_layer += (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        return self.num_layers * per_layer + self.hidden_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the LM head unless tied; kept in 16 bits."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.small_params + self.embedding_params

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads each TP rank holds; heads are replicated when tp exceeds their count."""
        return max(1, self.num_kv_heads // tp)

    def check_tp(self, tp: int) -> str | None:
        """Why ``tp`` cannot shard this model, or None if it can."""
        if tp < 1 or tp & (tp - 1):
            return f"tp={tp} is not a power of two"
        if self.num_heads % tp:
            return f"{self.num_heads} attention heads do not split over tp={tp}"
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            return f"{self.num_kv_heads} KV heads do not split over tp={tp}"
        return None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model served at a precision: the unit the planner places."""

    arch: ModelArch
    precision: Precision

    @property
    def key(self) -> str:
        return f"{self.arch.name}@{self.precision.name}"

    def weight_bytes(self, tp: int = 1) -> int:
        """Weight bytes held by one TP rank (linear and embedding layers split, norms not)."""
        a, w = self.arch, self.precision.weights
        kv_rep = a.kv_heads_per_rank(tp) * tp / a.num_kv_heads  # >1 when KV heads replicate
        kv_proj = 2 * a.hidden_size * a.num_kv_heads * a.head_dim * a.num_layers
        linear = (a.linear_params + kv_proj * (kv_rep - 1)) / tp
        return int(linear * w.bytes_per_param + 2 * (a.embedding_params / tp + a.small_params))

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """K and V bytes of one token over all layers, on one TP rank."""
        a = self.arch
        return 2 * a.num_layers * a.kv_heads_per_rank(tp) * a.head_dim * (
            self.precision.kv.bytes_per_element
        )

    def page_size_bytes(self, tp: int = 1, block_size: int = VLLM_BLOCK_SIZE) -> int:
        """vLLM's ``AttentionSpec.page_size_bytes``: one block of one layer on one rank."""
        return self.kv_bytes_per_token(tp) * block_size // self.arch.num_layers

    def block_bytes(self, tp: int = 1, block_size: int = VLLM_BLOCK_SIZE) -> int:
        """Bytes of one KV block across all layers on one rank."""
        return self.kv_bytes_per_token(tp) * block_size

    def kv_bytes_for(self, tokens: float, tp: int = 1) -> int:
        """KV bytes to hold ``tokens`` tokens, rounded up to whole blocks."""
        blocks = math.ceil(tokens / VLLM_BLOCK_SIZE)
        return blocks * self.block_bytes(tp)


def arch_from_config(name: str, cfg: dict[str, Any], source: str = "config") -> ModelArch:
    """Build a ``ModelArch`` from Hugging Face ``config.json`` keys."""

    def need(key: str, *alts: str) -> int:
        for k in (key, *alts):
            if k in cfg and cfg[k] is not None:
                value = cfg[k]
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise SpecError(f"{source}: {k} must be a positive integer, got {value!r}")
                return value
        raise SpecError(f"{source}: missing {key!r}", hint="give a decoder-only config.json")

    if cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts"):
        raise SpecError(f"{source}: mixture-of-experts models are not supported yet")
    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    model_type = str(cfg.get("model_type", ""))
    head_dim = cfg.get("head_dim") or hidden // heads
    kv_heads = cfg.get("num_key_value_heads", heads)
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise SpecError(f"{source}: num_key_value_heads must be a positive divisor of "
                        f"num_attention_heads ({heads}), got {kv_heads!r}")
    return ModelArch(
        name=name,
        hidden_size=hidden,
        num_layers=need("num_hidden_layers", "n_layer"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        intermediate_size=need("intermediate_size"),
        vocab_size=need("vocab_size"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        qk_norm=bool(cfg.get("qk_norm", model_type == "qwen3")),
        max_context=int(cfg.get("max_position_embeddings", 131072)),
    )


@cache
def _builtin() -> dict[str, tuple[ModelArch, tuple[str, ...]]]:
    text = resources.files("fineserve.profiles").joinpath("data/models.yaml").read_text()
    out = {}
    for name, cfg in yaml.safe_load(text).items():
        aliases = tuple(cfg.pop("aliases", ()))
        out[name] = (arch_from_config(name, cfg, source=f"built-in {name}"), aliases)
    return out


def builtin_models() -> list[ModelArch]:
    return [arch for arch, _ in _builtin().values()]


def resolve_arch(ref: str, field: str = "model") -> ModelArch:
    """A built-in name or alias (case-insensitive), a config.json path, or a folder holding one."""
    wanted = ref.strip().lower()
    for name, (arch, aliases) in _builtin().items():
        if wanted == name or wanted in (a.lower() for a in aliases):
            return arch
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"{field}: cannot read {path}: {exc}") from None
        return arch_from_config(path.parent.name or path.stem, cfg, source=str(path))
    raise UnknownModelError(
        f"{field}: unknown model {ref!r}",
        hint="use a built-in name (see `fineserve models`) or a path to a config.json",
    )


def model_spec(
    ref: str, weights: str = "bf16", kv: str = "bf16", field: str = "model"
) -> ModelSpec:
    return ModelSpec(resolve_arch(ref, field), Precision.parse(weights, kv))
