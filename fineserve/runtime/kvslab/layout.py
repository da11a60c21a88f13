"""Block <-> slab <-> byte-range arithmetic for one engine's vLLM KV tensors (pure).

vLLM 0.26 gives every attention layer one int8 tensor of ``num_blocks * page_bytes`` bytes and
views it with the backend's shape. In physical (stride) order the block dimension is preceded
either by nothing (block-major, e.g. FlashInfer ``(N, 2, bs, H, D)``) or by the K/V dimension
(FlashAttention ``(2, N, bs, H, D)``): the tensor is ``planes`` equal planes and block b is
``page_bytes / planes`` bytes at the same offset in each plane. So consecutive block ids are one
contiguous range per plane per layer, and a slab - B consecutive blocks, B chosen so that
``B * page_bytes / planes`` is a whole number of 2 MiB granules - maps with one
``cuMemMap`` per plane per layer and shares no granule with another slab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fineserve.runtime.kvslab.errors import UnsupportedEngine

GRANULE = 2 << 20

# two primes no other KV dimension (2, block size, heads, head size) is likely to equal
_PROBE_BLOCKS = (1009, 1013)


def planes_of(shape_a: Sequence[int], shape_b: Sequence[int], stride_order: Sequence[int]) -> int:
    """Planes before the block dimension in physical order.

    Args:
        shape_a, shape_b: the backend's logical KV shape for ``_PROBE_BLOCKS[0]`` and ``[1]``
            blocks (``get_kv_cache_shape``).
        stride_order: the backend's ``get_kv_cache_stride_order()`` (identity if it has none).
    Raises:
        UnsupportedEngine: no single dimension scales with the number of blocks.
    """
    diff = [i for i, (a, b) in enumerate(zip(shape_a, shape_b, strict=True)) if a != b]
    if len(diff) != 1 or shape_a[diff[0]] != _PROBE_BLOCKS[0]:
        raise UnsupportedEngine(f"KV cache shape {tuple(shape_a)} has no single block dimension")
    physical = [shape_a[i] for i in stride_order]
    return math.prod(physical[: list(stride_order).index(diff[0])])


@dataclass(frozen=True, slots=True)
class KvLayout:
    """One engine's KV tensors: ``num_layers`` tensors of ``num_blocks * page_bytes`` bytes."""

    num_layers: int  # distinct KV tensors (layers sharing a tensor count once)
    page_bytes: int  # one block of one layer, all planes (vLLM's page_size_bytes)
    planes: int  # 1 block-major, 2 K-plane then V-plane
    num_blocks: int  # the virtual maximum vLLM was told
    block_size: int  # tokens per block
    granule: int = GRANULE
    min_slab_granules: int = 1  # per plane per layer; larger slabs, fewer map calls

    def __post_init__(self) -> None:
        for name in ("num_layers", "page_bytes", "planes", "num_blocks", "block_size",
                     "granule", "min_slab_granules"):
            if getattr(self, name) <= 0:
                raise UnsupportedEngine(f"KV layout: {name} must be > 0, got "
                                        f"{getattr(self, name)}")
        if self.page_bytes % self.planes:
            raise UnsupportedEngine(f"KV page of {self.page_bytes} B does not split into "
                                    f"{self.planes} planes")
        if self.num_blocks % self.blocks_per_slab:
            raise UnsupportedEngine(
                f"KV cache of {self.num_blocks} blocks is not a whole number of slabs of "
                f"{self.blocks_per_slab} blocks",
                hint=f"pass --kv-cache-memory-bytes as a multiple of {self.slab_bytes} "
                     "(kvslab.layout.KvLayout.virtual_bytes)")

    @property
    def plane_page(self) -> int:
        return self.page_bytes // self.planes

    @property
    def blocks_per_slab(self) -> int:
        """Fewest blocks whose bytes per plane are whole granules (times the minimum)."""
        whole = self.granule // math.gcd(self.plane_page, self.granule)
        per_granule = math.ceil(self.min_slab_granules * self.granule
                                / (whole * self.plane_page))
        return whole * per_granule

    @property
    def num_slabs(self) -> int:
        return self.num_blocks // self.blocks_per_slab

    @property
    def slab_plane_bytes(self) -> int:
        """Bytes of one slab in one plane of one layer: one ``cuMemMap`` call."""
        return self.blocks_per_slab * self.plane_page

    @property
    def slab_bytes(self) -> int:
        """Physical memory of one slab: every plane of every layer."""
        return self.blocks_per_slab * self.page_bytes * self.num_layers

    @property
    def tokens_per_slab(self) -> int:
        return self.blocks_per_slab * self.block_size

    @property
    def bytes_per_token(self) -> int:
        return self.page_bytes * self.num_layers // self.block_size

    @property
    def tensor_bytes(self) -> int:
        return self.num_blocks * self.page_bytes

    def slab_of_block(self, block_id: int) -> int:
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"block {block_id} outside [0, {self.num_blocks})")
        return block_id // self.blocks_per_slab

    def blocks_of_slab(self, slab: int) -> range:
        self._check(slab)
        b = self.blocks_per_slab
        return range(slab * b, (slab + 1) * b)

    def slab_ranges(self, slab: int) -> tuple[tuple[int, int], ...]:
        """(offset, length) inside one layer's tensor for each plane of ``slab``."""
        self._check(slab)
        plane_bytes = self.num_blocks * self.plane_page
        n = self.slab_plane_bytes
        return tuple((p * plane_bytes + slab * n, n) for p in range(self.planes))

    def virtual_bytes(self, slabs: int) -> int:
        """``--kv-cache-memory-bytes`` that makes vLLM allocate exactly ``slabs`` slabs."""
        return slabs * self.slab_bytes

    def _check(self, slab: int) -> None:
        if not 0 <= slab < self.num_slabs:
            raise IndexError(f"slab {slab} outside [0, {self.num_slabs})")


def slab_bytes_for(page_bytes: int, planes: int, num_layers: int, granule: int = GRANULE) -> int:
    """Slab size of an engine before it starts (planner/launcher: size the virtual maximum)."""
    whole = granule // math.gcd(page_bytes // planes, granule)
    return whole * page_bytes * num_layers
