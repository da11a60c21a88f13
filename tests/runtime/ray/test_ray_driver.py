"""`deploy --ray` on a real two-node Ray cluster with stand-in engines (fast): placement by
resource, one gateway over both nodes, node loss and return, stop. Real vLLM engines:
test_ray_e2e.py."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from .deployed import RayDeployed
from .steps import (  # noqa: F401 (collected here)
    test_both_nodes_serve_through_one_gateway,
    test_node_loss_is_reported_and_the_other_model_keeps_serving,
    test_node_return_restarts_its_engines,
    test_stop_leaves_nothing_running,
)

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow]

STANDIN = Path(__file__).with_name("standin_vllm.py")


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raydep")
    python = tmp / "engine-python"  # runs the stand-in as `python -m vllm...` would run vLLM
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    d = RayDeployed(tmp, str(python), start_timeout_s=120)
    try:
        d.start()
        d.wait_for("serving on", 240, where="stdout")
        yield d
    finally:
        d.teardown()
