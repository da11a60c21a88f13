"""``--redo-noisy`` on the committed H100 results of session 6 (4 x H100, commit 02a5c55):
the next session measures again exactly the points over the 5% spread, and nothing else of
the complete entries. Skipped once a later session's records (today's methods) are merged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fineserve.profiles.measure.records import (
    DECODE_METHOD,
    PREFILL_METHOD,
    PointRecord,
    read_records,
)
from fineserve.profiles.measure.runner import plan_engines

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "bench" / "results" / "h100-profile"
SCRIPT = REPO / "bench" / "profile_h100.py"

# (model, precision, SM share, phase, batch, tokens): the rows over 5% of the session-6
# export, plus fp8 / fp8 KV at SM 50 1 x 2048, whose cell the noisy 4 x 512 extra (9.4%,
# step-ts/2) ships in: measured again with today's method, the extra is left out
S6_REDO = {
    ("llama-3.1-8b", "bf16.kv-bf16", 100, "prefill", 1, 512),
    ("llama-3.1-8b", "fp8.kv-fp8", 100, "prefill", 1, 2048),
    ("llama-3.1-8b", "fp8.kv-fp8", 50, "prefill", 1, 2048),
    ("llama-3.1-8b", "int4-gptq.kv-fp8", 100, "prefill", 1, 2048),
    ("llama-3.2-3b", "bf16.kv-bf16", 50, "prefill", 1, 2048),
    ("llama-3.2-3b", "bf16.kv-bf16", 100, "prefill", 1, 128),
    ("llama-3.2-3b", "bf16.kv-bf16", 100, "prefill", 1, 512),
    ("llama-3.2-3b", "bf16.kv-bf16", 100, "prefill", 1, 2048),
    ("qwen2.5-14b", "fp8.kv-bf16", 100, "prefill", 1, 512),
    ("llama-3.1-8b", "fp8.kv-bf16", 50, "decode", 1, 256),
    ("llama-3.1-8b", "fp8.kv-bf16", 50, "decode", 1, 1024),
    ("llama-3.1-8b", "fp8.kv-bf16", 100, "decode", 32, 256),
}


def _bench():
    spec = importlib.util.spec_from_file_location("profile_h100_s6", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _later_session() -> bool:
    for path in RESULTS.glob("H100-SXM-80GB/*/*.jsonl"):
        for r in read_records(path):
            if isinstance(r, PointRecord) and r.method.split()[0] in (PREFILL_METHOD,
                                                                     DECODE_METHOD):
                return True
    return False


@pytest.mark.skipif(not RESULTS.exists() or _later_session(),
                    reason="session-6 results changed (a later session merged)")
def test_redo_noisy_selects_exactly_the_session_6_points_over_the_target(tmp_path):
    bench = _bench()
    args = bench.parser().parse_args(["--reference-set", "--out", str(RESULTS)])
    args.redo_noisy = True  # main()'s default with --reference-set
    selected, again_without = set(), set()
    for job in bench.jobs_of(args):
        for redo, into in ((True, selected), (False, again_without)):
            args.redo_noisy = redo
            request = bench.build_request(args, job, None, RESULTS)
            for plan in plan_engines(request, "H100-SXM-80GB", tmp_path / "models"):
                if plan.label.model == "llama-3.1-70b":
                    continue  # not complete yet: its missing points are planned anyway
                into |= {(plan.label.model, plan.store.precision.name, int(plan.label.sm_pct),
                          p.phase, p.batch, p.tokens) for p in plan.todo}
    assert again_without == set()  # every other planned point of those entries is done
    assert selected == S6_REDO
