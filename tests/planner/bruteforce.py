"""Exhaustive search over the planner's discrete space, for checking the ILP on tiny cases.

Static KV, TP 1 only. It enumerates every per-GPU configuration (a set of engines, at most one
per model, within the SM, memory and engine limits), then every multiset of configurations
over the GPUs, and applies the lexicographic objective (fewest GPUs, then largest minimum
headroom) in the ILP's integer units. It shares no code with the ILP beyond the options.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fineserve.planner.options import EngineOption, usable_bytes
from fineserve.planner.schema import Instance, KVMode


def _configs(inst: Instance, options: dict[str, tuple[EngineOption, ...]]):
    st = inst.settings
    assert st.kv_mode is KVMode.STATIC
    names = [m.name for m in inst.models]
    cap_kib = usable_bytes(inst.cluster.nodes[0].gpu, st.memory_utilization) // 1024
    sm_cap = math.floor(100 * st.sm_oversubscription)
    per_model = [[None, *[o for o in options[n] if o.tp == 1]] for n in names]
    configs = []
    for pick in itertools.product(*per_model):
        chosen = [o for o in pick if o is not None]
        if not chosen or len(chosen) > st.max_engines_per_gpu:
            continue
        if sum(o.sm_pct for o in chosen) > sm_cap:
            continue
        if sum(math.ceil(o.fixed_bytes(KVMode.STATIC) / 1024) for o in chosen) > cap_kib:
            continue
        configs.append([math.floor(o.capacity_rps * 1000) if o else 0 for o in pick])
    return np.array(configs, dtype=np.int64).reshape(-1, len(names))


def brute_force(inst: Instance, options) -> tuple[int, int] | None:
    """(GPUs, H in thousandths) of the lexicographic optimum, or None if nothing covers all."""
    st = inst.settings
    lam = np.array([math.ceil(m.rate_rps * 1000) for m in inst.models], dtype=np.int64)
    h_min, h_cap = math.ceil(st.min_headroom * 1000), math.ceil(st.headroom_cap * 1000)
    configs = _configs(inst, options)
    for k in range(1, inst.cluster.num_gpus + 1):
        best = -1
        for combo in _chunks(len(configs), k):
            caps = configs[combo].sum(axis=1)  # (n, models) milli-rps
            ok = np.all(1000 * caps >= h_min * lam, axis=1)
            if not ok.any():
                continue
            h = np.min((1000 * caps[ok]) // lam, axis=1)
            best = max(best, int(min(h.max(), h_cap)))
        if best >= 0:
            return k, best
    return None


def _chunks(n: int, k: int, size: int = 200_000):
    it = itertools.combinations_with_replacement(range(n), k)
    while True:
        block = list(itertools.islice(it, size))
        if not block:
            return
        yield np.array(block, dtype=np.int64)
