"""The profiler's MPS group: which GPUs its daemon and engines see."""

from __future__ import annotations

import pytest

from fineserve.profiles.measure.mps_daemon import MpsError, visible_uuids

HOST = ["GPU-a", "GPU-b", "GPU-c"]


def test_unset_means_every_gpu() -> None:
    assert visible_uuids(None, HOST) == ("GPU-a", "GPU-b", "GPU-c")


def test_indices_become_uuids_and_uuids_pass_through() -> None:
    assert visible_uuids("2, 0", HOST) == ("GPU-c", "GPU-a")
    assert visible_uuids("GPU-b", HOST) == ("GPU-b",)
    assert visible_uuids("", HOST) == ()


def test_missing_index_names_it() -> None:
    with pytest.raises(MpsError, match="GPU 3 is not on this host"):
        visible_uuids("3", HOST)
