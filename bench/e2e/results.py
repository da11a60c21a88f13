"""The results directory: one JSON per (configuration, rate), resumable.

    OUT/bench.json            the BenchSet (models, rates, sweep, seed) every file refers to
    OUT/plan-{a,b,c}.yaml     the plan each configuration deployed
    OUT/{cfg}-r{scale}.json   measured: replay summary, KV utilisation, how it was deployed
    OUT/pred-{cfg}-r{scale}.json  the simulator's prediction of the same plan and trace
    OUT/{cfg}-requests.tgz    per-request logs (requests.csv per rate) of the last run
    OUT/calibration.json      the simulator's decode-step factor (bench/e2e/calibrate.py)
A run skips every (configuration, rate) whose measured file exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.e2e.workload import BenchSet, ModelEntry, rate_tag


@dataclass(frozen=True, slots=True)
class Deployed:
    """How a configuration actually ran (the prediction simulates the same)."""

    no_mps: bool
    kv_pool: bool
    policy: str  # local scheduler policy in the gateway
    enforce_eager: bool
    cpu: bool = False
    # engine id -> what its vLLM loaded (bench/e2e/deployment.loaded_weights): weight_gib,
    # planned_weight_gib, quantization, kv_cache_dtype, warning - so a run shows its int4 was int4
    loaded: dict[str, dict] = field(default_factory=dict)
    gpu: int = 0  # host GPU it ran on
    lane: str = ""  # side-by-side lane (bench/e2e/lanes.py), "" when it ran alone
    # the gateway's per-engine limit ceiling: "max_batch" (runtime/gateway/limits.py) or, in
    # files of runs before it, "max_limit" (the gateway-wide cap only, 256)
    limit_ceiling: str = "max_limit"


@dataclass(frozen=True, slots=True)
class Measured:
    config: str
    rate_scale: float
    trace_digest: str
    deployed: Deployed
    summary: dict  # fineserve replay summary (fineserve.metrics.summary.summarize)
    kv: dict[str, dict[str, float]]  # engine id -> {mean, p99, max, samples} of KV usage
    request_timeout_s: float = 30.0  # the replay client gave up on a request after this
    device: str = ""
    startup_s: float = 0.0
    wall_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # engine id -> [[s since the replay began, running, waiting, KV usage, preemptions,
    # gateway in-flight limit], ...] each second (bench/e2e/deployment.KvSampler)
    engine_series: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Measured:
        d = json.loads(text)
        d["deployed"] = Deployed(**d["deployed"])
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


class ResultsDir:
    def __init__(self, root: Path, shared: Path | None = None) -> None:
        self.root = Path(root)
        # where bench.json and calibration.json come from when root has none: a variant's
        # directory (results-r4/oversub, lanes.py SUBDIR) holds its plan and results, the
        # workload and the calibration are its parent's
        self.shared = None if shared is None else Path(shared)

    def _own_or_parent(self, name: str) -> Path:
        own = self.root / name
        if self.shared is None or own.is_file():
            return own
        return self.shared / name

    def bench_path(self) -> Path:
        return self._own_or_parent("bench.json")

    def plan_path(self, cfg: str) -> Path:
        return self.root / f"plan-{cfg}.yaml"

    def measured_path(self, cfg: str, scale: float) -> Path:
        return self.root / f"{cfg}-{rate_tag(scale)}.json"

    def predicted_path(self, cfg: str, scale: float) -> Path:
        return self.root / f"pred-{cfg}-{rate_tag(scale)}.json"

    def logs_path(self, cfg: str) -> Path:
        return self.root / f"{cfg}-requests.tgz"

    def calibration_path(self) -> Path:
        return self._own_or_parent("calibration.json")

    def save_bench(self, bench: BenchSet) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "bench.json").write_text(json.dumps(asdict(bench), indent=1))

    def load_bench(self) -> BenchSet:
        d = json.loads(self.bench_path().read_text())
        d["models"] = tuple(ModelEntry(**m) for m in d["models"])
        d["rate_scales"] = tuple(d["rate_scales"])
        return BenchSet(**d)

    def scales(self) -> tuple[float, ...]:
        """The sweep: bench.json's rates and every rate a result file holds (a call with
        --rates adds some without the development machine's bench.json knowing)."""
        found = {json.loads(p.read_text())["rate_scale"] for p in self.root.glob("[abc]-r*.json")}
        return tuple(sorted(set(self.load_bench().rate_scales) | found))

    def measured(self, cfg: str, scale: float) -> Measured | None:
        p = self.measured_path(cfg, scale)
        return Measured.from_json(p.read_text()) if p.is_file() else None

    def save_measured(self, m: Measured) -> Path:
        p = self.measured_path(m.config, m.rate_scale)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(m.to_json())
        tmp.replace(p)  # a killed run never leaves half a file that a rerun would skip
        return p


ESTIMATORS = ("", "h100", "h100-unprofiled")  # Calibration.estimator


@dataclass(frozen=True, slots=True)
class Calibration:
    decode_scale: float
    configs: tuple[str, ...]  # fitted on these configurations ...
    fit_rates: tuple[float, ...]  # ... at these rates; every other rate is held out
    points: int  # (configuration, rate, model) TPOT medians in the fit
    residual_log_sd: float  # spread of log(measured / simulated TPOT) at the fitted scale
    decode_s_per_seq: float = 0.0  # seconds per decoding sequence at 100% SMs (0: older file)
    time_sliced: SlicedCalibration | None = None  # (a)'s per-engine factors, fitted apart
    source: str = ""  # results directory fitted on, from the repo root ("": the file's own)
    # the per-sequence terms (MPS and time-sliced) scaled by each engine's linear parameters
    # (fineserve.sim.stepscale.size_weight); False in files before 2026-11-26 session 7
    per_seq_by_size: bool = False
    # ModelSpec.key -> factor on the calibrated MPS step, fitted per model on TPOT medians
    # after the common terms (calibrate.py --per-model); empty: one step model for all
    mps_factors: dict[str, float] = field(default_factory=dict)
    mps_factors_fit: str = ""  # what they were fitted on (configs, rates, source)
    # the roofline behind the profiles the terms were fitted over (predict.with_estimator):
    # "" the defaults fitted to FineServe's eager tables (every file before 2026-11-27
    # session 10); "h100" the one calibrated to the measured H100 profiles (CUDA graphs,
    # GPTQ-Marlin int4: ``default_latency_model(calibrated=True)``) for all that no profile
    # covers - the int4 7B at any share, the others beyond the profiles' boxes;
    # "h100-unprofiled" that one for engines no profile measures at all (the int4 7B) only.
    # The defaults' int4 GEMMs run at the AWQ kernel's 0.41 of peak (Marlin's fit: 0.75) and
    # their host floor is eager's 255 us per layer (CUDA graphs: 27 us).
    estimator: str = ""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> Calibration | None:
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        t = d.get("time_sliced") or None
        # the fit's record (what it saw, how well) is optional: a hand-written file may give
        # only the terms the simulator uses
        return cls(float(d["decode_scale"]), tuple(d.get("configs", ())),
                   tuple(d.get("fit_rates", ())), int(d.get("points", 0)),
                   float(d.get("residual_log_sd", math.nan)),
                   float(d.get("decode_s_per_seq", 0.0)),
                   None if t is None else SlicedCalibration(
                       {k: float(v) for k, v in t.get("factors", {}).items()},
                       tuple(t.get("configs", ())), tuple(t.get("fit_rates", ())),
                       int(t.get("points", 0)), float(t.get("residual_log_sd", math.nan)),
                       int(t.get("rounds", 0)), float(t.get("decode_s_per_seq", 0.0)),
                       str(t.get("source", ""))),
                   str(d.get("source", "")), bool(d.get("per_seq_by_size", False)),
                   {k: float(v) for k, v in (d.get("mps_factors") or {}).items()},
                   str(d.get("mps_factors_fit", "")),
                   str(d.get("estimator", "")))


@dataclass(frozen=True, slots=True)
class SlicedCalibration:
    """Time-sliced decode factors per engine (``ModelSpec.key``), fitted on ``configs`` at
    ``fit_rates`` (every other rate held out)."""

    factors: dict[str, float]
    configs: tuple[str, ...]
    fit_rates: tuple[float, ...]
    points: int  # (rate, model) TPOT medians fitted
    residual_log_sd: float  # spread of log(measured / simulated) at the fitted factors
    rounds: int  # fixed-point rounds run
    decode_s_per_seq: float = 0.0  # per-sequence term under the factors (0: older files)
    source: str = ""  # results directory fitted on, from the repo root ("": the file's own)
