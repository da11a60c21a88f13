"""The node agent: a Ray actor that runs one plan node's ``Deployment`` (without
a gateway) on its host.

The driver creates it with the node's custom resource, so Ray places it on that host. The
deployment runs in a thread of the actor (the thread that starts engines must outlive them:
the orphan guard's parent-death signal follows the spawning thread); the actor's methods only
start it, report on it and stop it, so they return at once and the driver can poll.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from pathlib import Path

from fineserve.errors import FineserveError
from fineserve.planner.schema import Plan
from fineserve.runtime.control import cleanup_stale
from fineserve.runtime.deploy import Deployment
from fineserve.runtime.errors import EngineStartError
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.prepare import prepare
from fineserve.runtime.ray.messages import AgentEvent, AgentPhase, AgentReport, EngineReport
from fineserve.runtime.ray.node import bind_to_host, ray_added_env, read_environ
from fineserve.runtime.state import RunDir
from fineserve.runtime.worker import tail


class _Events:
    """Observer of the node's deployment: keeps its lines until the next report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[AgentEvent] = deque(maxlen=1000)

    def note(self, text: str) -> None:
        with self._lock:
            self._items.append(AgentEvent("note", text))

    def warn(self, text: str) -> None:
        with self._lock:
            self._items.append(AgentEvent("warn", text))

    def progress(self, rows: list) -> None:  # engine phases go out in every report
        pass

    def drain(self) -> tuple[AgentEvent, ...]:
        with self._lock:
            out = tuple(self._items)
            self._items.clear()
        return out


class NodeAgent:
    """One per plan node; Ray actor methods: ``start``, ``report``, ``stop``."""

    def __init__(self, plan: Plan, opts: DeployOptions, ip: str = "") -> None:
        self.plan, self.opts = plan, opts
        self.ip = ip  # "" = the IP Ray knows this node by
        self.events = _Events()
        self.deployment: Deployment | None = None
        self.thread: threading.Thread | None = None
        self.phase = AgentPhase.STARTING
        self.error = ""
        self._stopping = False

    def start(self) -> tuple[str, str]:
        """Prepare (checks; nothing started on failure) and start the node's deployment in a
        thread. Returns (IP, Ray node id). Raises the runtime's DeployError on a failed check."""
        ray = sys.modules.get("ray")  # imported: this runs in a Ray worker
        if not self.ip and ray is not None:
            self.ip = ray.util.get_node_ip_address()
        self.ip = self.ip or "127.0.0.1"
        cleanup_stale(RunDir(self.opts.run_dir))  # what a dead agent left on this host
        prep = prepare(self.plan, self.opts)
        raylet = os.environ.get("RAY_RAYLET_PID", "")
        drop = ray_added_env(dict(os.environ),
                             read_environ(int(raylet)) if raylet.isdigit() else None)
        prep = bind_to_host(prep, self.ip, drop, guard_parent=os.getpid())
        self.deployment = Deployment(self.plan, self.opts, self.events, prep,
                                     gateway=False)
        self.thread = threading.Thread(target=self._run, name=f"fineserve-node-{self.opts.node}",
                                       daemon=True)
        self.thread.start()
        node_id = ray.get_runtime_context().get_node_id() \
            if ray is not None and ray.is_initialized() else ""
        return self.ip, node_id

    def _run(self) -> None:
        assert self.deployment is not None
        try:
            self.deployment.run(on_ready=self._ready)
            self.phase = AgentPhase.STOPPED
        except FineserveError as exc:
            if self._stopping:  # interrupted while starting: a stop, not a failure
                self.phase = AgentPhase.STOPPED
                return
            self.error = _one_line(exc)
            self.phase = AgentPhase.FAILED
        except BaseException as exc:  # a bug: still report it instead of dying silently
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.phase = AgentPhase.FAILED

    def _ready(self, _url: str) -> None:
        self.phase = AgentPhase.SERVING

    def report(self) -> AgentReport:
        engines: tuple[EngineReport, ...] = ()
        if self.deployment is not None:
            st = self.deployment.state()
            engines = tuple(EngineReport(e.engine_id, e.model, self.ip, e.port, e.phase,
                                         e.restarts, e.last_exit) for e in st.engines)
        return AgentReport(self.opts.node or "", self.ip, os.getpid(), self.phase, engines,
                           self.events.drain(), self.error)

    def stop(self, timeout_s: float = 120.0) -> AgentReport:
        """Stop the engines and MPS daemons of this node (in order) and wait for it."""
        if self.deployment is not None and self.thread is not None and self.thread.is_alive():
            self._stopping = True
            if self.phase not in (AgentPhase.FAILED, AgentPhase.STOPPED):
                self.phase = AgentPhase.STOPPING
            self.deployment.request_stop("the Ray driver stops the deployment")
            self.thread.join(timeout_s)
        elif self.thread is None and self.phase is AgentPhase.STARTING:
            self.phase = AgentPhase.STOPPED  # never started anything
        return self.report()


def _one_line(exc: FineserveError) -> str:
    line = exc.message + (f" (to fix: {exc.hint})" if exc.hint else "")
    if isinstance(exc, EngineStartError) and exc.log_path:
        last = [ln for ln in tail(Path(exc.log_path), 40).splitlines() if ln.strip()]
        if last and last[-1].strip() not in line:
            line += f"; its log ends with: {last[-1].strip()[:300]}"
    return line
