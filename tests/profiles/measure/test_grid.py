"""Grid planning: product grids, point order, engine sizes that fit every point."""

from __future__ import annotations

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.measure.grid import QUICK, GridSpec, sizing
from fineserve.profiles.measure.records import DECODE, PREFILL
from fineserve.profiles.measure.timing import decode_prompt_tokens


def test_points_are_the_product_of_each_phase_axes():
    grid = GridSpec(prefill_tokens=(512, 128), prefill_batches=(1, 4), decode_batches=(8, 1),
                    decode_contexts=(2048, 512), repeats=3, prune_prefill=False)
    points = grid.points()
    prefill = {(p.batch, p.tokens) for p in points if p.phase == PREFILL}
    decode = {(p.batch, p.tokens) for p in points if p.phase == DECODE}
    assert prefill == {(1, 128), (1, 512), (4, 128), (4, 512)}
    assert decode == {(1, 512), (1, 2048), (8, 512), (8, 2048)}
    assert all(p.repeats == 3 for p in points)
    assert len(points) == len({p.key for p in points}) == 8


def test_pruning_drops_prefill_batches_whose_total_a_batch_1_point_has():
    grid = GridSpec(prefill_tokens=(128, 512, 2048), prefill_batches=(1, 4))
    prefill = {(p.batch, p.tokens) for p in grid.points() if p.phase == PREFILL}
    # 4 x 128 = 1 x 512 and 4 x 512 = 1 x 2048: the table sees the same cell twice
    assert prefill == {(1, 128), (1, 512), (1, 2048), (4, 2048)}
    assert {(p.batch, p.tokens) for p in grid.pruned()} == {(4, 128), (4, 512)}
    assert all(p.samples == 3 for p in grid.points() if p.phase == PREFILL)
    assert all(p.samples == 3 for p in grid.points() if p.phase == DECODE)  # median of 3 too
    assert all(p.samples == 1 for p in GridSpec(decode_samples=1).points() if p.phase == DECODE)
    # without a batch-1 row nothing is a duplicate
    assert GridSpec(prefill_batches=(2, 4)).pruned() == ()


def test_points_run_prefill_first_and_small_first():
    points = GridSpec().points()
    phases = [p.phase for p in points]
    assert phases == sorted(phases, key=lambda ph: ph != PREFILL)
    decode_sizes = [p.batch * p.tokens for p in points if p.phase == DECODE]
    assert decode_sizes == sorted(decode_sizes)


def test_axes_are_sorted_and_deduplicated():
    grid = GridSpec(sm_pcts=(50, 100, 50))
    assert grid.sm_pcts == (50, 100)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sm_pcts": (120,)}, "sm_pcts"),
    ({"sm_pcts": (0,)}, "sm_pcts"),
    ({"decode_batches": ()}, "decode_batches"),
    ({"repeats": 0}, "repeats"),
    ({"decode_tokens": 4}, "decode_tokens"),
    ({"prefill_samples": 0}, "prefill_samples"),
])
def test_bad_grids_name_the_field(kwargs, message):
    with pytest.raises(SpecError, match=message):
        GridSpec(**kwargs)


def test_sizing_fits_every_point():
    grid = GridSpec()
    spec = model_spec("llama-3.1-8b")
    size = sizing(grid, spec, tp=1)
    n = grid.decode_tokens
    for p in grid.points():
        if p.phase == PREFILL:
            assert p.tokens + 1 <= size.max_model_len
            assert p.batch * p.tokens <= size.max_num_batched_tokens
            need = p.batch * (p.tokens + 1)
        else:
            prompt = decode_prompt_tokens(p.tokens, n)
            length = prompt + n
            assert length <= size.max_model_len
            need = p.batch * length
            # every step of the decode run's prefill completes a prompt (timing.decode_window)
            assert prompt + p.batch <= size.max_num_batched_tokens
        assert p.batch <= size.max_num_seqs
        assert need * spec.kv_bytes_per_token() <= size.kv_cache_bytes
    assert size.max_model_len % 16 == 0
    # the prefill blocker (a whole step's budget) fits, behind it a full prefill batch
    assert size.max_num_batched_tokens + 8 <= size.max_model_len
    blocker_and_batch = size.max_model_len + 4 * (2048 + 1)
    assert blocker_and_batch * spec.kv_bytes_per_token() <= size.kv_cache_bytes


def test_decode_prompt_puts_the_measured_steps_at_the_mean_context():
    # the window's steps see contexts prompt + 1 .. prompt + n - 1: mean prompt + n / 2
    assert decode_prompt_tokens(512, 128) == 512 - 64
    assert decode_prompt_tokens(10, 128) == 1  # never an empty prompt


def test_quick_grid_is_tiny():
    assert len(QUICK.points()) <= 8 and QUICK.sm_pcts == (100,)
