"""``fineserve deploy PLAN --ray ADDRESS``: agents on every node, the gateway here, supervision.

Lifecycle (one foreground process, like the single-host deploy)::

    connect to Ray -> every plan node has a live Ray node with its resource (else one line)
      -> one NodeAgent per node (placed by resource), all start at once
      -> wait until every node serves -> gateway here, upstreams on every node
      -> RUNNING: every tick, collect each agent's report (engine phases, restarts, notes)
           agent dead / unresponsive / its Ray node dead -> node LOST: one line per affected
             model; the gateway routes around its engines (they refuse, it marks them down)
           LOST and a live Ray node carries the resource again -> new agent, engines restart
             (the new agent first cleans up what the old one left on that host); if the node
             came back at another address the gateway is restarted with the new upstreams
      -> stop (SIGINT/SIGTERM, `fineserve stop --run-dir RUN`) or fatal error
      -> gateway (drains) -> every agent stops its engines and MPS daemons -> agents killed

Engine supervision (backoff restarts, MPS fault domains, give-up) stays inside each agent:
it is the single-host runtime's. The driver only restarts whole agents, with the same backoff.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from fineserve.planner.planfile import dump_plan
from fineserve.planner.schema import Plan
from fineserve.runtime import procs
from fineserve.runtime.control import cleanup_stale
from fineserve.runtime.deploy import EngineRow, Observer
from fineserve.runtime.errors import DeployError, EngineGaveUp, EngineStartError
from fineserve.runtime.gateway_process import (
    GatewayRestarts,
    gateway_ready,
    gateway_spec,
    wait_ready,
)
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.ray.fleet import NodePhase, NodeSlot, impact, ready_engines
from fineserve.runtime.ray.gateway import Endpoint, ray_gateway_config
from fineserve.runtime.ray.imports import import_ray
from fineserve.runtime.ray.messages import AgentPhase, AgentReport
from fineserve.runtime.ray.node import node_options
from fineserve.runtime.ray.topology import (
    RayNode,
    check_all_present,
    hosts_of,
    node_resource,
    plan_nodes,
    port_bases,
    raylet_up,
)
from fineserve.runtime.signals import install_signals, restore_signals
from fineserve.runtime.state import (
    DeployState,
    EnginePhase,
    EngineRecord,
    Phase,
    ProcRecord,
    RunDir,
)
from fineserve.runtime.worker import ManagedProcess

TICK_S = 0.5
CLUSTER_POLL_S = 2.0  # ray.nodes() is a GCS round trip
UNRESPONSIVE_S = 30.0  # an agent that answers no report for this long is lost
PLACEMENT_S = 120.0  # an agent Ray cannot place (resource held elsewhere) within this: error


class RayDeployment:
    def __init__(self, plan: Plan, opts: DeployOptions, address: str, observer: Observer,
                 unresponsive_s: float = UNRESPONSIVE_S) -> None:
        self.plan, self.opts, self.address, self.obs = plan, opts, address, observer
        self.unresponsive_s = unresponsive_s
        self.run_dir = RunDir(opts.run_dir)
        self.ray: Any = None
        self.agent_cls: Any = None
        self.slots: dict[str, NodeSlot] = {}
        self.rows: list[RayNode] = []
        self.rows_at = 0.0
        self.gateway: ManagedProcess | None = None
        self.gateway_url = f"http://{opts.host}:{opts.port}"
        self.endpoints: dict[str, Endpoint] = {}  # what the running gateway was given
        self._stop_reason: str | None = None
        self._phase = Phase.STARTING
        self._error = ""
        self._me = procs.identify(os.getpid())
        self._saved_at = 0.0

    # ------------------------------------------------------------------ public
    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = self._stop_reason or reason

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Deploy on the cluster, serve until asked to stop, shut down. Raises DeployError."""
        self.ray = import_ray()
        nodes = plan_nodes(self.plan)
        self._connect()
        old: dict[int, object] = {}
        try:
            check_all_present(self._cluster(0.0, force=True), nodes)
            bases = port_bases(self.plan, nodes, self.opts.engine_port_base)
            self._check_gateway_port(bases)
            cleanup_stale(self.run_dir)
            self.run_dir.create()
            self.run_dir.plan.write_text(dump_plan(self.plan))
            for n in nodes:
                mine = tuple(e for e in self.plan.engines if e.node == n)
                self.slots[n] = NodeSlot(n, node_options(self.opts, self.plan, n, bases[n]), mine)
            self._save()
            old = install_signals(self.request_stop)
            self._start()
            self._phase = Phase.RUNNING
            self._save()
            if on_ready:
                on_ready(self.gateway_url)
            self._supervise()
        except BaseException as exc:
            self._error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            self._shutdown()
            restore_signals(old)

    # ------------------------------------------------------------------ cluster
    def _connect(self) -> None:
        from fineserve.runtime.ray.agent import NodeAgent

        _check_reachable(self.address)
        try:
            self.ray.init(address=self.address, log_to_driver=False,
                          logging_level=logging.WARNING, namespace="fineserve")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeployError(f"--ray {self.address}: cannot connect to a Ray cluster "
                              f"({str(exc).splitlines()[0][:200]})",
                              hint="start one with `ray start --head` and pass its address "
                                   "(HOST:PORT)") from None
        self.agent_cls = self.ray.remote(NodeAgent)

    def _cluster(self, now: float, force: bool = False) -> list[RayNode]:
        if force or now - self.rows_at >= CLUSTER_POLL_S:
            self.rows = [RayNode.from_row(r) for r in self.ray.nodes()]
            self.rows_at = now
        return self.rows

    def _check_gateway_port(self, bases: dict[str, int]) -> None:
        n = max(len(s) for s in ({e.engine_id for e in self.plan.engines if e.node == k}
                                 for k in bases))
        lo, hi = min(bases.values()), max(bases.values()) + n - 1
        if lo <= self.opts.port <= hi:
            raise DeployError(f"--port {self.opts.port} is inside the engines' port range "
                              f"{lo}-{hi}", hint="move --port or --engine-port-base apart")

    # ------------------------------------------------------------------ agents
    def _launch(self, s: NodeSlot, now: float) -> None:
        """A new agent for ``s``; Ray places it where the node's resource is."""
        s.actor = self.agent_cls.options(
            resources={node_resource(s.name): 1}, num_cpus=0, max_restarts=0,
            name=None).remote(self.plan, s.opts)
        s.start_ref, s.report_ref, s.report = s.actor.start.remote(), None, None
        s.launched_at, s.phase, s.ray_node = now, NodePhase.STARTING, None

    def _drop_agent(self, s: NodeSlot) -> None:
        if s.actor is not None:
            try:
                self.ray.kill(s.actor, no_restart=True)
            except Exception:  # noqa: BLE001 (already dead: nothing to kill)
                pass
        s.actor = s.start_ref = s.report_ref = None

    def _poll(self, s: NodeSlot, now: float) -> None:
        """Advance one node: its start call, its report, loss checks."""
        if s.start_ref is not None and not self._poll_start(s, now):
            return
        if s.report_ref is None:
            s.report_ref, s.asked_at = s.actor.report.remote(), now
        done, _ = self.ray.wait([s.report_ref], timeout=0)
        if done:
            ref, s.report_ref = s.report_ref, None
            try:
                rep = self.ray.get(ref)
            except self.ray.exceptions.ActorUnavailableError:
                pass  # transient (restarting connection); silence counts below
            except self.ray.exceptions.RayActorError as exc:
                return self._lose(s, f"its agent died: {_why(exc)}", now)
            else:
                s.answered_at = now
                self._on_report(s, rep)
        if now - s.answered_at > self.unresponsive_s:
            return self._lose(s, f"its agent did not answer for {self.unresponsive_s:.0f} s",
                              now)
        if s.ray_node is not None and now - s.checked_at >= CLUSTER_POLL_S:
            s.checked_at = now
            alive = {r.node_id for r in self._cluster(now) if r.alive}
            if s.ray_node.node_id not in alive or not raylet_up(s.ray_node):
                self._lose(s, f"Ray node {s.ray_node.node_id[:8]} at {s.ray_node.ip} is down",
                           now)

    def _poll_start(self, s: NodeSlot, now: float) -> bool:
        """True once the agent's start call has returned (its node is then known)."""
        done, _ = self.ray.wait([s.start_ref], timeout=0)
        if not done:
            if now - s.launched_at > PLACEMENT_S and s.returns == 0:
                raise DeployError(f"node {s.name}: its agent was not placed within "
                                  f"{PLACEMENT_S:.0f} s", hint=f"is resource "
                                  f"{node_resource(s.name)} held by another deployment?")
            return False
        ref, s.start_ref = s.start_ref, None
        try:
            _ip, node_id = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._lose(s, f"its agent died while starting: {_why(exc)}", now)
            return False
        except Exception as exc:  # noqa: BLE001 (the agent's DeployError, wrapped by Ray)
            raise DeployError(f"node {s.name}: {_why(exc)}") from None
        s.answered_at = now
        s.ray_node = next((r for r in self._cluster(now, force=True)
                           if r.node_id == node_id), None)
        return True

    def _on_report(self, s: NodeSlot, rep: AgentReport) -> None:
        for ev in rep.events:
            text = f"[{s.name}] {ev.text}"
            (self.obs.warn if ev.level == "warn" else self.obs.note)(text)
        s.report = rep
        if rep.phase is AgentPhase.FAILED:
            if self._phase is Phase.STARTING:
                raise DeployError(f"node {s.name}: {rep.error}")
            s.phase = NodePhase.FAILED
            self.obs.warn(f"error: node {s.name} failed: {rep.error}; models affected: "
                          f"{', '.join(s.models)}")
        elif rep.phase is AgentPhase.SERVING and s.phase is NodePhase.STARTING:
            s.phase = NodePhase.SERVING
            if s.returns:
                self.obs.note(f"node {s.name} is serving again: {', '.join(s.models)}")

    def _lose(self, s: NodeSlot, why: str, now: float) -> None:
        if self._phase is Phase.STARTING:
            raise DeployError(f"node {s.name} lost while starting ({why})")
        self._drop_agent(s)
        s.phase = NodePhase.LOST
        for m in impact(self.plan, s.name, ready_engines(self.slots)):
            self.obs.warn(m.line(s.name, why))
        delay = s.backoff.on_crash(now)
        if delay is None:
            s.phase = NodePhase.FAILED
            self.obs.warn(f"error: node {s.name} lost {s.backoff.recent} times within "
                          f"{self.opts.restart.window_s:.0f} s; not restarting it")
            return
        s.retry_at = now + delay
        self._save()

    def _maybe_return(self, s: NodeSlot, now: float) -> None:
        if now < s.retry_at:
            return
        host = hosts_of(self._cluster(now), [s.name]).get(s.name)
        if host is None or not raylet_up(host):
            return
        s.returns += 1
        ids = ", ".join(e.engine_id for e in s.engines)
        self.obs.note(f"node {s.name} is reachable (Ray node {host.node_id[:8]} at {host.ip}); "
                      f"starting a new agent and its engines: {ids}")
        self._launch(s, now)

    # ------------------------------------------------------------------ start
    def _start(self) -> None:
        now = time.monotonic()
        for s in self.slots.values():
            self._launch(s, now)
        deadline = now + self.opts.startup_timeout_s + PLACEMENT_S
        while not all(s.phase is NodePhase.SERVING for s in self.slots.values()):
            if self._stop_reason is not None:
                raise DeployError(f"interrupted while starting ({self._stop_reason})")
            now = time.monotonic()
            if now > deadline:
                late = [n for n, s in self.slots.items() if s.phase is not NodePhase.SERVING]
                raise EngineStartError(f"nodes {', '.join(late)} not serving within "
                                       f"{self.opts.startup_timeout_s + PLACEMENT_S:.0f} s")
            for s in self.slots.values():
                self._poll(s, now)
            self.obs.progress(self._rows(now))
            time.sleep(TICK_S)
        self._start_gateway()

    def _rows(self, now: float) -> list[EngineRow]:
        rows = []
        for s in self.slots.values():
            rep = s.report
            for e in s.engines:
                r = rep.engine(e.engine_id) if rep else None
                rows.append(EngineRow(e.engine_id, e.model, r.port if r else 0, e.gpus,
                                      e.sm_pct, r.phase if r else EnginePhase.STARTING,
                                      now - s.launched_at))
        return rows

    def _current_endpoints(self) -> dict[str, Endpoint]:
        out = dict(self.endpoints)
        for s in self.slots.values():
            for r in (s.report.engines if s.report else ()):
                out[r.engine_id] = (r.host, r.port)
        return out

    def _start_gateway(self, timeout_s: float = 60.0) -> None:
        self.endpoints = self._current_endpoints()
        cfg = ray_gateway_config(self.plan, self.endpoints, self.opts)
        self.run_dir.gateway_config.write_text(cfg.model_dump_json(indent=1))
        spec = gateway_spec(self.run_dir.gateway_config, self.run_dir.logs / "gateway.log",
                            self.opts.host, self.opts.port)
        self.gateway = ManagedProcess(spec, ready_check=gateway_ready, probe_interval_s=0.1)
        self.gateway.start()
        url = wait_ready(self.gateway, timeout_s)
        if url:
            self.gateway_url = url
        self._save()

    # ------------------------------------------------------------------ supervise
    def _supervise(self) -> None:
        gw = GatewayRestarts(self.opts.restart, self.obs.warn)
        while self._stop_reason is None:
            now = time.monotonic()
            for s in self.slots.values():
                if s.phase is NodePhase.LOST:
                    self._maybe_return(s, now)
                elif s.phase in (NodePhase.STARTING, NodePhase.SERVING):
                    self._poll(s, now)
            assert self.gateway is not None
            if gw.due(self.gateway, now):
                self._start_gateway()
            elif not gw.pending and self._current_endpoints() != self.endpoints:
                self.obs.note("engine addresses changed; restarting the gateway with them")
                self.gateway.stop(self.opts.gateway_drain_s + 5)
                self._start_gateway()
            if all(s.phase is NodePhase.FAILED for s in self.slots.values()):
                raise EngineGaveUp("every node has failed; nothing left to serve")
            if now - self._saved_at > CLUSTER_POLL_S:
                self._save()
            time.sleep(TICK_S)

    # ------------------------------------------------------------------ stop
    def _shutdown(self) -> None:
        self._phase = Phase.STOPPING
        self._save_quietly()
        if self.gateway is not None:
            self.gateway.stop(self.opts.gateway_drain_s + 5)
        for s in self.slots.values():
            if s.start_ref is not None:  # never placed or still starting: nothing to drain
                done, _ = self.ray.wait([s.start_ref], timeout=0)
                if not done or s.phase is NodePhase.LOST:
                    self._drop_agent(s)
                    continue
                try:
                    self.ray.get(s.start_ref)  # read it: Ray logs unread errors
                except Exception:  # noqa: BLE001 (a failed start has nothing to stop)
                    self._drop_agent(s)
                s.start_ref = None
        live = {n: s for n, s in self.slots.items() if s.actor is not None}
        wait_s = self.opts.stop_timeout_s + 30
        refs = {n: s.actor.stop.remote(wait_s) for n, s in live.items()}
        if refs:
            try:
                self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=wait_s + 10)
            except Exception:  # noqa: BLE001 (a lost node: nothing more we can do)
                pass
        for n, ref in refs.items():
            s = live[n]
            try:
                rep = self.ray.get(ref, timeout=0.1)
                s.report = rep
                for ev in rep.events:
                    (self.obs.warn if ev.level == "warn" else self.obs.note)(f"[{n}] {ev.text}")
                if rep.phase is not AgentPhase.STOPPED and rep.phase is not AgentPhase.FAILED:
                    self.obs.warn(f"node {n}: its agent did not finish stopping")
            except Exception as exc:  # noqa: BLE001
                self.obs.warn(f"node {n}: no answer to stop ({_why(exc)}); its engines die "
                              "with its agent")
            self._drop_agent(s)
            if s.phase is not NodePhase.FAILED:
                s.phase = NodePhase.STOPPED
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self._phase = Phase.FAILED if self._error else Phase.STOPPED
        self._save_quietly()

    # ------------------------------------------------------------------ state
    def state(self) -> DeployState:
        """For `fineserve status/stop --run-dir RUN`: the driver and gateway run here; engines
        are remote (no local pid; logs in RUN/nodes/<node>/logs on their host)."""
        by_id = {e.engine_id: e for e in self.plan.engines}
        engines = []
        for s in self.slots.values():
            for r in (s.report.engines if s.report else ()):
                e = by_id[r.engine_id]
                engines.append(EngineRecord(
                    engine_id=r.engine_id, model=r.model, port=r.port, gpus=list(e.gpus),
                    sm_pct=e.sm_pct, log=f"{r.host}:{s.opts.run_dir}/logs/engine-{r.engine_id}"
                    ".log", phase=r.phase, restarts=r.restarts, last_exit=r.last_exit))
        gw = self.gateway
        return DeployState(
            mode=self.opts.mode, phase=self._phase, deploy=ProcRecord.of(self._me),
            gateway_url=self.gateway_url,
            gateway=ProcRecord.of(gw.proc) if gw and gw.proc and gw.running else None,
            engines=engines, error=self._error)

    def _save(self) -> None:
        self.run_dir.write_state(self.state())
        self._saved_at = time.monotonic()

    def _save_quietly(self) -> None:
        try:
            if self.run_dir.root.exists():
                self._save()
        except OSError:
            pass


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that refuses connections would make ray.init retry for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto" or a ray:// client address: let Ray judge
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise DeployError(f"--ray {address}: no Ray head answers there ({exc.strerror or exc})",
                          hint="start one with `ray start --head` and pass its HOST:PORT"
                          ) from None


def _why(exc: BaseException) -> str:
    """One line from a (Ray-wrapped) exception: a FineserveError's message and hint, else the
    first sentence of Ray's text."""
    cause = getattr(exc, "cause", None) or exc
    msg = getattr(cause, "message", None)
    if isinstance(msg, str):
        hint = getattr(cause, "hint", None)
        return msg + (f" (to fix: {hint})" if hint else "")
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= 160 else text[:157] + "..."
