"""Host cores per GPU process (the profiler's per-GPU children, the e2e bench's lanes): whole
physical cores, near the GPU where NVML separates them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.measure.cores import (
    core_blocks,
    even_blocks,
    format_cpus,
    parse_cpus,
    physical_groups,
)


def smt(cores: int) -> dict[int, tuple[int, ...]]:
    """Linux's usual numbering: CPU c and c + cores are one physical core."""
    return {c: (c % cores, c % cores + cores) for c in range(2 * cores)}


def test_cpu_lists_read_and_write_the_kernels_syntax():
    assert parse_cpus("0-3, 8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpus((11, 0, 1, 2, 3, 8, 10)) == "0-3,8,10-11"
    assert format_cpus((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    with pytest.raises(ValueError, match="'x-2' is not N or N-M"):
        parse_cpus("0,x-2")


def test_the_even_split_never_splits_a_physical_core():
    blocks = even_blocks(tuple(range(32)), 2, smt(16))  # 0-15 / 16-31 would share every core
    assert blocks == (tuple(range(8)) + tuple(range(16, 24)),
                      tuple(range(8, 16)) + tuple(range(24, 32)))
    assert even_blocks(tuple(range(32)), 2, {}) == (tuple(range(16)), tuple(range(16, 32)))


def test_near_cores_are_used_where_nvml_separates_the_gpus():
    cpus = tuple(range(64))
    siblings = smt(32)
    node0 = tuple(range(16)) + tuple(range(32, 48))
    node1 = tuple(range(16, 32)) + tuple(range(48, 64))
    assert core_blocks(cpus, 2, siblings, (node1, node0)) == (node1, node0)
    halves = (tuple(range(16, 32)), tuple(range(16)))  # no sibling data, GPUs in either order
    assert core_blocks(tuple(range(32)), 2, {}, halves) == halves


def test_the_even_split_where_near_sets_overlap_or_are_too_small():
    cpus = tuple(range(64))
    siblings = smt(32)
    node0 = tuple(range(16)) + tuple(range(32, 48))
    even = even_blocks(cpus, 2, siblings)
    assert core_blocks(cpus, 2, siblings, (node0, node0)) == even  # one NUMA node
    small = (tuple(range(4)) + tuple(range(32, 36)), tuple(range(16, 20)) + tuple(range(48, 52)))
    assert core_blocks(cpus, 2, siblings, small) == even  # never fewer than the even split
    assert core_blocks(cpus, 2, siblings, ()) == even  # no NVML
    assert core_blocks(cpus, 2, siblings, (node0,)) == even  # NVML answered for one GPU only


def test_near_sets_count_only_the_cores_this_process_may_use():
    """The reviewer's host: the process sees cores 0-31, NVML puts GPU 0 near 0-27 and GPU 1
    near 28-55; GPU 1's near set here is 4 cores, so 16 and 16 rather than 4 each."""
    cpus = tuple(range(32))
    lopsided = (tuple(range(28)), tuple(range(28, 56)))
    assert core_blocks(cpus, 2, {}, lopsided) == (tuple(range(16)), tuple(range(16, 32)))
    half_cores = (tuple(range(16)), tuple(range(16, 32)))  # one thread of each core only
    assert core_blocks(cpus, 2, smt(16), half_cores) == even_blocks(cpus, 2, smt(16))


def test_no_blocks_where_there_are_fewer_physical_cores_than_gpus():
    assert even_blocks((0, 1), 2, {0: (0, 1), 1: (0, 1)}) == ()
    assert core_blocks((0, 1), 2, {0: (0, 1), 1: (0, 1)}, ((0,), (1,))) == ()


@given(st.integers(1, 24), st.integers(1, 2), st.integers(1, 4),
       st.lists(st.integers(0, 47), max_size=48).map(set))
def test_blocks_are_disjoint_equal_and_of_whole_cores(cores, threads, n, near_seed):
    siblings = {c: tuple(c % cores + k * cores for k in range(threads))
                for c in range(cores * threads)}
    cpus = tuple(range(cores * threads))
    near = tuple(tuple(c for c in sorted(near_seed) if c % n == k) for k in range(n))
    blocks = core_blocks(cpus, n, siblings, near)
    if cores < n:
        assert blocks == ()
        return
    assert len(blocks) == n
    flat = [c for b in blocks for c in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(cpus)
    groups = physical_groups(cpus, siblings)
    for b in blocks:
        assert all(set(g) <= set(b) or not set(g) & set(b) for g in groups)  # whole cores
    sizes = {len(b) for b in blocks}
    assert len(sizes) == 1 and sizes.pop() >= len(even_blocks(cpus, n, siblings)[0])


def test_a_pinned_process_and_its_children_run_on_its_cores_only():
    first = min(os.sched_getaffinity(0))
    code = ("import os, subprocess, sys; from fineserve.profiles.measure.cores import pin; "
            f"pin(({first},)); print(subprocess.run([sys.executable, '-c', 'import os; "
            "print(sorted(os.sched_getaffinity(0)))'], capture_output=True, text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == f"[{first}]"
