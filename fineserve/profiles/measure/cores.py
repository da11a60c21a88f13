"""Host cores per GPU process of a multi-GPU run: whole physical cores, near the GPU.

The one implementation for the profiler's per-GPU children (bench/profile_h100.py) and the
end-to-end benchmark's lanes (bench/e2e/lanes.py). While one GPU measures, another GPU's
engines may be starting: torch.compile / Inductor workers take every core of the host, and
small-batch decode steps wait on the host (scheduler, sampler), so the measurements come out
slower while their repeats still agree - a silent bias. Each per-GPU process is therefore
pinned (``pin``, inherited by the engines it starts) to a block of cores of its own: the
cores NVML calls near its GPU where the GPUs' near sets are disjoint and hold at least the
even split, else an even split of whole physical cores (hyperthread siblings are never split
between blocks: Linux often numbers core c's second thread c + 16, so "0-15 / 16-31" would
share every core; the remainder idles, so no GPU gets more host than another).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

Block = tuple[int, ...]


def parse_cpus(text: str) -> Block:
    """``"0-3,8"`` (the kernel's list syntax) -> (0, 1, 2, 3, 8).

    Raises:
        ValueError: a part that is not N or N-M.
    """
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{part!r} is not N or N-M (a CPU list: 0-3,8)")
        out.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(out))


def format_cpus(cpus: Sequence[int]) -> str:
    """(0, 1, 2, 5) -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for c in sorted(set(cpus)):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def physical_groups(cpus: Sequence[int], siblings: Mapping[int, Block]) -> list[Block]:
    """``cpus`` grouped by physical core (``siblings``: CPU -> its core's CPUs; a CPU
    without an entry is a core of its own), in order of their first CPU."""
    seen: set[int] = set()
    groups = []
    for c in sorted(set(cpus)):
        if c in seen:
            continue
        group = tuple(sorted((set(siblings.get(c, ())) & set(cpus)) | {c}))
        seen.update(group)
        groups.append(group)
    return groups


def even_blocks(cpus: Sequence[int], n: int, siblings: Mapping[int, Block]) -> tuple[Block, ...]:
    """``n`` blocks of the same number of whole physical cores; () where there are fewer
    physical cores than blocks (nothing to pin)."""
    groups = physical_groups(cpus, siblings)
    per = len(groups) // max(1, n)
    if per == 0:
        return ()
    return tuple(tuple(sorted(c for g in groups[k * per:(k + 1) * per] for c in g))
                 for k in range(n))


def core_blocks(cpus: Sequence[int], n: int, siblings: Mapping[int, Block],
                near: Sequence[Block] = ()) -> tuple[Block, ...]:  # fmt: skip
    """One block per GPU: its ``near`` cores (NVML, one entry per GPU in order) where those
    are pairwise disjoint and each holds at least the even split's whole cores, else
    ``even_blocks``. Near blocks are cut to the same number of whole cores."""
    even = even_blocks(cpus, n, siblings)
    if not even or len(near) != n:
        return even
    per_even = len(physical_groups(even[0], siblings))
    mine = [[g for g in physical_groups(cpus, siblings) if set(g) <= set(near_k)]
            for near_k in near]
    flat = [c for groups in mine for g in groups for c in g]
    per = min(len(groups) for groups in mine)
    if per < per_even or len(flat) != len(set(flat)):
        return even
    return tuple(tuple(sorted(c for g in groups[:per] for c in g)) for groups in mine)


def host_siblings(cpus: Sequence[int]) -> dict[int, Block]:
    """CPU -> the CPUs of its physical core, from sysfs ({} entries where unreadable)."""
    out = {}
    for c in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            out[c] = parse_cpus(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return out


def nvml_near(indices: Sequence[int]) -> tuple[Block, ...]:
    """Per NVML device index, the CPUs NVML calls near it; () without NVML (CPU hosts,
    tests) or where any lookup fails (the caller splits evenly)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: split evenly
        return ()
    try:
        words = (os.cpu_count() or 64) // 64 + 1
        out = []
        for i in indices:
            mask = pynvml.nvmlDeviceGetCpuAffinity(pynvml.nvmlDeviceGetHandleByIndex(i), words)
            out.append(tuple(w * 64 + b for w, m in enumerate(mask) for b in range(64)
                             if int(m) >> b & 1))
        return tuple(out)
    except Exception:  # noqa: BLE001 - an index NVML does not know: split evenly
        return ()
    finally:
        pynvml.nvmlShutdown()


def plan_blocks(n: int, indices: Sequence[int] = ()) -> tuple[Block, ...]:
    """This host's blocks for ``n`` GPU processes (``indices``: their NVML indices, for the
    near cores; empty on CPU)."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    near = nvml_near(indices) if indices else ()
    return core_blocks(cpus, n, host_siblings(cpus), near)


def pin(cpus: Sequence[int]) -> None:
    """Pin this process (and what it starts from now on) to ``cpus``."""
    os.sched_setaffinity(0, set(cpus))
