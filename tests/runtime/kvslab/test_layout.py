"""Block <-> slab <-> byte-range arithmetic and plane detection (exact ids and offsets)."""

import pytest

from fineserve.runtime.kvslab.errors import UnsupportedEngine
from fineserve.runtime.kvslab.layout import _PROBE_BLOCKS, KvLayout, planes_of, slab_bytes_for

KIB, MIB = 1 << 10, 1 << 20


def test_llama8b_bf16_flash_attention_layout():
    # 64 KiB pages (K+V), FlashAttention (2, N, 16, 8, 128): two 32 KiB planes per block
    lay = KvLayout(num_layers=32, page_bytes=64 * KIB, planes=2, num_blocks=640, block_size=16)
    assert lay.blocks_per_slab == 64  # 64 x 32 KiB = one granule per plane
    assert (lay.num_slabs, lay.slab_bytes, lay.tokens_per_slab) == (10, 128 * MIB, 1024)
    assert lay.bytes_per_token == 128 * KIB
    assert lay.blocks_of_slab(3) == range(192, 256)
    assert lay.slab_of_block(255) == 3 and lay.slab_of_block(256) == 4
    plane = 640 * 32 * KIB
    assert lay.slab_ranges(3) == ((3 * 2 * MIB, 2 * MIB), (plane + 3 * 2 * MIB, 2 * MIB))
    assert all(off % (2 * MIB) == 0 for s in range(10) for off, _ in lay.slab_ranges(s))


def test_block_major_fp8_layout_and_larger_slabs():
    lay = KvLayout(num_layers=32, page_bytes=32 * KIB, planes=1, num_blocks=256, block_size=16,
                   min_slab_granules=2)
    assert lay.blocks_per_slab == 128 and lay.slab_ranges(1) == ((4 * MIB, 4 * MIB),)
    assert lay.virtual_bytes(5) == 5 * lay.slab_bytes
    assert slab_bytes_for(64 * KIB, 2, 32) == 128 * MIB


def test_odd_page_sizes_round_up_to_whole_granules():
    lay = KvLayout(num_layers=1, page_bytes=3 * MIB, planes=1, num_blocks=8, block_size=16)
    assert lay.blocks_per_slab == 2 and lay.slab_plane_bytes == 6 * MIB


def test_a_cache_that_is_not_whole_slabs_is_refused_with_the_size_to_use():
    with pytest.raises(UnsupportedEngine, match="multiple of 134217728"):
        KvLayout(num_layers=32, page_bytes=64 * KIB, planes=2, num_blocks=650, block_size=16)


def test_index_errors_outside_the_cache():
    lay = KvLayout(num_layers=2, page_bytes=64 * KIB, planes=2, num_blocks=128, block_size=16)
    with pytest.raises(IndexError):
        lay.slab_of_block(128)
    with pytest.raises(IndexError):
        lay.slab_ranges(2)


@pytest.mark.parametrize("shape, order, planes", [
    (lambda n: (2, n, 16, 8, 128), (0, 1, 2, 3, 4), 2),  # FlashAttention NHD
    (lambda n: (2, n, 16, 8, 128), (0, 1, 3, 2, 4), 2),  # FlashAttention HND
    (lambda n: (n, 2, 16, 8, 128), (0, 1, 2, 3, 4), 1),  # FlashInfer
    (lambda n: (2, n, 16, 8, 128), (1, 0, 2, 3, 4), 1),  # logical K/V first, block-major memory
    (lambda n: (n, 16, 576), (0, 1, 2), 1),  # MLA
])
def test_planes_from_backend_shapes(shape, order, planes):
    assert planes_of(shape(_PROBE_BLOCKS[0]), shape(_PROBE_BLOCKS[1]), order) == planes


def test_shape_without_a_block_dimension_is_refused():
    with pytest.raises(UnsupportedEngine, match="no single block dimension"):
        planes_of((2, 16), (2, 16), (0, 1))
