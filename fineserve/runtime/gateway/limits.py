"""An engine's scheduler settings: its in-flight limit starts at, and never exceeds, the
plan's batch cap (vLLM's ``--max-num-seqs``).

Why a ceiling and not only a start: vLLM runs at most ``max_batch`` sequences; whatever the
gateway sends beyond that waits inside the engine, where the gateway can neither expire nor
reorder it, and shows as ``waiting > 0`` - which the adaptive policy reads as the engine
batching less than it is sent (a clamp) and, on a KV Slab engine whose usage gauge sits near
1 by design, as a KV shortage (a x0.75 cut). On the H100 (docs/benchmarks.md, (c) at x2 and
x2.5) a limit of 256 over chat-8b-fp8's cap of 249 left up to 7 requests waiting in vLLM,
and that cut the limit to 192 in the middle of the peak. Shared by the gateway and the
simulator, so both hold the same limits.
"""

from __future__ import annotations

from dataclasses import replace

from fineserve.scheduler import SchedulerConfig


def engine_config(base: SchedulerConfig, max_batch: int) -> SchedulerConfig:
    """``base`` for one engine of batch cap ``max_batch``: limit starts at the cap, and the
    gateway-wide ``max_limit`` and the cap bound it (``min_limit`` still wins: at least 1)."""
    cap = max(base.min_limit, min(base.max_limit, max_batch))
    return replace(base, initial_limit=cap, max_limit=cap)
