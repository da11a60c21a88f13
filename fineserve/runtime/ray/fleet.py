"""The driver's view of one plan node: its agent, last report, and what losing it costs.

Mutable bookkeeping owned by the driver loop (``driver.py``); the pieces that decide what to
say are pure functions of the plan and the reports, so they are unit-tested without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fineserve.planner.schema import EnginePlacement, Plan
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.ray.messages import AgentReport
from fineserve.runtime.ray.topology import RayNode
from fineserve.runtime.state import EnginePhase
from fineserve.runtime.supervisor import Backoff


class NodePhase(StrEnum):
    STARTING = "starting"  # agent created (or waiting to be placed), engines starting
    SERVING = "serving"
    LOST = "lost"  # agent or Ray node gone; waiting for a Ray node with the resource
    FAILED = "failed"  # the node's deployment gave up (or its restart budget is spent)
    STOPPED = "stopped"


class NodeSlot:
    """One plan node as the driver tracks it."""

    def __init__(self, name: str, opts: DeployOptions, engines: tuple[EnginePlacement, ...]
                 ) -> None:
        self.name, self.opts, self.engines = name, opts, engines
        self.phase = NodePhase.STARTING
        self.actor: Any = None  # Ray actor handle of the current agent
        self.start_ref: Any = None  # pending NodeAgent.start
        self.report_ref: Any = None  # pending NodeAgent.report
        self.asked_at = 0.0  # when report_ref was sent
        self.answered_at = 0.0  # the agent's latest answer (start or report)
        self.checked_at = 0.0  # its Ray node's latest liveness check
        self.launched_at = 0.0
        self.ray_node: RayNode | None = None  # where the current agent was placed
        self.report: AgentReport | None = None  # the latest one
        self.backoff = Backoff(opts.restart)  # agent restarts after losses / failed starts
        self.retry_at = 0.0
        self.returns = 0  # times the node came back

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({e.model for e in self.engines}))


@dataclass(frozen=True, slots=True)
class ModelImpact:
    model: str
    lost: int  # replicas on the lost node
    left: int  # replicas still serving elsewhere
    total: int

    def line(self, node: str, why: str) -> str:
        head = f"node {node} lost ({why}): model {self.model} "
        if self.left == 0:
            return head + "has no replica left; requests for it get 503 until the node returns"
        return head + f"keeps serving on {self.left} of {self.total} replicas"


def impact(plan: Plan, lost_node: str, ready: Mapping[str, bool]) -> list[ModelImpact]:
    """Per model with engines on ``lost_node``: how many replicas still serve.

    ``ready`` maps engine id -> serving now (engines of other nodes that are up).
    """
    out = []
    for model in sorted({e.model for e in plan.engines if e.node == lost_node}):
        engines = plan.engines_of(model)
        lost = sum(1 for e in engines if e.node == lost_node)
        left = sum(1 for e in engines if e.node != lost_node and ready.get(e.engine_id, False))
        out.append(ModelImpact(model, lost, left, len(engines)))
    return out


def ready_engines(slots: Mapping[str, NodeSlot]) -> dict[str, bool]:
    """Engine id -> ready, from the latest reports of nodes that are not lost or failed."""
    out: dict[str, bool] = {}
    for s in slots.values():
        up = s.phase in (NodePhase.STARTING, NodePhase.SERVING) and s.report is not None
        for e in (s.report.engines if s.report is not None else ()):
            out[e.engine_id] = up and e.phase is EnginePhase.READY
    return out
