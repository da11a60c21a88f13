"""The measurement grid: which points each engine measures, and the engine sizes they need.

The grid is a product on every axis (prefill: batch x prompt tokens; decode: batch x context)
and the same at every SM share, because ``TableLatency`` interpolates over the product of the
measured axis values and refuses holes it cannot fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fineserve.errors import SpecError
from fineserve.profiles.catalog import VLLM_BLOCK_SIZE, ModelSpec
from fineserve.profiles.measure.records import DECODE, PREFILL, PointSpec
from fineserve.profiles.measure.timing import decode_prompt_tokens

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Axis values of one profile; every SM share gets every point."""

    sm_pcts: tuple[float, ...] = (100.0, 70.0, 50.0, 30.0)
    prefill_tokens: tuple[int, ...] = (128, 512, 1024, 2048)
    prefill_batches: tuple[int, ...] = (1, 4)
    decode_batches: tuple[int, ...] = (1, 8, 32, 64)
    decode_contexts: tuple[int, ...] = (512, 2048)
    repeats: int = 5  # timed prefill repeats per point, after one untimed run of the same shape
    decode_tokens: int = 128  # tokens per decode run: ~127 steps in the timed window
    # > 0: decode runs generate fewer tokens where steps are slow, enough for a window of this
    # many seconds (timing.window_tokens; decode_tokens is the most); 0: always decode_tokens
    decode_window_s: float = 0.0
    prefill_samples: int = 3  # runs per prefill repeat, reduced to their median (stats.py)
    # runs per decode repeat, reduced to their median, and decode's timed repeats: 7% of the
    # H100's single decode runs were > 5% off their point's median, nearly all slow (a host
    # stall inside the window); 3 medians of 3 cost 10 runs a point instead of 6
    decode_samples: int = 3
    decode_repeats: int = 3
    # Skip prefill points with batch > 1 whose batch x tokens equals a batch-1 point's: the
    # table indexes prefill by total tokens, so they add nothing the planner can see.
    prune_prefill: bool = True

    def __post_init__(self) -> None:
        for name in ("sm_pcts", "prefill_tokens", "prefill_batches", "decode_batches",
                     "decode_contexts"):
            values = getattr(self, name)
            if not values:
                raise SpecError(f"grid {name}: give at least one value")
            if any(not v >= 1 for v in values):
                raise SpecError(f"grid {name}: values must be >= 1, got {values}")
            object.__setattr__(self, name, tuple(sorted(set(values))))
        if any(v > 100 for v in self.sm_pcts):
            raise SpecError(f"grid sm_pcts: {max(self.sm_pcts):g} is above 100")
        for name in ("repeats", "prefill_samples", "decode_samples", "decode_repeats"):
            if getattr(self, name) < 1:
                raise SpecError(f"grid {name}: {getattr(self, name)} must be >= 1")
        if self.decode_tokens < 8:
            raise SpecError(f"grid decode_tokens: {self.decode_tokens} must be >= 8")
        if not self.decode_window_s >= 0:
            raise SpecError(f"grid decode_window_s: {self.decode_window_s} must be >= 0")

    def points(self) -> tuple[PointSpec, ...]:
        """Prefill points (small first), then decode points, for one SM share."""
        pruned = {p.key for p in self.pruned()}
        prefill = [PointSpec(PREFILL, b, t, self.repeats, self.prefill_samples)
                   for b in self.prefill_batches for t in self.prefill_tokens
                   if (PREFILL, b, t) not in pruned]
        decode = [PointSpec(DECODE, b, c, self.decode_repeats, self.decode_samples)
                  for b in self.decode_batches for c in self.decode_contexts]
        size = lambda p: (p.batch * p.tokens, p.batch)  # noqa: E731
        return tuple(sorted(prefill, key=size) + sorted(decode, key=size))

    def pruned(self) -> tuple[PointSpec, ...]:
        """Prefill points left out by ``prune_prefill`` (shipped still, where measured)."""
        if not self.prune_prefill:
            return ()
        single = set(self.prefill_tokens) if 1 in self.prefill_batches else set()
        return tuple(PointSpec(PREFILL, b, t, self.repeats, self.prefill_samples)
                     for b in self.prefill_batches for t in self.prefill_tokens
                     if b > 1 and b * t in single)


QUICK = GridSpec(
    sm_pcts=(100.0,), prefill_tokens=(64, 256), prefill_batches=(1, 2), decode_batches=(1, 4),
    decode_contexts=(128,), repeats=3, decode_tokens=24, prefill_samples=1, decode_samples=1,
    decode_repeats=3,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EngineSizing:
    """Engine limits that fit every point of a grid."""

    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_bytes: int


def sizing(grid: GridSpec, spec: ModelSpec, tp: int, *, min_kv_bytes: int = GIB) -> EngineSizing:
    """Sizes for ``grid``: the longest sequence (at least one step's token budget, for the
    prefill blocker), the largest batch, one prefill batch in one step, and KV for the largest
    batch at its longest context or a prefill batch behind its blocker (+10%, whole blocks).
    The step budget also exceeds the longest decode prompt plus the largest batch, so every
    step of a decode run's prefill completes one (``timing.decode_window`` counts on it)."""
    n = grid.decode_tokens
    prompts = [decode_prompt_tokens(c, n) for c in grid.decode_contexts]
    decode_len = [p + n for p in prompts]
    seqs = max(*grid.prefill_batches, *grid.decode_batches)
    prefill_tokens = max(b * t for b in grid.prefill_batches for t in grid.prefill_tokens)
    batched = max(prefill_tokens, seqs, 256, max(prompts) + seqs + 1)
    # A prompt of `batched` tokens must fit: the prefill blocker fills one step's budget.
    longest = max(max(grid.prefill_tokens) + 1, *decode_len, batched + 8)
    max_len = math.ceil((longest + VLLM_BLOCK_SIZE) / VLLM_BLOCK_SIZE) * VLLM_BLOCK_SIZE
    tokens = max(
        max(grid.prefill_batches) * (max(grid.prefill_tokens) + 1) + max_len,
        max(grid.decode_batches) * max(decode_len),
    )
    blocks = math.ceil(tokens * 1.1 / VLLM_BLOCK_SIZE) + seqs + 1
    kv = max(min_kv_bytes, blocks * spec.block_bytes(tp))
    return EngineSizing(max_len, seqs, batched, kv)
