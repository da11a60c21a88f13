"""(d): the simulator's prediction of each (configuration, rate): the plan that was deployed,
the trace that was replayed, and the simulator's models set as deployed - local scheduler
policy, static or pooled KV, MPS bandwidth interference (the H100 fit) or time slicing.

    python -m bench.e2e.predict --out bench/e2e/results [--configs a,b,c] [--force]
        [--decode-scale X] [--decode-s-per-seq S]
        (default: the calibration in OUT/calibration.json, if any)
        [--calibration FILE] [--pred-dir DIR]  (another calibration; predictions written to
        DIR instead of OUT, e.g. bench/e2e/results-r3/postrun)

    python -m bench.e2e.predict --out bench/e2e/results-r4 \
        --preregister bench/e2e/results,bench/e2e/results-r3
        (fits every term on those directories by calibrate.fit_protocol, writes
        OUT/calibration.json, then predicts OUT's plans and its variants' (OUT/SUBDIR with a
        plan) into OUT/prerun/ - with a copy of the calibration - before OUT is measured)

OUT may be a variant's directory without a bench.json (``results-r4/oversub``): the workload
and the default calibration are then its parent's, the plans its own.

The replay client gives up on a request after its timeout (30 s) and the gateway then has vLLM
abort it; the simulator does the same (``SimOptions.request_timeout_s``), so under overload a
timed-out request stops taking steps and KV (``"client_aborts": true`` in the prediction).
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.e2e.plans import CONFIG, CONFIGS, as_deployed, planning_latency
from bench.e2e.results import ESTIMATORS, Calibration, Deployed, ResultsDir
from bench.e2e.workload import make_trace, trace_digest
from fineserve.metrics.kv import kv_summary
from fineserve.metrics.summary import RequestRecord, summarize
from fineserve.planner.planfile import load_plan
from fineserve.planner.schema import Plan
from fineserve.profiles.calibration import CalibratedLatency
from fineserve.profiles.composite import ProfiledLatency, shipped_calibration
from fineserve.profiles.latency import EngineShape, Latency, LatencyModel
from fineserve.profiles.roofline import AnalyticLatency
from fineserve.profiles.table import TableLatency
from fineserve.runtime.gateway.config import SchedulerSection
from fineserve.scheduler import SchedulerConfig
from fineserve.sim.cluster import SimOptions, simulate
from fineserve.sim.interference import InterferenceParams
from fineserve.sim.stepscale import EngineScaledLatency

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 30.0  # run.py --request-timeout
INTERFERENCE_FIT = ROOT / "bench/results/h100-interference/interference-fit.json"
# vLLM's max_num_batched_tokens as the runs had it: its H100 default, 8192 in every engine log
# of r3 (logs-s6); predictions before session 7 simulated 2048, so a decoding batch of 400
# left 1648 prompt tokens per step and requests queued inside the engine, whose waiting gauge
# then clamped the gateway's limit (r3 (c) x2.5: 87 simulated 429s on fp8 against 3)
TOKEN_BUDGET = 8192


def deployed_default(cfg: str) -> Deployed:
    """How ``cfg`` is deployed when no measurement says otherwise."""
    c = CONFIG[cfg]
    return Deployed(no_mps=c.no_mps, kv_pool=c.kv_pool, policy=c.policy, enforce_eager=False,
                    limit_ceiling="max_batch")


def sim_options(dep: Deployed, scheduler: SchedulerConfig | None = None,
                request_timeout_s: float | None = None) -> SimOptions:
    """The simulator's models as deployed: MPS bandwidth interference, or time slicing where
    the GPU deployment ran without MPS (none on CPU). ``scheduler`` replaces the gateway's
    default settings (its policy is still the deployed one); ``request_timeout_s`` is the
    client's (None: requests are never abandoned, as predictions before 2026-11-26 r3)."""
    interference = None
    if not dep.cpu and not dep.no_mps:
        interference = (InterferenceParams.load(INTERFERENCE_FIT) if INTERFERENCE_FIT.is_file()
                        else InterferenceParams())
    capped = dep.limit_ceiling == "max_batch"
    if scheduler is None:  # the gateway's defaults as that run had them (max_limit 256 before)
        scheduler = (SchedulerConfig(max_limit=SchedulerSection().max_limit) if capped
                     else SchedulerConfig())
    return SimOptions(token_budget=TOKEN_BUDGET if not dep.cpu else 2048,
                      kv="pooled" if dep.kv_pool else "static", interference=interference,
                      sharing="time-sliced" if dep.no_mps and not dep.cpu else "mps",
                      scheduler=replace(scheduler, policy=dep.policy),
                      limit_at_batch=capped, request_timeout_s=request_timeout_s)


def engine_kv_usage(samples) -> float | None:
    """Mean of used / held KV over the run: what vLLM's usage gauge says (the KV Slab plugin
    reports usage of the slabs it holds), comparable with the measured column; the pool's
    utilisation (used / GPU pool) is another figure."""
    xs = [s.used_bytes / s.held_bytes for s in samples if s.held_bytes > 0]
    return sum(xs) / len(xs) if xs else None


def client_view(records: list[RequestRecord], timeout_s: float) -> list[RequestRecord]:
    """The records as the replay client keeps them: a request still streaming ``timeout_s``
    after it was sent is cut off - an error whose tokens do not count."""
    return [replace(r, error="TimeoutError (replay client)", tokens_received=0)
            if r.ok and r.finished_s - r.sent_s > timeout_s else r for r in records]


def predict_one(res: ResultsDir, cfg: str, scale: float, latency: LatencyModel,
                decode_scale: float = 1.0, write: bool = True,
                decode_s_per_seq: float = 0.0, plan: Plan | None = None,
                scheduler: SchedulerConfig | None = None,
                limit_ceiling: str | None = None,
                sliced_factors: tuple[tuple[str, float], ...] | None = None,
                sliced_per_seq: float | None = None, client_aborts: bool = True,
                calibration: Path | None = None, pred_dir: Path | None = None,
                per_seq_by_size: bool | None = None,
                mps_factors: tuple[tuple[str, float], ...] | None = None) -> dict:
    """Simulate (cfg, scale) and write its prediction file; returns the prediction.
    ``decode_scale`` stretches every decode step of an MPS deployment and
    ``decode_s_per_seq`` adds that much per decoding sequence at 100% SMs
    (``fineserve.sim.stepscale``; fitted on MPS runs, neither applies to time slicing, whose
    model stretches full-GPU steps by itself). ``plan`` and ``scheduler`` replace the
    committed plan and the gateway's default settings (what-ifs, ``whatif.py``);
    ``limit_ceiling`` the gateway's per-engine limit ceiling the run had (``Deployed``).
    A time-sliced deployment gets per-engine decode factors instead, with the per-sequence
    term they were fitted with under them (``sliced_factors`` / ``sliced_per_seq``; None:
    the ``time_sliced`` fit of ``calibration`` (default OUT/calibration.json), if any).
    ``client_aborts``: requests the client gave up on are aborted in the simulation too
    (False: they run on, as predictions before r3). Written to ``pred_dir`` (default OUT).
    ``per_seq_by_size``: both per-sequence terms scaled by each engine's linear parameters
    (``stepscale.size_weight``; None: as the calibration says). ``mps_factors``: per-model
    factors on the calibrated MPS step (None: the calibration's ``mps_factors``, if any)."""
    bench = res.load_bench()
    trace = make_trace(bench, scale)
    measured = res.measured(cfg, scale)
    dep = measured.deployed if measured is not None else deployed_default(cfg)
    if limit_ceiling is not None:
        dep = replace(dep, limit_ceiling=limit_ceiling)
    plan = as_deployed(plan or load_plan(res.plan_path(cfg)), dep.kv_pool)
    digest = trace_digest(trace)
    if measured is not None and measured.trace_digest != digest:
        raise ValueError(f"{res.measured_path(cfg, scale)}: replayed trace {measured.trace_digest}"
                         f" is not the one bench.json generates ({digest})")
    timeout = measured.request_timeout_s if measured is not None else DEFAULT_TIMEOUT_S
    opts = sim_options(dep, scheduler, timeout if client_aborts else None)
    sliced = opts.sharing == "time-sliced"
    cal = Calibration.load(calibration or res.calibration_path())
    latency = with_estimator(latency, cal)
    if per_seq_by_size is None:
        per_seq_by_size = cal is not None and cal.per_seq_by_size
    if mps_factors is None:
        mps_factors = () if cal is None else tuple(sorted(cal.mps_factors.items()))
    if sliced or dep.cpu:
        mps_factors = ()
    asked, asked_per_seq = decode_scale, decode_s_per_seq
    if sliced or dep.cpu:
        decode_scale, decode_s_per_seq = 1.0, 0.0
    if decode_scale != 1.0 or decode_s_per_seq or mps_factors:  # as the planner plans
        latency = planning_latency(latency, decode_scale, decode_s_per_seq, per_seq_by_size,
                                   mps_factors)
    factors: tuple[tuple[str, float], ...] = ()
    per_seq_sliced = 0.0
    if sliced:
        cal_factors, cal_per_seq = calibrated_sliced_terms(res, calibration)
        factors = cal_factors if sliced_factors is None else sliced_factors
        per_seq_sliced = cal_per_seq if sliced_per_seq is None else sliced_per_seq
        if factors or per_seq_sliced:
            latency = EngineScaledLatency(latency, factors, per_seq_sliced, per_seq_by_size)
    result = simulate(plan, trace, latency, options=opts)
    # throughput over the same seconds as the measurement (the replay's wall time)
    duration = (float(measured.summary.get("duration_s") or trace.duration_s)
                if measured is not None else trace.duration_s)
    summary = summarize(client_view(result.records, timeout),
                        {m.name: m.slo for m in plan.models}, duration, "simulate")
    kv = {g: {k: v for k, v in s.items() if k != "series"}
          for g, s in kv_summary(result.kv_samples).items()}
    out = {"config": cfg, "rate_scale": scale, "trace_digest": digest, "summary": summary,
           "kv_per_gpu": kv, "kv_usage_mean": engine_kv_usage(result.kv_samples),
           "deployed": asdict(dep),
           "sharing": "time-sliced" if sliced else "mps" if not dep.cpu else "cpu",
           "interference": None if opts.interference is None else opts.interference.source,
           "request_timeout_s": timeout, "decode_scale": decode_scale,
           "decode_scale_asked": asked, "decode_s_per_seq": decode_s_per_seq,
           "decode_s_per_seq_asked": asked_per_seq, "sliced_factors": dict(factors),
           "sliced_s_per_seq": per_seq_sliced, "client_aborts": client_aborts,
           "per_seq_by_size": per_seq_by_size, "mps_factors": dict(mps_factors),
           "token_budget": opts.token_budget}
    if cal is not None and cal.estimator:
        out["estimator"] = cal.estimator  # absent otherwise: older predictions unchanged
    if write:
        path = res.predicted_path(cfg, scale)
        if pred_dir is not None:
            Path(pred_dir).mkdir(parents=True, exist_ok=True)
            path = Path(pred_dir) / path.name
        path.write_text(json.dumps(out, indent=1))
    return out


@dataclass(frozen=True, slots=True)
class UnprofiledCalibrated:
    """The estimator of a ``ProfiledLatency`` that answers with ``calibrated``'s roofline for
    engines ``table`` does not measure at all and extends the profiled ones beyond their box
    with ``default`` (``Calibration.estimator == "h100-unprofiled"``)."""

    table: TableLatency
    calibrated: CalibratedLatency
    default: AnalyticLatency

    def estimator(self, engine: EngineShape) -> AnalyticLatency:
        return self.default if self.table.covers(engine) else self.calibrated.estimator(engine)

    def covers(self, engine: EngineShape) -> bool:
        return True

    def prefill(self, engine: EngineShape, prompt_tokens: float, sm_pct: float,
                batch: float = 1) -> Latency:
        return self.estimator(engine).prefill(engine, prompt_tokens, sm_pct, batch)

    def decode_step(self, engine: EngineShape, batch: float, context_tokens: float,
                    sm_pct: float) -> Latency:
        return self.estimator(engine).decode_step(engine, batch, context_tokens, sm_pct)


def with_estimator(latency: LatencyModel, cal: Calibration | None) -> LatencyModel:
    """``latency`` as ``cal`` was fitted over (``Calibration.estimator``): the same profiles
    with the roofline behind them calibrated to the measured H100 profiles
    (``default_latency_model(calibrated=True)``) for all they lack ("h100") or for the engines
    nobody profiled only ("h100-unprofiled"); ``latency`` unchanged for "" (every file
    before the field: its predictions as they were) or where it already has one. The default
    roofline was fitted to FineServe's eager-mode tables, its int4 to the AWQ kernel: the
    int4 7B nobody profiled then decodes and prefills at 0.41 of the bf16 peak instead of
    GPTQ-Marlin's ~0.75, behind an eager host floor of 8 ms a step."""
    return latency if cal is None else over_estimator(latency, cal.estimator)


@functools.cache
def over_estimator(latency: LatencyModel, estimator: str) -> LatencyModel:
    """``with_estimator`` by the estimator's name. Cached: a fit predicts hundreds of times
    with one latency model, and a fresh ``ProfiledLatency`` would build its per-engine
    extension grids again at every prediction (15% of one (b) x3 prediction, CPU machine)."""
    if (not estimator or not isinstance(latency, ProfiledLatency)
            or not isinstance(latency.estimator, AnalyticLatency) or latency.table is None):
        return latency
    calibrated = CalibratedLatency(shipped_calibration())
    if estimator == "h100":
        return ProfiledLatency(latency.table, calibrated)
    return ProfiledLatency(latency.table,
                           UnprofiledCalibrated(latency.table, calibrated, latency.estimator))


def calibrated_terms(res: ResultsDir, calibration: Path | None = None) -> tuple[float, float]:
    """(decode-step factor, per-sequence decode term in seconds) of ``calibration.json``
    (``bench/e2e/calibrate.py``; ``calibration``: another file), else (1, 0); files written
    before the per-sequence term existed have none."""
    cal = Calibration.load(calibration or res.calibration_path())
    return (1.0, 0.0) if cal is None else (cal.decode_scale, cal.decode_s_per_seq)


def calibrated_mps_terms(res: ResultsDir, calibration: Path | None = None
                         ) -> tuple[bool, tuple[tuple[str, float], ...]]:
    """(per-sequence term by engine size, per-model MPS factors) of the calibration, which
    the planner applies like the simulator (``plans.planning_latency``); (False, ()) without
    one."""
    cal = Calibration.load(calibration or res.calibration_path())
    return (False, ()) if cal is None else (cal.per_seq_by_size,
                                            tuple(sorted(cal.mps_factors.items())))


def calibrated_sliced_terms(res: ResultsDir, calibration: Path | None = None
                            ) -> tuple[tuple[tuple[str, float], ...], float]:
    """(per-engine decode factors, the per-sequence term they were fitted with) of the
    time-sliced fit; fits made before the term existed had none (0)."""
    cal = Calibration.load(calibration or res.calibration_path())
    sliced = None if cal is None else cal.time_sliced
    if sliced is None:
        return (), 0.0
    return tuple(sorted(sliced.factors.items())), sliced.decode_s_per_seq


def calibrated_scale(res: ResultsDir) -> float:
    return calibrated_terms(res)[0]


def calibrated_per_seq(res: ResultsDir) -> float:
    return calibrated_terms(res)[1]


def predict_all(res: ResultsDir, configs: tuple[str, ...], latency: LatencyModel,
                force: bool = False, decode_scale: float | None = None,
                decode_s_per_seq: float | None = None, calibration: Path | None = None,
                pred_dir: Path | None = None) -> list[Path]:
    """Predict every (config, rate) whose plan exists; skip existing predictions unless
    ``force``, the measurement is newer or they used other decode factors or models (None:
    the results directory's calibration, or ``calibration``); write to ``pred_dir`` (default
    the results directory)."""
    cal_scale, cal_per_seq = calibrated_terms(res, calibration)
    sliced, sliced_per_seq = calibrated_sliced_terms(res, calibration)
    cal = Calibration.load(calibration or res.calibration_path())
    by_size = cal is not None and cal.per_seq_by_size
    scale = cal_scale if decode_scale is None else decode_scale
    per_seq = cal_per_seq if decode_s_per_seq is None else decode_s_per_seq
    written = []
    for cfg in configs:
        if not res.plan_path(cfg).is_file():
            continue
        for rate in res.scales():
            p, m = res.predicted_path(cfg, rate), res.measured_path(cfg, rate)
            if pred_dir is not None:
                p = Path(pred_dir) / p.name
            old = json.loads(p.read_text()) if p.is_file() else {}
            stale = p.is_file() and (
                (m.is_file() and m.stat().st_mtime > p.stat().st_mtime)
                or old.get("decode_scale_asked", 1.0) != scale
                or old.get("decode_s_per_seq_asked", 0.0) != per_seq
                or not old.get("client_aborts", False)
                or old.get("per_seq_by_size", False) != by_size
                or old.get("token_budget", 2048) != TOKEN_BUDGET
                or old.get("estimator", "") != (cal.estimator if cal else "")
                or (old.get("sharing") == "mps"
                    and old.get("mps_factors", {}) != (cal.mps_factors if cal else {}))
                or (old.get("sharing") == "time-sliced"
                    and (old.get("sliced_factors", {}) != dict(sliced)
                         or old.get("sliced_s_per_seq", 0.0) != sliced_per_seq)))
            if p.is_file() and not force and not stale:
                continue
            predict_one(res, cfg, rate, latency, decode_scale=scale,
                        decode_s_per_seq=per_seq, calibration=calibration, pred_dir=pred_dir)
            written.append(p)
    return written


def preregister(out: Path, fit_dirs: list[Path], configs: tuple[str, ...],
                latency: LatencyModel, estimator: str = "") -> list[Path]:
    """The pre-registration of an unmeasured results directory ``out``: the calibration
    fitted on ``fit_dirs`` (``calibrate.fit_protocol``) written to OUT/calibration.json and
    OUT/prerun/, and every plan's predictions (variants' in OUT/prerun/SUBDIR).
    ``estimator``: fitted over that roofline (``Calibration.estimator``, ``with_estimator``)."""
    import shutil

    from bench.e2e.calibrate import _source_name, fit_protocol

    res = ResultsDir(out)
    if any(res.measured_path(c, r).is_file() for c in CONFIGS for r in res.scales()):
        raise SystemExit(f"--preregister: {out} already holds measurements")
    if not fit_dirs:
        raise SystemExit("--preregister: name the results directories to fit on")
    runs = tuple(ResultsDir(d) for d in fit_dirs)
    latency = over_estimator(latency, estimator)
    cal = fit_protocol(runs, latency, " + ".join(_source_name(d) for d in fit_dirs))
    cal = replace(cal, estimator=estimator)
    res.calibration_path().write_text(cal.to_json())
    prerun = out / "prerun"
    prerun.mkdir(parents=True, exist_ok=True)
    shutil.copy2(res.calibration_path(), prerun / "calibration.json")
    written = [res.calibration_path(), prerun / "calibration.json"]
    written += predict_all(res, configs, latency, force=True, pred_dir=prerun)
    for sub in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "prerun"):
        if list(sub.glob("plan-*.yaml")) and not (sub / "bench.json").is_file():
            written += predict_all(ResultsDir(sub, shared=out), configs, latency, force=True,
                                   pred_dir=prerun / sub.name)
    return written


def main(argv: list[str] | None = None) -> None:
    from fineserve.profiles.composite import default_latency_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results directory")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--force", action="store_true", help="recompute existing predictions")
    ap.add_argument("--decode-scale", type=float, default=None,
                    help="decode-step factor (default: OUT/calibration.json if any, else 1)")
    ap.add_argument("--decode-s-per-seq", type=float, default=None,
                    help="seconds per decoding sequence at 100%% SMs added to each step "
                         "(default: OUT/calibration.json if any, else 0)")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="calibration file (default OUT/calibration.json)")
    ap.add_argument("--pred-dir", type=Path, default=None,
                    help="write the predictions here instead of OUT")
    ap.add_argument("--preregister", default=None, metavar="DIRS",
                    help="fit the calibration on these results directories (comma-separated),"
                         " write it to OUT and predict into OUT/prerun (OUT unmeasured)")
    ap.add_argument("--estimator", default="", choices=ESTIMATORS,
                    help="--preregister over the roofline calibrated to the measured H100 "
                         "profiles (Calibration.estimator; default: FineServe's)")
    args = ap.parse_args(argv)
    configs = tuple(c for c in args.configs.split(",") if c)
    if args.preregister is not None:
        for p in preregister(args.out, [Path(x) for x in args.preregister.split(",") if x],
                             configs, default_latency_model(), args.estimator):
            print(f"wrote {p}")
        return
    if args.calibration is not None and not args.calibration.is_file():
        raise SystemExit(f"--calibration: no file {args.calibration}")
    res = ResultsDir(args.out)
    if not res.bench_path().is_file() and (args.out.parent / "bench.json").is_file():
        res = ResultsDir(args.out, shared=args.out.parent)  # a variant's directory
    for p in predict_all(res, configs, default_latency_model(), args.force,
                         args.decode_scale, args.decode_s_per_seq, args.calibration,
                         args.pred_dir):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
