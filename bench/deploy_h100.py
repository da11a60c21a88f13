"""GPU acceptance for the runtime (issue 4): three co-located engines of different precision on
one H100 under MPS, against the same trace on time-sliced sharing (--no-mps).

Engines (dummy weights; configs from the catalog and a word-level tokenizer sized to each
vocabulary, written by `--dummy-weights`, so nothing is downloaded):
  chat-8b         Llama-3.1-8B  bf16 weights, bf16 KV   SM 40 %
  chat-8b-fp8     Llama-3.1-8B  fp8 weights,  fp8 KV    SM 30 %
  assist-7b-int4  Mistral-7B    GPTQ int4,    bf16 KV   SM 30 %
The trace is bursty (Gamma arrivals, cv > 1), lengths around 512 prompt / 128 output tokens,
replayed open-loop through the gateway with the streaming replay client. For each mode the
script deploys (`fineserve deploy`), warms every model up, replays, stops, and records
per-model SLO attainment, TTFT/TPOT percentiles and throughput into
bench/results/deploy_h100.json and .md.

    python bench/deploy_h100.py                 # ~6-7 min: CUDA graphs, 60 s of trace per mode
    python bench/deploy_h100.py --quick         # ~3 min: --enforce-eager, 20 s per mode
    python bench/deploy_h100.py --plan plan.yaml --modes mps   # a planner-made plan instead

On the GPU host: `. /tmp/site/env.sh` first (vLLM 0.26.0 bundle); the engines run with this
Python unless --engine-python says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e.deployment import (  # noqa: E402
    DeployArgs,
    DeployProcess,
    device_name,
    replay_served,
    say,
)
from fineserve.planner.planfile import load_plan, save_plan  # noqa: E402
from fineserve.planner.schema import (  # noqa: E402
    EnginePlacement,
    KVMode,
    LengthStats,
    ModelDemand,
    Plan,
    PlannerSettings,
    Slo,
    hand_plan,
)
from fineserve.profiles.catalog import model_spec  # noqa: E402
from fineserve.profiles.gpus import gpu_spec  # noqa: E402
from fineserve.replay.client import ReplayConfig  # noqa: E402
from fineserve.workload.arrivals import Gamma  # noqa: E402
from fineserve.workload.lengths import around_means  # noqa: E402
from fineserve.workload.trace import ModelLoad, Trace, generate  # noqa: E402

GIB = 2**30
PROMPT_MEAN, OUTPUT_MEAN = 512, 128
# name, catalog model, weights, kv, SM %, KV GiB, rate (req/s), TTFT SLO s, TPOT SLO s
ENGINES = (
    ("chat-8b", "llama-3.1-8b", "bf16", "bf16", 40, 10, 3.0, 1.0, 0.10),
    ("chat-8b-fp8", "llama-3.1-8b", "fp8", "fp8", 30, 6, 3.0, 1.0, 0.10),
    ("assist-7b-int4", "mistral-7b", "int4-gptq", "bf16", 30, 6, 2.0, 1.5, 0.12),
)


def fixed_plan(rate_scale: float) -> Plan:
    """One H100, three engines with a fixed SM split (sums to 100 %)."""
    models, engines = [], []
    for name, ref, w, kv, sm, kv_gib, rate, ttft, tpot in ENGINES:
        spec = model_spec(ref, w, kv)
        models.append(ModelDemand(name, ref, spec, rate * rate_scale, Slo(ttft, tpot),
                                  LengthStats(PROMPT_MEAN, OUTPUT_MEAN), (1,)))
        engines.append(EnginePlacement(f"{name}-0", name, "node0", (0,), sm, 64,
                                       spec.weight_bytes(1), 3 * GIB, kv_gib * GIB,
                                       2 * rate * rate_scale, rate * rate_scale,
                                       estimated=True))
    # static KV, as in the measured H100 run: this bench compares MPS with time slicing
    # (issue 4); a pooled plan would start the KV Slab plugin, which has not run in vLLM yet
    return hand_plan(models, engines, gpu_spec("H100-SXM-80GB"), nodes=("node0",),
                     settings=PlannerSettings(kv_mode=KVMode.STATIC), method="fixed-split",
                     note="bench/deploy_h100.py")


def make_trace(plan: Plan, duration_s: float, cv: float, seed: int) -> Trace:
    loads = [ModelLoad(m.name, Gamma(m.rate_rps, cv),
                       around_means(m.lengths.prompt_mean, m.lengths.output_mean))
             for m in plan.models if plan.engines_of(m.name)]
    trace = generate(loads, duration_s, seed)
    # keep every request inside the engines' context (prompt + output <= 4096)
    df = trace.to_frame()
    df["prompt_tokens"] = df.prompt_tokens.clip(1, 3072)
    df["output_tokens"] = df.output_tokens.clip(1, 1024)
    return Trace.from_frame(df)


def deploy(plan_path: Path, mode: str, args: argparse.Namespace) -> DeployProcess:
    """`fineserve deploy` of the plan in ``mode`` (mps or no-mps) as a child process."""
    return DeployProcess(DeployArgs(
        plan=plan_path, run_dir=Path(args.work) / f"run-{mode}", port=args.port,
        no_mps=mode == "no-mps", enforce_eager=args.enforce_eager,
        engine_python=args.engine_python, startup_timeout_s=args.startup_timeout), mode)


def run_mode(plan: Plan, plan_path: Path, trace: Trace, mode: str,
             args: argparse.Namespace) -> dict:
    say(f"=== {mode}: deploying ===")
    dep = deploy(plan_path, mode, args)
    try:
        startup = dep.wait_serving(args.startup_timeout + 60)
        loaded = dep.loaded_weights()
        say(f"{mode}: serving after {startup:.0f} s; warming up")
        done = {"n": 0}

        def progress(sent: int, finished: int) -> None:
            if finished - done["n"] >= 100:
                done["n"] = finished
                say(f"{mode}: sent {sent}, finished {finished}")
        summary = replay_served(dep, plan, trace, ReplayConfig(
            dep.url, duration_s=args.duration, timeout_s=180), progress)
        summary["startup_s"] = startup
        summary["loaded"] = loaded
        return summary
    finally:
        dep.stop()


def _fmt(v: float | None, scale: float = 1e3) -> str:
    return "-" if v is None else f"{v * scale:.0f}"


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# Runtime on one H100: MPS vs time-sliced (`bench/deploy_h100.py`)", "",
        f"Device: {results.get('device', '?')}. Trace: Gamma arrivals cv {cfg['cv']}, "
        f"{cfg['duration_s']:.0f} s, seed {cfg['seed']}, lengths around {PROMPT_MEAN}/"
        f"{OUTPUT_MEAN} tokens; CUDA graphs {'off' if cfg['enforce_eager'] else 'on'}; "
        "dummy weights.", "",
        "| mode | model | requests | SLO att. | TTFT p50 / p99 ms | TPOT p50 / p99 ms "
        "| req/s | out tok/s | 429 | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, s in results["modes"].items():
        if "error" in s:
            lines.append(f"| {mode} | (failed: {s['error']}) | | | | | | | | |")
            continue
        for model, g in s["per_model"].items():
            lines.append(
                f"| {mode} | {model} | {g['requests']} | {g.get('slo_attainment', 0):.3f} | "
                f"{_fmt(g['ttft_s']['p50'])} / {_fmt(g['ttft_s']['p99'])} | "
                f"{_fmt(g['tpot_s']['p50'])} / {_fmt(g['tpot_s']['p99'])} | "
                f"{g['throughput_rps']:.2f} | {g['output_tokens_per_s']:.0f} | "
                f"{g['rejected_429']} | {g['errors']} |")
        o = s["overall"]
        lines.append(f"| {mode} | **all** | {o['requests']} | "
                     f"{o.get('slo_attainment', 0):.3f} | | | {o['throughput_rps']:.2f} | "
                     f"{o['output_tokens_per_s']:.0f} | {o['rejected_429']} | "
                     f"{o['errors']} |")
    lines += ["", "Engine start-up (deploy to serving): " + ", ".join(
        f"{m} {s['startup_s']:.0f} s" for m, s in results["modes"].items() if "startup_s" in s),
        ""]
    return "\n".join(lines)


def dry_run(plan: Plan, args: argparse.Namespace) -> None:
    """Resolve folders and command lines without a GPU (CPU mode skips NVML/MPS checks)."""
    from fineserve.runtime.options import DeployOptions
    from fineserve.runtime.prepare import prepare
    from fineserve.runtime.state import Mode

    opts = DeployOptions(run_dir=Path(args.work) / "run-dry", mode=Mode.CPU, port=args.port,
                         engine_port_base=args.port + 1, dummy_weights=True,
                         enforce_eager=args.enforce_eager, max_model_len=4096)
    for x in prepare(plan, opts).launches:
        say(f"{x.engine_id}: {' '.join(x.argv[1:])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="trace seconds per mode")
    ap.add_argument("--quick", action="store_true", help="--enforce-eager and 20 s per mode")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (fast start)")
    ap.add_argument("--modes", default="mps,no-mps")
    ap.add_argument("--cv", type=float, default=3.0, help="arrival burstiness (cv > 1)")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="multiply every rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plan", type=Path, help="use this plan instead of the fixed split")
    ap.add_argument("--engine-python", default="")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--startup-timeout", type=float, default=400.0)
    ap.add_argument("--work", default="/tmp/fineserve-bench-deploy")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/deploy_h100")
    ap.add_argument("--dry-run", action="store_true",
                    help="write the plan and trace, check the plan with `prepare` in CPU mode")
    args = ap.parse_args()
    if args.quick:
        args.enforce_eager, args.duration = True, min(args.duration, 20.0)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    plan = load_plan(args.plan) if args.plan else fixed_plan(args.rate_scale)
    plan_path = Path(args.work) / "plan.yaml"
    save_plan(plan, plan_path)
    trace = make_trace(plan, args.duration, args.cv, args.seed)
    say(f"plan: {', '.join(f'{e.engine_id} SM {e.sm_pct}%' for e in plan.engines)}; "
        f"trace: {len(trace)} requests")
    if args.dry_run:
        dry_run(plan, args)
        return
    results = {"config": {"duration_s": args.duration, "cv": args.cv, "seed": args.seed,
                          "enforce_eager": args.enforce_eager, "rate_scale": args.rate_scale,
                          "engines": [e.engine_id for e in plan.engines],
                          "sm_pct": {e.engine_id: e.sm_pct for e in plan.engines}},
               "device": device_name(), "modes": {}}
    for mode in args.modes.split(","):
        try:
            results["modes"][mode] = run_mode(plan, plan_path, trace, mode, args)
        except (RuntimeError, OSError) as exc:
            say(f"{mode}: FAILED: {exc}")
            results["modes"][mode] = {"error": str(exc)[:500]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    say(f"wrote {args.out.with_suffix('.json')} and .md")
    print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
