"""What a node agent tells the driver (pickled by Ray; frozen values, no live objects)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fineserve.runtime.state import EnginePhase


class AgentPhase(StrEnum):
    STARTING = "starting"  # preparing, or engines not all healthy yet
    SERVING = "serving"  # every engine answered /health once; supervision running
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the node's deployment ended with an error (``AgentReport.error``)


@dataclass(frozen=True, slots=True)
class EngineReport:
    engine_id: str
    model: str
    host: str  # the node's IP: the engine listens there
    port: int
    phase: EnginePhase
    restarts: int
    last_exit: int | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    level: str  # "note" | "warn"
    text: str


@dataclass(frozen=True, slots=True)
class AgentReport:
    node: str  # plan node
    ip: str
    pid: int  # the agent's process on that host
    phase: AgentPhase
    engines: tuple[EngineReport, ...]
    events: tuple[AgentEvent, ...]  # new since the previous report
    error: str = ""  # FAILED: one line (with the engine log's last line when there is one)

    def engine(self, engine_id: str) -> EngineReport | None:
        return next((e for e in self.engines if e.engine_id == engine_id), None)
