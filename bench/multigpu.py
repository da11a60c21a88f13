"""Multi-GPU acceptance (issue 8): an ILP plan over 2 GPUs with a TP=2 engine sharing both GPUs
with three TP=1 engines under MPS, deployed, driven with a bursty trace, against the simulator.

Spec (planned by the ILP, `fineserve.planner.api.make_plan`; dummy weights, static KV):
  coder-32b       Qwen3-32B     bf16 / bf16 KV   TP=2 forced (tp: [2])
  chat-8b         Llama-3.1-8B  bf16 / bf16 KV   TP=1
  chat-8b-fp8     Llama-3.1-8B  fp8  / fp8 KV    TP=1
  assist-8b-int4  Llama-3.1-8B  GPTQ int4 / bf16 TP=1
The ILP picks GPUs, SM shares, batch caps and KV sizes. `fineserve deploy` starts one MPS
daemon per GPU group (here one daemon for GPUs 0-1, since the TP engine links them; see
docs/multigpu.md), one vLLM server per engine (CUDA graphs unless --quick) and the gateway;
the trace (Gamma arrivals, cv 2) is replayed open-loop through the gateway; the same plan and
trace are simulated (adaptive local scheduler, as the gateway runs); measured and predicted
per-model SLO attainment and throughput are written to OUT/multigpu.{json,md} with the plan
(OUT/plan.yaml).

    python bench/multigpu.py --dry-run             # no GPU: plan, trace, engine commands/env
    python bench/multigpu.py --out /tmp/fs-mg      # 2-GPU host: ~5-7 min (CUDA graphs, 60 s)
    python bench/multigpu.py --quick --out DIR     # ~3-4 min: --enforce-eager, 30 s of trace

On the GPU host: `. /tmp/site/env.sh` first (vLLM 0.26.0 bundle). SIGTERM/SIGINT (e.g. from
`timeout`) stop the deployment before exiting: nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.deploy_h100 import deploy, make_trace  # noqa: E402
from bench.e2e.deployment import DeployProcess, device_name, replay_served, say  # noqa: E402
from fineserve.metrics.summary import summarize  # noqa: E402
from fineserve.metrics.versus import FigurePair, pair_summaries  # noqa: E402
from fineserve.planner.api import make_plan  # noqa: E402
from fineserve.planner.planfile import save_plan  # noqa: E402
from fineserve.planner.schema import Plan  # noqa: E402
from fineserve.planner.spec import parse_spec  # noqa: E402
from fineserve.profiles.composite import default_latency_model  # noqa: E402
from fineserve.replay.client import ReplayConfig  # noqa: E402
from fineserve.workload.trace import Trace  # noqa: E402

# name, catalog model, weights, kv, rate (req/s), TTFT ms, TPOT ms, allowed TP degrees
MODELS = (
    ("coder-32b", "qwen3-32b", "bf16", "bf16", 3.0, 2000, 100, [2]),
    ("chat-8b", "llama-3.1-8b", "bf16", "bf16", 6.0, 1000, 80, [1]),
    ("chat-8b-fp8", "llama-3.1-8b", "fp8", "fp8", 6.0, 1000, 80, [1]),
    ("assist-8b-int4", "llama-3.1-8b", "int4-gptq", "bf16", 4.0, 1500, 100, [1]),
)
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
            "VLLM_ALLREDUCE_USE_SYMM_MEM", "CUDA_DEVICE_MAX_CONNECTIONS")
TP_LOG_KEYS = ("NCCL", "nccl", "all_reduce", "all-reduce", "allreduce", "P2P", "world_size")
ENV_PREFIXES = ("NCCL_", "TORCH_SYMM_MEM", "NVSHMEM_", "CUDA_DEVICE_MAX", "CUDA_MPS_",
                "CUDA_VISIBLE", "VLLM_")


def spec_data(gpu: str, rate_scale: float, time_limit_s: float) -> dict:
    """The planning spec (the YAML `fineserve plan` reads), 2 GPUs of one node."""
    return {
        "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": 2},
        "workload": {"prompt_tokens": 512, "output_tokens": 128},
        "models": [{"name": n, "model": ref, "weights": w, "kv": kv, "rate": rate * rate_scale,
                    "slo": {"ttft_ms": ttft, "tpot_ms": tpot}, "tp": tp}
                   for n, ref, w, kv, rate, ttft, tpot, tp in MODELS],
        # static KV: the KV Slab plugin refuses TP > 1 engines (docs/multigpu.md); at most 3
        # engines a GPU keeps start-up inside the time budget (an H200 plan would replicate)
        "planner": {"kv_mode": "static", "objective": "lexicographic",
                    "time_limit_s": time_limit_s, "max_engines_per_gpu": 3},
    }


def make_multigpu_plan(gpu: str, rate_scale: float, time_limit_s: float) -> Plan:
    """ILP plan of the spec; refuses one without a TP=2 engine or with unplaced traffic."""
    inst = parse_spec(spec_data(gpu, rate_scale, time_limit_s), "bench/multigpu.py")
    plan = make_plan(inst, default_latency_model())
    if not any(e.tp == 2 for e in plan.engines):
        raise SystemExit("plan has no TP=2 engine: " + ", ".join(e.engine_id
                                                                for e in plan.engines))
    if plan.unplaced:
        say("WARNING: unplaced traffic: " + "; ".join(f"{u.model} {u.rate_rps:.2f} req/s "
                                                      f"({u.reason})" for u in plan.unplaced))
    return plan


def _sh(argv: list[str], timeout_s: float = 30.0) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not found)"
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                             check=False)
        return (res.stdout + res.stderr).strip()
    except subprocess.TimeoutExpired:
        return f"({' '.join(argv)} timed out)"


def preflight() -> dict:
    """GPUs, link topology, compute modes, NCCL/MPS-related environment (printed and kept).

    The torch/NCCL versions come from a child process, so this process never opens a CUDA
    context (under EXCLUSIVE_PROCESS it would lock the MPS server out)."""
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    info = {
        "gpus": _sh(["nvidia-smi", "--query-gpu=index,name,uuid,memory.total,compute_mode,"
                     "driver_version", "--format=csv,noheader"]),
        "topology": _sh(["nvidia-smi", "topo", "-m"]),
        "nvlink": _sh(["nvidia-smi", "nvlink", "--status", "-i", "0"]),
        "versions": _sh([sys.executable, "-c",
                         "import importlib.metadata as md, torch; print('torch', "
                         "torch.__version__, 'cuda', torch.version.cuda, 'nccl', "
                         "torch.cuda.nccl.version(), 'vllm', md.version('vllm'))"], 60),
        "env": env,
    }
    say("preflight: GPUs\n" + info["gpus"])
    say("preflight: topology\n" + info["topology"])
    say("preflight: NVLink (GPU 0)\n" + "\n".join(info["nvlink"].splitlines()[:8]))
    say("preflight: versions " + info["versions"])
    say("preflight: environment " + (json.dumps(env) if env else "(no NCCL/MPS variables)"))
    if env.get("NCCL_NVLS_ENABLE", "0") != "0":
        say("preflight: NCCL_NVLS_ENABLE is on in this shell; every engine gets 0 anyway")
    return info


def host_gpu(name: str) -> str:
    """The GPU type to plan for from the NVML name (H200 or H100)."""
    return "H200-SXM-141GB" if "H200" in name else "H100-SXM-80GB"


def dry_run(plan: Plan, args: argparse.Namespace) -> None:
    """Every engine's command and environment under MPS, on the plan's GPUs (no host)."""
    from fineserve.runtime.options import DeployOptions
    from fineserve.runtime.prepare import prepare
    from fineserve.runtime.state import Mode

    opts = DeployOptions(run_dir=Path(args.work) / "run-dry", mode=Mode.MPS, port=args.port,
                         engine_port_base=args.port + 1, dummy_weights=True,
                         enforce_eager=args.enforce_eager, max_model_len=4096)
    prep = prepare(plan, opts, dry_run=True)
    for g in prep.mps_groups:
        say(f"MPS daemon {g.name}: GPUs {list(g.gpus)}, pipe {g.pipe_dir}")
    for n in prep.notes:
        say(f"note: {n}")
    for x in prep.launches:
        env = dict(x.env)
        say(f"{x.engine_id} (GPUs {list(x.gpus)}, MPS group {prep.mps_group_of[x.engine_id]}):"
            f"\n  {' '.join(x.argv[1:])}\n  "
            + " ".join(f"{k}={env[k]}" for k in ENV_KEYS if k in env))


def simulated(plan: Plan, trace: Trace):
    """The simulator's run of the plan and trace, with the gateway's adaptive scheduler."""
    from fineserve.scheduler import SchedulerConfig
    from fineserve.sim.cluster import SimOptions, simulate

    return simulate(plan, trace, default_latency_model(),
                    options=SimOptions(scheduler=SchedulerConfig(policy="adaptive")))


def predict(plan: Plan, result, duration_s: float) -> dict:
    """The simulated summary over ``duration_s``: a measurement's own wall time when set
    beside it, so rates divide by the same seconds on both sides."""
    return summarize(result.records, {m.name: m.slo for m in plan.models}, duration_s,
                     "simulate")


def serving_evidence(dep: DeployProcess) -> dict:
    """What runs while serving: MPS daemons (state file), GPU processes (nvidia-smi) and the
    TP engines' collective set-up lines (NCCL, all-reduce) from their logs."""
    try:
        state = json.loads((dep.args.run_dir / "state.json").read_text())
    except (OSError, ValueError) as exc:  # evidence only: never fails the measurement
        return {"mps": [], "error": f"state.json: {exc}"}
    tp_logs = {}
    for e in state.get("engines", []):
        if len(e["gpus"]) > 1:
            try:
                text = Path(e["log"]).read_text(errors="replace").splitlines()
            except OSError as exc:
                text = [f"(log unreadable: {exc})"]
            tp_logs[e["engine_id"]] = [ln[:300] for ln in text if any(
                k in ln for k in TP_LOG_KEYS)][:30]
    return {"mps": state.get("mps", []),
            "engines": {e["engine_id"]: {"gpus": e["gpus"], "sm_pct": e["sm_pct"],
                                         "mps_group": e["mps_group"]}
                        for e in state.get("engines", [])},
            "gpu_processes": _sh(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,"
                                  "process_name,used_memory", "--format=csv,noheader"]),
            "tp_engine_log": tp_logs}


def measure(plan: Plan, plan_path: Path, trace: Trace, mode: str,
            args: argparse.Namespace) -> dict:
    """Deploy, warm up, replay, stop (always); the replay summary plus start-up evidence."""
    say(f"=== {mode}: deploying ===")
    dep = deploy(plan_path, mode, args)
    try:
        startup = dep.wait_serving(args.startup_timeout + 30)
        evidence = serving_evidence(dep)
        say(f"{mode}: serving after {startup:.0f} s; MPS daemons "
            f"{[m['group'] for m in evidence['mps']]}; warming up")
        summary = replay_served(dep, plan, trace, ReplayConfig(
            dep.url, duration_s=args.duration, timeout_s=args.request_timeout))
        summary.update(startup_s=startup, evidence=evidence, loaded=dep.loaded_weights())
        return summary
    finally:
        dep.stop()
        left = _sh(["pgrep", "-f", str(dep.args.run_dir)])
        if left and not left.startswith("("):
            say(f"WARNING: processes still name {dep.args.run_dir}: {left}")


def _num(v: float | None, fmt: str = ".3f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def _row(model: str, meas: dict, pred: dict) -> str:
    """measured / predicted of one model's (or all models') figures."""
    def both(key: str, fmt: str, sub: str | None = None, scale: float = 1.0) -> str:
        m, p = meas.get(key), pred.get(key)
        if sub is not None:
            m = m.get(sub) if isinstance(m, dict) else None
            p = p.get(sub) if isinstance(p, dict) else None
        return f"{_num(m, fmt, scale)} / {_num(p, fmt, scale)}"

    return (f"| {model} | {meas.get('requests', 0)} | {both('slo_attainment', '.3f')} | "
            f"{both('throughput_rps', '.2f')} | {both('output_tokens_per_s', '.0f')} | "
            f"{both('ttft_s', '.0f', 'p99', 1e3)} | {both('tpot_s', '.0f', 'p99', 1e3)} | "
            f"{meas.get('rejected_429', 0)} | {meas.get('errors', 0)} |")


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# Two GPUs, one TP=2 engine sharing both under MPS (`bench/multigpu.py`)", "",
        f"Device: {results['device']} x 2. Plan: ILP, {cfg['kv_mode']} KV; trace: Gamma cv "
        f"{cfg['cv']}, {cfg['duration_s']:.0f} s, seed {cfg['seed']}; CUDA graphs "
        f"{'off' if cfg['enforce_eager'] else 'on'}; dummy weights.", "",
        "| engine | model | GPUs | SM % | batch | KV GiB/rank | rate req/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for e in results["plan"]["engines"]:
        lines.append(f"| {e['engine_id']} | {e['model']} | {e['gpus']} | {e['sm_pct']} | "
                     f"{e['max_batch']} | {e['kv_gib']:.1f} | {e['rate_rps']:.2f} |")
    pred = results["predicted"]
    for mode, m in results["modes"].items():
        lines += ["", f"## {mode}: measured / predicted", ""]
        if "error" in m:
            lines.append(f"Failed: {m['error']}")
            continue
        lines += [f"Start-up (deploy to serving): {m['startup_s']:.0f} s; MPS daemons: "
                  f"{', '.join(d['group'] for d in m['evidence']['mps']) or 'none'}.", "",
                  "| model | requests | SLO met | req/s | out tok/s | TTFT p99 ms "
                  "| TPOT p99 ms | 429 | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for model, g in m["per_model"].items():
            lines.append(_row(model, g, m.get("predicted", pred)["per_model"].get(model, {})))
        lines.append(_row("**all**", m["overall"], m.get("predicted", pred)["overall"]))
    return "\n".join(lines) + "\n"


def _on_term(signum, _frame) -> None:
    """Unwind through measure()'s finally (the deployment is stopped); a second signal must
    not interrupt that clean-up."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="trace seconds")
    ap.add_argument("--quick", action="store_true", help="--enforce-eager and 30 s of trace")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (fast start)")
    ap.add_argument("--modes", default="mps", help="mps, no-mps or both (each deploys anew)")
    ap.add_argument("--gpu", default="", help="plan for this GPU type (default: the host's)")
    ap.add_argument("--cv", type=float, default=2.0, help="arrival burstiness (cv > 1)")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="multiply every rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plan-time-limit", type=float, default=20.0, help="ILP seconds")
    ap.add_argument("--engine-python", default="")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--work", default="/tmp/fineserve-bench-multigpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/multigpu")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: plan, trace, simulate, print every engine's command and env")
    args = ap.parse_args()
    if args.quick:
        args.enforce_eager, args.duration = True, min(args.duration, 30.0)
    return args


def main() -> None:
    args = parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    info = preflight()
    device = "(dry run)" if args.dry_run else device_name()
    gpu = args.gpu or ("H100-SXM-80GB" if args.dry_run else host_gpu(device))
    t0 = time.monotonic()
    plan = make_multigpu_plan(gpu, args.rate_scale, args.plan_time_limit)
    plan_path = Path(args.work) / "plan.yaml"
    save_plan(plan, plan_path)
    trace = make_trace(plan, args.duration, args.cv, args.seed)
    say(f"plan on {gpu} in {time.monotonic() - t0:.0f} s: " + ", ".join(
        f"{e.engine_id} GPUs {list(e.gpus)} SM {e.sm_pct}%" for e in plan.engines)
        + f"; trace: {len(trace)} requests")
    sim = simulated(plan, trace)
    predicted = predict(plan, sim, max(sim.duration_s, trace.duration_s))
    say("predicted SLO attainment: " + ", ".join(
        f"{m} {g.get('slo_attainment', 0):.3f}" for m, g in predicted["per_model"].items()))
    if args.dry_run:
        dry_run(plan, args)
        return
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    results = {"config": {"duration_s": args.duration, "cv": args.cv, "seed": args.seed,
                          "enforce_eager": args.enforce_eager, "rate_scale": args.rate_scale,
                          "kv_mode": plan.kv_mode.value, "gpu": gpu},
               "device": device, "preflight": info, "predicted": predicted, "modes": {},
               "plan": {"engines": [{"engine_id": e.engine_id, "model": e.model,
                                     "gpus": list(e.gpus), "sm_pct": e.sm_pct,
                                     "max_batch": e.max_batch, "kv_gib": e.kv_bytes / 2**30,
                                     "rate_rps": e.rate_rps} for e in plan.engines]}}
    for mode in args.modes.split(","):
        try:
            m = measure(plan, plan_path, trace, mode, args)
            same_window = predict(plan, sim, m.get("duration_s") or predicted["duration_s"])
            m["predicted"] = same_window
            m["versus"] = [_pair(p) for p in pair_summaries(m, same_window)]
            results["modes"][mode] = m
        except (RuntimeError, OSError) as exc:
            say(f"{mode}: FAILED: {exc}")
            results["modes"][mode] = {"error": str(exc)[:800]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multigpu.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "multigpu.md").write_text(markdown(results))
    shutil.copy(plan_path, args.out / "plan.yaml")
    say(f"wrote {args.out}/multigpu.json, multigpu.md, plan.yaml")
    print(markdown(results), flush=True)
    if any("error" in m for m in results["modes"].values()):
        sys.exit(1)


def _pair(p: FigurePair) -> dict:
    return {"model": p.model, "figure": p.figure, "measured": p.measured,
            "predicted": p.predicted, "error": p.error}


if __name__ == "__main__":
    main()
