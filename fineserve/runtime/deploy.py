"""``fineserve deploy``: start MPS daemons, engines and the gateway; supervise; shut down.

Lifecycle (one foreground process, single-threaded loop)::

    prepare (checks, nothing started) -> MPS daemons -> engines (all at once, wait /health)
      -> gateway (wait for its ready line) -> RUNNING: supervise every tick
      -> stop requested (SIGINT/SIGTERM, `fineserve stop`) or fatal error
      -> gateway (drains) -> engines (SIGTERM, SIGKILL after timeout) -> our MPS daemons

A failure while starting stops whatever was started and raises; nothing is left running.
While running, an engine that exits (or stops answering /health) is restarted after an
exponential backoff - together with every engine of its MPS group (supervisor.py); one that
keeps crashing is given up (FAILED) and the rest keep serving. The state file is rewritten on
every change for ``fineserve status`` / ``stop``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fineserve.planner.planfile import dump_plan
from fineserve.planner.schema import Plan
from fineserve.runtime import procs
from fineserve.runtime.engine_args import EngineLaunch
from fineserve.runtime.engine_report import (
    EngineReport,
    WeightCheck,
    check_weights,
    read_engine_report,
)
from fineserve.runtime.errors import DeployError, EngineGaveUp, EngineStartError
from fineserve.runtime.gateway_process import (
    GatewayRestarts,
    gateway_ready,
    gateway_spec,
    log_hint,
    wait_ready,
)
from fineserve.runtime.kvslab.deploy_pool import (
    create_ledgers,
    plugin_path_dir,
    remove_ledgers,
    write_plugin_dist,
)
from fineserve.runtime.mps import MpsController, MpsGroup
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.prepare import Prepared, prepare
from fineserve.runtime.signals import install_signals, restore_signals
from fineserve.runtime.state import (
    DeployState,
    EnginePhase,
    EngineRecord,
    MpsRecord,
    Phase,
    ProcRecord,
    RunDir,
)
from fineserve.runtime.supervisor import Backoff, restart_scope
from fineserve.runtime.worker import ManagedProcess, ProcessSpec

TICK_S = 0.25


class Observer(Protocol):
    """What the deployment tells its user (the CLI renders it with rich)."""

    def note(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def progress(self, rows: list[EngineRow]) -> None: ...  # while engines start


@dataclass(frozen=True, slots=True)
class EngineRow:
    engine_id: str
    model: str
    port: int
    gpus: tuple[int, ...]
    sm_pct: int
    phase: EnginePhase
    seconds: float  # since its (re)start


class _Engine:
    """Runtime bookkeeping of one engine (mutable; lives only inside Deployment)."""

    def __init__(self, launch: EngineLaunch, proc: ManagedProcess, backoff: Backoff) -> None:
        self.launch, self.proc, self.backoff = launch, proc, backoff
        self.phase = EnginePhase.STARTING
        self.restart_at = 0.0
        self.failed_probes = 0
        self.loaded: EngineReport | None = None  # from its log, once ready
        self.weights: WeightCheck | None = None


class Deployment:
    def __init__(self, plan: Plan, opts: DeployOptions, observer: Observer,
                 prepared: Prepared | None = None, gateway: bool = True) -> None:
        """``gateway=False``: engines only (a node of a Ray deployment, whose driver runs the
        gateway); ``run``'s ``on_ready`` then fires once every engine answers /health."""
        self.plan, self.opts, self.obs = plan, opts, observer
        self.with_gateway = gateway
        self.run_dir = RunDir(opts.run_dir)
        self.prepared = prepared
        self.engines: dict[str, _Engine] = {}
        self.gateway: ManagedProcess | None = None
        self.gateway_url = f"http://{opts.host}:{opts.port}" if gateway else ""
        self.mps: MpsController | None = None
        self.mps_ours: dict[str, bool] = {}  # group name -> started by us
        self._stop_reason: str | None = None
        self._phase = Phase.STARTING
        self._error = ""
        self._deploy_proc = procs.identify(os.getpid())

    # ------------------------------------------------------------------ public
    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = self._stop_reason or reason

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Deploy, serve until asked to stop, shut down. Raises DeployError subclasses."""
        from fineserve.runtime.control import cleanup_stale

        cleanup_stale(self.run_dir)  # refuses if a live deployment owns the run dir
        self.run_dir.create()
        self.run_dir.plan.write_text(dump_plan(self.plan))
        prep = self.prepared or prepare(self.plan, self.opts)
        self.prepared = prep
        for n in prep.notes:
            if "recommended" in n:
                self.obs.warn(n)
            else:
                self.obs.note(n)
        self.run_dir.gateway_config.write_text(prep.gateway.model_dump_json(indent=1))
        old = install_signals(self.request_stop)
        try:
            self._start(prep)
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

    # ------------------------------------------------------------------ start
    def _start(self, prep: Prepared) -> None:
        if prep.mps_groups:
            assert prep.mps_binaries is not None
            self.mps = MpsController(prep.mps_binaries)
            for g in prep.mps_groups:
                self.mps_ours[g.name] = self.mps.start(g)
                self.obs.note(f"MPS daemon for {g.name}: "
                              f"{'started' if self.mps_ours[g.name] else 'already running'} "
                              f"(pipe {g.pipe_dir})")
        if prep.kv_pools:  # before any engine: each joins its GPU's ledger while starting
            write_plugin_dist(plugin_path_dir(self.run_dir.root))
            create_ledgers(prep.kv_pools)
            for p in prep.kv_pools:
                self.obs.note(f"KV pool ledger for GPU {p.gpu_index}: {p.ledger}")
        for x in prep.launches:
            spec = ProcessSpec(x.engine_id, x.argv, x.full_env(),
                               self.run_dir.engine_log(x.engine_id), x.port,
                               ready_url=f"{x.url}/health")
            self.engines[x.engine_id] = _Engine(x, ManagedProcess(spec), Backoff(
                self.opts.restart))
        self._save()
        for e in self.engines.values():
            e.proc.start()
        self._save()
        self._wait_engines_ready()
        if self.with_gateway:
            self._start_gateway()

    def _wait_engines_ready(self) -> None:
        while True:
            self._check_stop()
            now = time.monotonic()
            for eid, e in self.engines.items():
                if e.phase is EnginePhase.READY:
                    continue
                code = e.proc.poll()
                if code is not None:
                    raise EngineStartError(
                        f"engine {eid} exited with code {code} while starting "
                        f"(log: {e.proc.spec.log})", hint=log_hint(e.proc),
                        log_path=str(e.proc.spec.log))
                if now - e.proc.started_at > self.opts.startup_timeout_s:
                    raise EngineStartError(
                        f"engine {eid} did not answer /health within "
                        f"{self.opts.startup_timeout_s:.0f} s (log: {e.proc.spec.log})",
                        hint=log_hint(e.proc), log_path=str(e.proc.spec.log))
                if e.proc.probe(now):
                    e.phase = EnginePhase.READY
                    self._check_loaded(eid, e)
                    self._save()
            self.obs.progress(self._rows())
            if all(e.phase is EnginePhase.READY for e in self.engines.values()):
                return
            time.sleep(TICK_S)

    def _check_loaded(self, eid: str, e: _Engine) -> None:
        """Read what the ready engine loaded; warn when its weight memory is not the plan's
        (dummy int4 engines once ran unquantized fp16 unnoticed)."""
        planned = next((p.weight_bytes for p in self.plan.engines if p.engine_id == eid), 0)
        e.loaded = read_engine_report(e.proc.spec.log)
        e.weights = check_weights(eid, e.loaded, planned)
        if e.weights.warning:
            self.obs.warn(f"{e.weights.warning} (log: {e.proc.spec.log})")

    def _start_gateway(self, timeout_s: float = 60.0) -> None:
        spec = gateway_spec(self.run_dir.gateway_config, self.run_dir.logs / "gateway.log",
                            self.opts.host, self.opts.port)
        self.gateway = ManagedProcess(spec, ready_check=gateway_ready, probe_interval_s=0.1)
        self.gateway.start()
        self._save()
        url = wait_ready(self.gateway, timeout_s, self._check_stop)
        if url:
            self.gateway_url = url

    def _check_stop(self) -> None:
        if self._stop_reason is not None:
            raise DeployError(f"interrupted while starting ({self._stop_reason})")

    # ------------------------------------------------------------------ supervise
    def _supervise(self) -> None:
        gw = GatewayRestarts(self.opts.restart, self.obs.warn)
        while self._stop_reason is None:
            now = time.monotonic()
            changed = False
            for eid, e in self.engines.items():
                changed |= self._tick_engine(eid, e, now)
            if self.gateway is not None and gw.due(self.gateway, now):
                self._start_gateway()
                changed = True
            if changed:
                self._save()
            if all(e.phase is EnginePhase.FAILED for e in self.engines.values()):
                where = f" of node {self.opts.node}" if self.opts.node else ""
                raise EngineGaveUp(f"every engine{where} has failed; nothing left to serve",
                                   hint=f"see the logs in {self.run_dir.logs}")
            time.sleep(TICK_S)

    def _tick_engine(self, eid: str, e: _Engine, now: float) -> bool:
        """Advance one engine's state machine; True when its record changed."""
        if e.phase is EnginePhase.FAILED:
            return False
        if e.phase is EnginePhase.RESTARTING:
            if now < e.restart_at:
                return False
            self._ensure_mps(eid)
            e.proc.start()
            e.phase, e.failed_probes = EnginePhase.STARTING, 0
            return True
        code = e.proc.poll()
        if code is None and e.phase is EnginePhase.STARTING:
            if now - e.proc.started_at > self.opts.startup_timeout_s:
                self.obs.warn(f"engine {eid} did not become healthy after restart; killing it")
                e.proc.stop(self.opts.stop_timeout_s)
                code = e.proc.poll()
            elif e.proc.probe(now):
                e.phase = EnginePhase.READY
                self.obs.note(f"engine {eid} is serving again")
                self._check_loaded(eid, e)
                return True
        elif code is None and e.phase is EnginePhase.READY:
            ok = e.proc.probe(now)
            if ok is False:
                e.failed_probes += 1
                if e.failed_probes >= self.opts.unhealthy_after:
                    self.obs.warn(f"engine {eid} stopped answering /health; killing it")
                    e.proc.stop(self.opts.stop_timeout_s)
                    code = e.proc.poll()
            elif ok:
                e.failed_probes = 0
        if code is None:
            return False
        self._on_crash(eid, code, now)
        return True

    def _on_crash(self, eid: str, code: int, now: float) -> None:
        e = self.engines[eid]
        delay = e.backoff.on_crash(now)
        if delay is None:
            e.phase = EnginePhase.FAILED
            e.proc.stop(self.opts.stop_timeout_s)  # reap; kill what it left behind
            self.obs.warn(f"error: engine {eid} crashed {e.backoff.recent} times within "
                          f"{self.opts.restart.window_s:.0f} s; giving up "
                          f"(log: {e.proc.spec.log})")
            return
        assert self.prepared is not None
        scope = restart_scope(eid, self.prepared.mps_group_of, self.opts.mode)
        others = [s for s in scope if s != eid
                  and self.engines[s].phase is not EnginePhase.FAILED]
        self.obs.warn(f"engine {eid} exited (code {code}); restarting in {delay:.0f} s"
                      + (f" with {', '.join(others)} (same MPS group)" if others else ""))
        for sid in [eid, *others]:
            s = self.engines[sid]
            s.proc.stop(self.opts.stop_timeout_s)
            s.phase, s.restart_at = EnginePhase.RESTARTING, now + delay
            if sid != eid:
                s.backoff.total += 1

    def _ensure_mps(self, eid: str) -> None:
        """Restart our MPS daemon of this engine's group if it died with the fault."""
        assert self.prepared is not None
        name = self.prepared.mps_group_of.get(eid, "")
        group = next((g for g in self.prepared.mps_groups if g.name == name), None)
        if group is None or self.mps is None or self.mps.is_running(group):
            return
        if self.mps_ours.get(name):
            self.obs.warn(f"MPS daemon for {name} is gone; starting it again")
            self.mps.start(group)

    # ------------------------------------------------------------------ stop
    def _shutdown(self) -> None:
        self._phase = Phase.STOPPING
        self._save_quietly()
        if self.gateway is not None:
            self.gateway.stop(self.opts.gateway_drain_s + 5)  # SIGTERM = drain, then exit
        for e in self.engines.values():
            e.proc.send_term()  # all at once: their shutdowns overlap
        for e in self.engines.values():
            if e.proc.stop(self.opts.stop_timeout_s):
                self.obs.warn(f"engine {e.launch.engine_id} ignored SIGTERM; killed")
            if e.phase is not EnginePhase.FAILED:
                e.phase = EnginePhase.STOPPED
        if self.prepared is not None and self.prepared.kv_pools:
            remove_ledgers(self.prepared.kv_pools)  # every engine is gone: nothing holds a lease
        if self.mps is not None and self.prepared is not None:
            for g in self.prepared.mps_groups:
                if self.mps_ours.get(g.name) and not self.mps.stop(g):
                    self.obs.warn(f"MPS daemon for {g.name} did not quit "
                                  f"(pipe {g.pipe_dir})")
        self._phase = Phase.FAILED if self._error else Phase.STOPPED
        self._save_quietly()

    # ------------------------------------------------------------------ state
    def _rows(self) -> list[EngineRow]:
        now = time.monotonic()
        return [EngineRow(eid, e.launch.model, e.launch.port, e.launch.gpus, e.launch.sm_pct,
                          e.phase, now - e.proc.started_at if e.proc.started_at else 0.0)
                for eid, e in self.engines.items()]

    def state(self) -> DeployState:
        prep = self.prepared
        groups: list[MpsGroup] = list(prep.mps_groups) if prep else []
        engines = [EngineRecord(
            engine_id=eid, model=e.launch.model, port=e.launch.port, gpus=list(e.launch.gpus),
            sm_pct=e.launch.sm_pct, log=str(e.proc.spec.log),
            mps_group=prep.mps_group_of.get(eid, "") if prep else "",
            proc=ProcRecord.of(e.proc.proc) if e.proc.proc and e.proc.running else None,
            phase=e.phase, restarts=e.backoff.total, last_exit=e.proc.last_exit,
            loaded=e.loaded, weights=e.weights,
        ) for eid, e in self.engines.items()]
        gw = self.gateway
        return DeployState(
            mode=self.opts.mode, phase=self._phase, deploy=ProcRecord.of(self._deploy_proc),
            gateway_url=self.gateway_url,
            gateway=ProcRecord.of(gw.proc) if gw and gw.proc and gw.running else None,
            engines=engines,
            mps=[MpsRecord(group=g.name, gpus=list(g.gpus), uuids=list(g.uuids),
                           pipe_dir=str(g.pipe_dir), log_dir=str(g.log_dir),
                           started_by_us=self.mps_ours.get(g.name, False)) for g in groups],
            error=self._error)

    def _save(self) -> None:
        self.run_dir.write_state(self.state())

    def _save_quietly(self) -> None:
        try:
            self._save()
        except OSError:
            pass
