"""KV Slab acceptance on one H100 (issue 6): three co-located engines of different precision,
the same KV memory split statically (the best of three splits) vs one elastic pool.

Engines (bench/deploy_h100.py's, dummy weights, CUDA graphs, MPS SM 40/30/30, max-num-seqs
256 so the KV - not the batch cap - binds; the gateway is FCFS with a deep queue, so vLLM
does the queueing in both modes and nothing is rejected in front of it):
  chat-8b         Llama-3.1-8B  bf16 weights, bf16 KV   (128 KiB/token)
  chat-8b-fp8     Llama-3.1-8B  fp8 weights,  fp8 KV    ( 64 KiB/token)
  assist-7b-int4  Mistral-7B    GPTQ int4,    bf16 KV   (128 KiB/token)
KV memory: ``--kv-gib`` (6 GiB) in all, deliberately small so KV, not compute, binds inside a
short run. Static: each engine reserves its share (kvslab_accept_setup.py: the best of three
splits on this trace). Pooled: one ledger of the same bytes (the plan's memory_utilization
is set so the pool is exactly that), each engine's floor is ``--max-model-len`` tokens (what
vLLM needs to start), the rest moves.

Per mode: deploy, warm up, then
  saturation  3 phases of ``--phase-s``: one engine flooded with more sequences than the whole
              pool holds, the two others with a quarter of their static share; sampled over
              the last 40 % of each phase. (i) share of pool memory holding KV (pooled: used
              tokens x bytes/token from the ledger / pool bytes; static: vLLM usage x share),
              (ii) vLLM num_requests_running summed over the engines.
  trace       bursty, skewed and shifting (kvslab_accept_trace.py; ``--trace kv-bound``: long
              contexts and generations, so the hot engine needs more sequences than a third
              of the memory holds while its steps stay cheap; ``--trace edge``: the
              2026-11-26 run's); replayed open-loop through the gateway. (iii) SLO
              attainment, requests lost (not answered in full), memory errors in engine logs.
Acceptance: (i) pooled >= 95 %, (ii) pooled >= 1.5 x static, (iii) static <= 60 % (the
premise) and pooled >= 1.5 x static, no request lost, no memory error.

    python bench/kvslab_accept.py --out /tmp/fs-accept          # <= 8 min, one GPU call
    python bench/kvslab_accept.py --quick --out /tmp/fs-accept  # eager engines, shorter
    python bench/kvslab_accept.py --dry-run                     # plans, commands, predictions
Writes <out>/kvslab_accept.json (with every sample: engines' running / waiting / usage and,
pooled, the ledger's used / held / target / wanted bytes per engine), .md and
kvslab_accept-logs.txt (error lines of the engine logs), after each mode; --dry-run writes
<out>/kvslab_accept-dry.json (with ``fineserve simulate``'s prediction at each
``--sim-latency-scale``). Plans go to --work.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e.deployment import (  # noqa: E402
    DeployArgs,
    DeployProcess,
    device_name,
    drain,
    say,
    warm_up,
)
from bench.kvslab_accept_load import Sampler, saturate  # noqa: E402
from bench.kvslab_accept_predict import policy_replay, pool_plan, simulated  # noqa: E402
from bench.kvslab_accept_report import (  # noqa: E402
    compact_rows,
    markdown,
    saturation_summary,
    scan_logs,
    verdict,
    write_results,
)
from bench.kvslab_accept_setup import GPU, Setup, gib, make_setup, write_plans  # noqa: E402
from bench.kvslab_accept_trace import PRESETS, shape_from  # noqa: E402
from fineserve.profiles.gpus import gpu_spec  # noqa: E402

MAX_QUEUE = 4096
RUNNER_ENV = {"default": None, "v1": "0", "v2": "1"}  # VLLM_USE_V2_MODEL_RUNNER
REPLAY_TIMEOUT_S = 60.0  # per request: a 1k-token generation behind a static queue
REPLAY_TAIL_S = 25.0  # expected replay time past the trace's end (queues drain; <= timeout)


def deploy_args(plan_path: Path, mode: str, args: argparse.Namespace) -> DeployArgs:
    return DeployArgs(plan=plan_path, run_dir=Path(args.work) / f"run-{mode}", port=args.port,
                      enforce_eager=args.enforce_eager, kv_pool=mode == "pooled",
                      policy="fcfs", engine_python=args.engine_python,
                      startup_timeout_s=args.startup_timeout,
                      max_model_len=args.shape.max_model_len, max_queue=MAX_QUEUE)


def fixed_s(args: argparse.Namespace) -> float:
    """Seconds a mode needs besides start-up and the trace: warm-up, saturation (each phase
    plus its drain), stop. Measured on the H100 (2026-11-26, both runs): a phase and its drain
    6.0-6.5 s, warm-up and stop 1-2 s each."""
    return 5 + 3 * (args.phase_s + 1) + 5


def pick_duration(args: argparse.Namespace, elapsed_s: float, startup_s: float) -> float:
    """Longest trace (<= the shape's duration, >= 15 s) that lets both modes finish in
    --budget-s, the second mode's start-up estimated from the first's."""
    left = (args.budget_s - elapsed_s - (startup_s + 5) - 2 * fixed_s(args)
            - 2 * REPLAY_TAIL_S)
    return float(min(args.shape.duration_s, max(15.0, left / 2)))


def dry_run(setup: Setup, plans: dict[str, Path], args: argparse.Namespace) -> dict:
    """Plans, split choice, the prepared engine commands (CPU mode: no NVML, MPS or GPU), the
    pool and the simulator's prediction."""
    from fineserve.planner.planfile import load_plan
    from fineserve.runtime.options import DeployOptions
    from fineserve.runtime.prepare import prepare
    from fineserve.runtime.state import Mode

    res = {"trace": args.trace, "shape": asdict(args.shape), "split": setup.split_name,
           "static_kv": setup.static_kv, "floors": setup.floors,
           "scores": setup.split_scores, "requests": len(setup.trace), "modes": {}}
    say(f"static split: {setup.split_name} {gib(setup.static_kv)} (scores "
        f"{ {k: round(v, 3) for k, v in setup.split_scores.items()} }); floors "
        f"{gib(setup.floors)}; trace {args.trace} {len(setup.trace)} requests")
    res["simulated"] = {f"x{s}": simulated(setup, s) for s in args.sim_latency_scale}
    for k, v in res["simulated"].items():
        say(f"fineserve simulate, steps {k}: {v}")
    for mode, path in plans.items():
        d = deploy_args(path, mode, args)
        say(f"{mode}: {' '.join(d.argv())}")
        opts = DeployOptions(run_dir=Path(args.work) / f"run-dry-{mode}", mode=Mode.CPU,
                             port=args.port, engine_port_base=args.port + 1, dummy_weights=True,
                             enforce_eager=args.enforce_eager,
                             max_model_len=args.shape.max_model_len, kv_pool=mode == "pooled")
        plan = load_plan(path)
        prep = prepare(plan, opts)
        res["modes"][mode] = {"argv": d.argv(), "notes": list(prep.notes), "engines": {
            x.engine_id: " ".join(x.argv[1:]) for x in prep.launches}}
        if mode == "pooled":  # what the GPU deployment will size (CPU mode keeps static KV)
            res["pool"] = pool_plan(plan, setup.gpu_bytes)
            say(f"  pool: {res['pool']}")
            res["policy_replay"] = policy_replay(setup, res["pool"], args.phase_s)
            say(f"  saturation through the policy (no lag): {res['policy_replay']}")
        for x in prep.launches:
            say(f"  {x.engine_id}: {' '.join(x.argv[3:])}")
    return res


def run_mode(mode: str, plan_path: Path, setup: Setup, args: argparse.Namespace,
             t_start: float, state: dict) -> dict:
    from fineserve.metrics.summary import summarize
    from fineserve.replay.client import ReplayConfig, replay
    from fineserve.runtime.kvslab.deploy_pool import ledger_path

    say(f"=== {mode}: deploying ===")
    dargs = deploy_args(plan_path, mode, args)
    dep = DeployProcess(dargs, mode)
    res: dict = {"kv_bytes": sum(setup.static_kv.values()) if mode == "static"
                 else setup.kv_total}
    try:
        res["startup_s"] = dep.wait_serving(args.startup_timeout + 60)
        res["loaded"] = dep.loaded_weights()
        if "duration_s" not in state:  # the first mode fixes how much both modes replay
            state["duration_s"] = pick_duration(args, time.monotonic() - t_start,
                                                res["startup_s"])
        trace = setup.trace  # the same trace in both modes; a prefix if the budget is short
        urls = dep.engine_urls()
        warm_up(dep.url, [e.name for e in setup.engines])
        ledger = ledger_path(dargs.run_dir, 0) if mode == "pooled" else None
        sampler = Sampler(urls, ledger)
        try:
            saturate(setup, urls, sampler, args.phase_s, args.seed)
            sampler.label = "trace"
            say(f"{mode}: replaying {len(trace)} requests over {state['duration_s']:.0f} s")
            records, wall = replay(trace, ReplayConfig(dep.url, duration_s=state["duration_s"],
                                                       timeout_s=REPLAY_TIMEOUT_S))
            res["replay_wall_s"] = wall
            drain(urls, 10.0)
        finally:
            rows = sampler.stop()
        res["saturation"] = saturation_summary(rows, setup, mode == "pooled")
        res["samples"] = compact_rows(rows, rows[0]["t"]) if rows else []
        summary = summarize(records, {e.name: e.slo for e in setup.engines}, wall, "replay")
        lost = len(records) - sum(1 for r in records if r.ok and r.tokens_received
                                  >= r.output_tokens)
        res["trace"] = {"overall": summary["overall"], "per_model": summary["per_model"],
                        "lost": lost, "sent": len(records)}
        if mode == "pooled":
            last = next((r for r in reversed(rows) if "ledger" in r), None)
            res["pool_bytes"] = last.get("pool_bytes") if last else None
        say(f"{mode}: SLO attainment {summary['overall'].get('slo_attainment', 0):.3f}, "
            f"lost {lost}, saturation {res['saturation'].get('running_sum', 0):.0f} running, "
            f"KV share {res['saturation'].get('kv_share', 0):.3f}")
    except (RuntimeError, OSError) as exc:
        say(f"{mode}: FAILED: {exc}")
        res["error"] = str(exc)[:500]
    finally:
        dep.stop()
        res["logs"] = scan_logs(dargs.run_dir)
        res["memory_errors"] = sum(v["errors"] for v in res["logs"].values())
    return res


def gpu_memory_bytes() -> int:
    """GPU 0's memory as NVML reports it (what ``fineserve deploy`` sizes the pool from)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total)
    finally:
        pynvml.nvmlShutdown()


def run_all(args: argparse.Namespace, device: str) -> int:
    import os

    t_start = time.monotonic()
    if RUNNER_ENV[args.runner] is not None:  # inherited by every engine of both modes
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = RUNNER_ENV[args.runner]
    setup = make_setup(args.shape, args.seed, gpu_memory_bytes())
    plans = write_plans(setup, Path(args.work))
    shape = args.shape
    res: dict = {"device": device, "config": {
        "runner": args.runner, "trace": args.trace, "shape": asdict(shape),
        "kv_gib": shape.kv_gib, "split": setup.split_name,
        "static_kv_gib": gib(setup.static_kv), "floors_gib": gib(setup.floors),
        "split_scores": {k: round(float(x), 3) for k, x in setup.split_scores.items()},
        "cv": shape.cv, "hot_factor": shape.hot_factor, "cold_frac": shape.cold_frac,
        "prompt_mean": shape.prompt_mean, "output_mean": shape.output_mean,
        "phase_s": args.phase_s, "enforce_eager": args.enforce_eager,
        "max_model_len": shape.max_model_len, "budget_s": args.budget_s,
        "gpu_bytes": setup.gpu_bytes, "kv_bytes": setup.kv_total}, "modes": {}}
    state: dict = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a step limit: stop the engines
    for mode in args.modes.split(","):
        res["modes"][mode] = run_mode(mode, plans[mode], setup, args, t_start, state)
        if "duration_s" in state:
            res["config"]["duration_s"] = state["duration_s"]
            res["config"]["requests"] = int((setup.trace.arrival_s
                                             < state["duration_s"]).sum())
        res["verdict"] = verdict(res["modes"])
        res["wall_s"] = time.monotonic() - t_start
        write_results(res, args.out)  # after each mode: a killed run keeps what it measured
    print(markdown(res), flush=True)
    return 0 if res["verdict"].get("ok") else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="--enforce-eager, shorter phases")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--trace", choices=sorted(PRESETS), default="kv-bound",
                    help="trace preset (kvslab_accept_trace.py); the flags below override it")
    ap.add_argument("--kv-gib", type=float, help="KV memory of the three engines")
    ap.add_argument("--max-model-len", type=int)
    ap.add_argument("--duration", type=float,
                    help="trace seconds (replayed shorter only if start-up eats the budget)")
    ap.add_argument("--prompt-mean", type=int)
    ap.add_argument("--output-mean", type=int)
    ap.add_argument("--hot-factor", type=float)
    ap.add_argument("--cold-frac", type=float)
    ap.add_argument("--tpot-guess", type=float)
    ap.add_argument("--cv", type=float)
    ap.add_argument("--phase-s", type=float, default=8.0,
                    help="saturation phase length (8 s: the fp8 engine, prefill-bound at 30 %% "
                         "of the SMs, admits 8 flood prompts per ~0.55 s step and took ~5 s of "
                         "s5's 6 s phase to fill the pool, so its hold window began unfilled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall for both modes")
    ap.add_argument("--runner", choices=sorted(RUNNER_ENV), default="default",
                    help="vLLM model runner of every engine in both modes")
    ap.add_argument("--modes", default="static,pooled")
    ap.add_argument("--engine-python", default="")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--work", default="/tmp/fineserve-bench-kvslab-accept")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fs-accept"))
    ap.add_argument("--dry-run", action="store_true",
                    help="print plans, commands and predictions, no GPU")
    ap.add_argument("--sim-latency-scale", default="1.3,1.7",
                    type=lambda s: [float(x) for x in s.split(",")],
                    help="--dry-run: step latencies x these in the simulator's prediction "
                         "(1.3-1.7: the 2026-11-26 H100 run's TPOT against the profiles)")
    args = ap.parse_args(argv)
    try:
        args.shape = shape_from(args.trace, kv_gib=args.kv_gib, max_model_len=args.max_model_len,
                                duration_s=args.duration, prompt_mean=args.prompt_mean,
                                output_mean=args.output_mean, hot_factor=args.hot_factor,
                                cold_frac=args.cold_frac, tpot_guess=args.tpot_guess,
                                cv=args.cv)
    except ValueError as exc:
        ap.error(str(exc))
    if args.quick:
        args.enforce_eager = True
        args.phase_s = min(args.phase_s, 5.0)
        args.shape = replace(args.shape, duration_s=min(args.shape.duration_s, 24.0))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        setup = make_setup(args.shape, args.seed, gpu_spec(GPU).memory_bytes)
        res = dry_run(setup, write_plans(setup, Path(args.work)), args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kvslab_accept-dry.json").write_text(json.dumps(res, indent=1))
        return 0
    return run_all(args, device_name())


if __name__ == "__main__":
    sys.exit(main())
