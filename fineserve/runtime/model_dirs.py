"""Which folder each plan model is served from, and what that folder says about quantization.

A model comes from ``--model-dir NAME=PATH`` (NAME = the plan's model name or its catalog
ref), or with ``--dummy-weights`` from a folder written into the run directory: the catalog
architecture as a Hugging Face ``config.json`` (plus a GPTQ/AWQ ``quantization_config`` for
int4, so vLLM builds the int4 kernels), and a word-level tokenizer sized to the vocabulary so
text prompts and chat work without downloading anything. vLLM fills the weights at random
(``--load-format dummy``): the speed of the real model, not its answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fineserve.planner.schema import ModelDemand
from fineserve.profiles.catalog import ModelArch
from fineserve.profiles.measure.modeldir import (
    base_config,
    quantization_config,
    vllm_quantization,
)
from fineserve.profiles.precision import WeightFormat
from fineserve.runtime.errors import DeployError
from fineserve.runtime.options import DeployOptions
from fineserve.testing.tiny_model import write_tokenizer

_QUANT_METHODS = {  # quant_method in a checkpoint's quantization_config -> our format family
    "fp8": WeightFormat.FP8, "compressed-tensors": None, "gptq": WeightFormat.INT4_GPTQ,
    "gptq_marlin": WeightFormat.INT4_GPTQ, "awq": WeightFormat.INT4_AWQ,
    "awq_marlin": WeightFormat.INT4_AWQ,
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where one plan model's files are and how vLLM must be told to load them."""

    model: str  # plan model name
    path: Path
    dummy: bool  # --load-format dummy
    quantization: str | None  # --quantization; None = none, or read from the checkpoint
    has_tokenizer: bool  # False -> --skip-tokenizer-init (token-id prompts only)
    max_position: int  # max_position_embeddings of the folder's config


def hf_config(arch: ModelArch, weights: WeightFormat) -> dict:
    """A Hugging Face config.json for ``arch``; int4 formats carry their quantization_config
    (the profiler's, ``profiles.measure.modeldir``: the same folder shape it measured - GPTQ
    must name its quantized modules, or vLLM 0.26 builds a dummy model unquantized)."""
    cfg = base_config(arch) | {"pad_token_id": 3}
    quant = quantization_config(weights)
    if quant is not None:
        cfg["torch_dtype"] = "float16"  # the checkpoints' own dtype; --dtype decides the run
        cfg["quantization_config"] = quant
    return cfg


def resolve_sources(models: tuple[ModelDemand, ...], opts: DeployOptions
                    ) -> dict[str, ModelSource]:
    """One source per plan model (keyed by model name). Raises DeployError naming the model."""
    known = {m.name for m in models} | {m.ref for m in models}
    for key, _ in opts.model_dirs:
        if key not in known:
            raise DeployError(f"--model-dir {key}=...: no model of that name in the plan",
                              hint=f"use one of {', '.join(sorted(m.name for m in models))}")
    out = {}
    for m in models:
        path = opts.model_dir_for(m.name, m.ref)
        if path is not None:
            out[m.name] = _from_folder(m, Path(path).expanduser().absolute(), opts.dummy_weights)
        elif opts.dummy_weights:
            out[m.name] = _write_dummy(m, opts.run_dir / "models" / m.name)
        else:
            raise DeployError(f"model {m.name}: no weights folder",
                              hint=f"pass --model-dir {m.name}=PATH, or --dummy-weights")
    return out


def _from_folder(m: ModelDemand, path: Path, dummy: bool) -> ModelSource:
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise DeployError(f"--model-dir {m.name}={path}: no config.json there",
                          hint="point it at a Hugging Face model folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"--model-dir {m.name}: cannot read {cfg_path}: {exc}") from None
    if not dummy and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise DeployError(f"--model-dir {m.name}={path}: no *.safetensors or *.bin weights",
                          hint="download the weights, or pass --dummy-weights")
    return ModelSource(m.name, path, dummy, _quantization(m, cfg, str(cfg_path)),
                       (path / "tokenizer.json").exists()
                       or (path / "tokenizer.model").exists(),
                       int(cfg.get("max_position_embeddings") or m.spec.arch.max_context))


def _quantization(m: ModelDemand, cfg: dict, source: str) -> str | None:
    """The --quantization flag, or None when the checkpoint's quantization_config decides."""
    wanted = m.spec.precision.weights
    qc = cfg.get("quantization_config")
    if isinstance(qc, dict):
        method = str(qc.get("quant_method", "")).lower()
        family = _QUANT_METHODS.get(method, "unknown")
        if family == "unknown" or wanted is WeightFormat.BF16:
            raise DeployError(f"model {m.name}: {source} is quantized with {method!r} but the "
                              f"plan serves weights as {wanted.value}",
                              hint="point --model-dir at a checkpoint of the planned precision")
        if family is not None and family is not wanted and not (family.is_int4
                                                                 and wanted.is_int4):
            raise DeployError(f"model {m.name}: {source} holds {family.value} weights, the "
                              f"plan says {wanted.value}",
                              hint="re-plan with the checkpoint's precision")
        return None  # vLLM reads the method from the checkpoint and picks its fastest kernel
    if wanted is WeightFormat.FP8:
        return "fp8"  # online: bf16 checkpoint quantized to fp8 while loading
    if wanted.is_int4:
        raise DeployError(f"model {m.name}: int4 weights need a GPTQ/AWQ checkpoint, "
                          f"{source} has no quantization_config",
                          hint="use a GPTQ or AWQ checkpoint, or --dummy-weights")
    return None


def _write_dummy(m: ModelDemand, path: Path) -> ModelSource:
    arch, weights = m.spec.arch, m.spec.precision.weights
    cfg = hf_config(arch, weights)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    write_tokenizer(path, arch.vocab_size, max_len=arch.max_context)
    return ModelSource(m.name, path, True, vllm_quantization(weights), True, arch.max_context)
