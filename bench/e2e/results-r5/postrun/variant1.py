"""Run a script (argv[1], its arguments after) with colocation_when_busy's solo step as
variant 1: only the common factor removed (decode_scale -> 1), the per-sequence term kept
whole. For the comparison in README.md; the committed flag is variant 2.

    FLAGS=colocation_when_busy PYTHONPATH=. python bench/e2e/results-r5/postrun/variant1.py \
        bench/e2e/results-r4/postrun3/fit_protocol.py CAL.json DIRS...
"""
import runpy
import sys
from dataclasses import replace

import fineserve.sim.cluster as cluster
from fineserve.sim.stepscale import EngineScaledLatency, ScaledLatency


def decode_scale_only(latency):
    if isinstance(latency, EngineScaledLatency):
        inner = decode_scale_only(latency.inner)
        return None if inner is None else replace(latency, inner=inner)
    if isinstance(latency, ScaledLatency) and latency.decode_scale > 1:
        return replace(latency, decode_scale=1.0)
    return None


cluster.without_colocation = decode_scale_only
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
