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
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def bench_path(self) -> Path:
        return self.root / "bench.json"

    def plan_path(self, cfg: str) -> Path:
        return self.root / f"plan-{cfg}.yaml"

    def measured_path(self, cfg: str, scale: float) -> Path:
        return self.root / f"{cfg}-{rate_tag(scale)}.json"

    def predicted_path(self, cfg: str, scale: float) -> Path:
        return self.root / f"pred-{cfg}-{rate_tag(scale)}.json"

    def logs_path(self, cfg: str) -> Path:
        return self.root / f"{cfg}-requests.tgz"

    def calibration_path(self) -> Path:
        return self.root / "calibration.json"

    def save_bench(self, bench: BenchSet) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bench_path().write_text(json.dumps(asdict(bench), indent=1))

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
