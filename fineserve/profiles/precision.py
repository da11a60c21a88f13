"""Weight and KV-cache precisions, and the one place that knows their byte sizes.

Callers never branch on a format: they ask ``WeightFormat.bytes_per_param`` or
``KVFormat.bytes_per_element``. Names accepted on input are listed in ``_ALIASES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fineserve.errors import SpecError

# int4 group-wise quantization as AWQ and GPTQ checkpoints ship it (group size 128): per group
# one fp16 scale and one packed 4-bit zero point.
INT4_GROUP_SIZE = 128


class WeightFormat(StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"  # W8A8 (per-channel or per-tensor scales, fp8 activations)
    INT4_AWQ = "int4-awq"  # W4A16, group scales
    INT4_GPTQ = "int4-gptq"  # W4A16, group scales, desc_act false

    @property
    def bytes_per_param(self) -> float:
        """Bytes per quantized linear-layer parameter, scales and zero points included."""
        if self is WeightFormat.BF16:
            return 2.0
        if self is WeightFormat.FP8:
            return 1.0
        return (4 + (16 + 4) / INT4_GROUP_SIZE) / 8

    @property
    def is_int4(self) -> bool:
        return self in (WeightFormat.INT4_AWQ, WeightFormat.INT4_GPTQ)

    @property
    def vllm_quantization(self) -> str | None:
        """The ``--quantization`` value vLLM expects, None for unquantized weights."""
        return {
            WeightFormat.BF16: None,
            WeightFormat.FP8: "fp8",
            WeightFormat.INT4_AWQ: "awq_marlin",
            WeightFormat.INT4_GPTQ: "gptq_marlin",
        }[self]


class KVFormat(StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def bytes_per_element(self) -> int:
        return 2 if self is KVFormat.BF16 else 1

    @property
    def vllm_kv_cache_dtype(self) -> str:
        return "auto" if self is KVFormat.BF16 else "fp8"


_WEIGHT_ALIASES: dict[str, WeightFormat] = {
    "bf16": WeightFormat.BF16,
    "fp16": WeightFormat.BF16,
    "org": WeightFormat.BF16,
    "auto": WeightFormat.BF16,
    "fp8": WeightFormat.FP8,
    "w8a8": WeightFormat.FP8,
    "fp8-w8a8": WeightFormat.FP8,
    "int4": WeightFormat.INT4_AWQ,
    "w4a16": WeightFormat.INT4_AWQ,
    "awq": WeightFormat.INT4_AWQ,
    "int4-awq": WeightFormat.INT4_AWQ,
    "gptq": WeightFormat.INT4_GPTQ,
    "int4-gptq": WeightFormat.INT4_GPTQ,
}
_KV_ALIASES: dict[str, KVFormat] = {
    "bf16": KVFormat.BF16,
    "fp16": KVFormat.BF16,
    "auto": KVFormat.BF16,
    "fp8": KVFormat.FP8,
    "fp8_e4m3": KVFormat.FP8,
    "kv8": KVFormat.FP8,
}


def parse_weight_format(text: str, field: str = "weights") -> WeightFormat:
    try:
        return _WEIGHT_ALIASES[text.strip().lower()]
    except KeyError:
        raise SpecError(
            f"{field}: unknown weight precision {text!r}",
            hint=f"use one of {', '.join(f.value for f in WeightFormat)}",
        ) from None


def parse_kv_format(text: str, field: str = "kv") -> KVFormat:
    try:
        return _KV_ALIASES[text.strip().lower()]
    except KeyError:
        raise SpecError(
            f"{field}: unknown KV-cache precision {text!r}",
            hint=f"use one of {', '.join(f.value for f in KVFormat)}",
        ) from None


@dataclass(frozen=True, slots=True)
class Precision:
    """How a model is served: weight format and KV-cache format."""

    weights: WeightFormat
    kv: KVFormat

    @property
    def name(self) -> str:
        """Stable short name used in file names and tables, e.g. ``fp8.kv-fp8``."""
        return f"{self.weights.value}.kv-{self.kv.value}"

    @classmethod
    def parse(cls, weights: str, kv: str = "bf16") -> Precision:
        return cls(parse_weight_format(weights), parse_kv_format(kv))

    @classmethod
    def from_name(cls, name: str) -> Precision:
        """Inverse of ``name``."""
        weights, sep, kv = name.partition(".kv-")
        if not sep:
            raise SpecError(f"precision: malformed name {name!r}", hint="write e.g. 'fp8.kv-fp8'")
        return cls.parse(weights, kv)
