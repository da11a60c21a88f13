"""Analytic (roofline) latency for engines nobody profiled.

A step takes ``max(max(compute, memory) + all-reduce, host launch) + fixed overhead``: the GEMMs
wait either on tensor cores or on HBM, tensor-parallel all-reduces follow them, and the GPU
cannot run ahead of the host launching the step's kernels. Under MPS an engine holding
``sm_pct`` % of the SMs gets about that share of compute, but HBM bandwidth saturates with a
third of the SMs. Equations: docs/profiles.md. The constants were fitted to the FineServe
paper's H100 measurements and are documented one by one below.
"""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.profiles.latency import EngineShape, Latency, LatencySource
from fineserve.profiles.precision import WeightFormat
from fineserve.profiles.schema import check_query


@dataclass(frozen=True, slots=True)
class RooflineParams:
    """Efficiencies and overheads of the estimator. "Fit" means a least-squares fit of log
    latency over the 2,448 points of FineServe's apex-cost.csv (H100 SXM, vLLM), each value
    bounded to a physically plausible range; docs/profiles.md tells how."""

    # Fraction of the dense bf16 tensor-core peak that bf16 GEMMs reach (fit, at its 0.75
    # bound: about the best cuBLAS reaches on H100 at prefill shapes).
    bf16_gemm_eff: float = 0.75
    # Fraction of the fp8 peak that W8A8 GEMMs reach (fit): FineServe's fp8 prefill is ~1.5x
    # faster than bf16, not 2x; per-token activation quantization takes part of the gain.
    fp8_gemm_eff: float = 0.58
    # Fraction of the bf16 peak that W4A16 GEMMs reach at prefill sizes (fit): AWQ prefill
    # runs at about half the bf16 speed in the data, as the kernel dequantizes in its loop.
    int4_gemm_eff: float = 0.41
    # Tokens of a prefill at which its GEMMs reach half their efficiency (fit to measured
    # profiles; 0: every size at full efficiency, as fitted to apex). Small prefills tile
    # the tensor cores poorly: Qwen2.5-32B GPTQ takes 143 us per token for 128 tokens, 91 us
    # for 2048, a loss a fixed overhead cannot express because it grows with the weights.
    gemm_half_tokens: float = 0.0
    # Fraction of peak HBM bandwidth that weight and KV reads reach (not fit, it trades off
    # against sm_saturation; streaming kernels on H100 reach 0.8-0.9).
    hbm_eff: float = 0.85
    # SM fraction at which HBM bandwidth saturates (fit): 8B bf16 decode is flat from 40% SMs
    # up and only 1.2x slower at 20%, so about a third of the SMs saturate HBM.
    sm_saturation: float = 0.34
    # Compute speed ~ (SM fraction) ** this (fit). Below 1 because few busy SMs run at higher
    # clocks under the power cap: prefill at 20% SMs is ~4x slower than at 100%, not 5x.
    sm_compute_exponent: float = 0.87
    # Work to dequantize one int4 weight in a decode step, in bf16 tensor-core FLOP
    # equivalents (fit): ~7 CUDA-core operations per weight. It makes 70B AWQ decode
    # compute-bound: 2.9x slower at 20% SMs than at 100% in the data.
    int4_dequant_flops_per_param: float = 170.0
    # Fixed time of one prefill (fit): scheduling, input preparation, sampling.
    prefill_overhead_s: float = 5.8e-3
    # Fixed time of one decode step (fit): scheduling, sampling, output processing.
    decode_overhead_s: float = 0.35e-3
    # Host time to launch one layer's kernels (fit). FineServe's decode takes ~255 us per
    # layer at tp=1 whatever the model size (8B bf16 8.0 ms / 32 layers, 70B AWQ 21.5 ms / 80
    # layers): the signature of eager-mode launching. Engines replaying CUDA graphs spend
    # ~5-10 us; lower this for them.
    host_layer_s: float = 255e-6
    # Extra host time per layer of fp8 W8A8 (fit): activation quantization adds kernels, and
    # FineServe's fp8 decode is slower than its bf16 decode for all three models.
    fp8_host_layer_s: float = 65e-6
    # Extra host time per layer when tp > 1 (fit): launching two collectives per layer.
    tp_host_layer_s: float = 60e-6
    # Latency of one small all-reduce over NVLink (fit; NCCL measures 10-40 us on H100).
    allreduce_latency_s: float = 35e-6
    # Fraction of the NVLink figure a ring all-reduce moves (fit; NCCL bus-bandwidth tests
    # on H100 SXM reach 0.4-0.5 of 900 GB/s).
    nvlink_eff: float = 0.40
    # All-reduce bandwidth between GPUs without NVLink (not fit: PCIe Gen4 x16, ~25 GB/s).
    pcie_bytes_per_s: float = 25e9


class AnalyticLatency:
    """A ``LatencyModel`` for any engine; every answer is ``ESTIMATED``."""

    __slots__ = ("params",)

    def __init__(self, params: RooflineParams | None = None) -> None:
        self.params = RooflineParams() if params is None else params

    def estimator(self, engine: EngineShape) -> AnalyticLatency:
        """The roofline for ``engine``: this one (``CalibratedLatency`` picks per precision)."""
        return self

    def covers(self, engine: EngineShape) -> bool:
        return True

    def prefill(
        self, engine: EngineShape, prompt_tokens: float, sm_pct: float, batch: float = 1
    ) -> Latency:
        check_query(sm_pct, batch, prompt_tokens)
        seconds = self.prefill_s(engine, prompt_tokens, sm_pct, batch)
        return Latency(seconds, LatencySource.ESTIMATED)

    def decode_step(
        self, engine: EngineShape, batch: float, context_tokens: float, sm_pct: float
    ) -> Latency:
        check_query(sm_pct, batch, context_tokens)
        seconds = self.decode_step_s(engine, batch, context_tokens, sm_pct)
        return Latency(seconds, LatencySource.ESTIMATED)

    def prefill_s(
        self, engine: EngineShape, prompt_tokens: float, sm_pct: float, batch: float = 1
    ) -> float:
        """Unchecked ``prefill`` in seconds; accepts fractional tokens and batch."""
        q = self.params
        arch, spec, tp = engine.model.arch, engine.model, engine.tp
        tokens = batch * prompt_tokens
        lm_head = arch.vocab_size * arch.hidden_size / tp  # logits of the last token only
        linear = 2 * arch.linear_params / tp * tokens + 2 * lm_head * batch
        rate = self._gemm_rate(engine) * tokens / (tokens + q.gemm_half_tokens)
        compute = linear / rate / self._compute_fraction(sm_pct)
        compute += self.prefill_attention_s(engine, prompt_tokens, sm_pct, batch)
        memory = spec.weight_bytes(tp) + tokens * spec.kv_bytes_per_token(tp)
        memory /= engine.gpu.hbm_bytes_per_s * q.hbm_eff * self._bandwidth_fraction(sm_pct)
        gpu = max(compute, memory) + self._allreduce_s(engine, tokens)
        return max(gpu, self._host_s(engine)) + q.prefill_overhead_s

    def prefill_attention_s(
        self, engine: EngineShape, prompt_tokens: float, sm_pct: float, batch: float = 1
    ) -> float:
        """Compute time of causal self-attention in a prefill: QK^T and AV over the lower
        triangle, quadratic in the prompt length (the part a total-token table cannot see)."""
        arch = engine.model.arch
        flops = 2 * batch * prompt_tokens**2 * arch.num_heads * arch.head_dim
        flops *= arch.num_layers / engine.tp
        return flops / self._bf16_rate(engine) / self._compute_fraction(sm_pct)

    def decode_step_s(
        self, engine: EngineShape, batch: float, context_tokens: float, sm_pct: float
    ) -> float:
        """Unchecked ``decode_step`` in seconds; accepts fractional batch."""
        q = self.params
        arch, spec, tp = engine.model.arch, engine.model, engine.tp
        weights = spec.precision.weights
        params = arch.linear_params / tp
        linear = 2 * (params + arch.vocab_size * arch.hidden_size / tp) * batch
        attention = 4 * batch * context_tokens * arch.num_heads * arch.head_dim
        attention *= arch.num_layers / tp
        dequant = params * q.int4_dequant_flops_per_param if weights.is_int4 else 0.0
        compute = linear / self._gemm_rate(engine)
        compute += (attention + dequant) / self._bf16_rate(engine)
        compute /= self._compute_fraction(sm_pct)
        memory = spec.weight_bytes(tp) + batch * context_tokens * spec.kv_bytes_per_token(tp)
        memory /= engine.gpu.hbm_bytes_per_s * q.hbm_eff * self._bandwidth_fraction(sm_pct)
        gpu = max(compute, memory) + self._allreduce_s(engine, batch)
        return max(gpu, self._host_s(engine)) + q.decode_overhead_s

    def _host_s(self, engine: EngineShape) -> float:
        """Time the host needs to launch one step's kernels."""
        q = self.params
        per_layer = q.host_layer_s
        if engine.model.precision.weights is WeightFormat.FP8:
            per_layer += q.fp8_host_layer_s
        if engine.tp > 1:
            per_layer += q.tp_host_layer_s
        return engine.model.arch.num_layers * per_layer

    def _gemm_rate(self, engine: EngineShape) -> float:
        """Achieved FLOP/s of the linear layers on the whole GPU."""
        q, weights = self.params, engine.model.precision.weights
        if weights is WeightFormat.FP8:
            return engine.gpu.flops_for(fp8_compute=True) * q.fp8_gemm_eff
        eff = q.int4_gemm_eff if weights.is_int4 else q.bf16_gemm_eff
        return engine.gpu.bf16_flops * eff

    def _bf16_rate(self, engine: EngineShape) -> float:
        return engine.gpu.bf16_flops * self.params.bf16_gemm_eff

    def _compute_fraction(self, sm_pct: float) -> float:
        return float((sm_pct / 100) ** self.params.sm_compute_exponent)

    def _bandwidth_fraction(self, sm_pct: float) -> float:
        return min(1.0, sm_pct / 100 / self.params.sm_saturation)

    def _allreduce_s(self, engine: EngineShape, tokens: float) -> float:
        """Two all-reduces per layer (after attention and after the MLP) of ``tokens`` rows of
        ``hidden`` bf16 values, as a ring: each rank moves 2 (tp - 1) / tp of the buffer."""
        tp = engine.tp
        if tp == 1:
            return 0.0
        q, arch = self.params, engine.model.arch
        moved = tokens * arch.hidden_size * 2 * 2 * (tp - 1) / tp
        link = engine.gpu.nvlink_bytes_per_s * q.nvlink_eff or q.pcie_bytes_per_s
        per_reduce = q.allreduce_latency_s + moved / link
        return 2 * arch.num_layers * per_reduce
