"""One plan node's part of the deployment, run by the single-host runtime without a gateway.

The node runs ``deploy.Deployment(..., gateway=False)`` (MPS daemons, engines, supervision:
backoff restarts, MPS-group fault domains, give-up budget, state file); the Ray driver runs
the gateway. Engines listen on the node's IP instead of loopback (the gateway is on
another host) and run under ``orphan_guard`` so they die with their agent. Everything here
works without Ray; ``agent.py`` wraps it in an actor.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fineserve.planner.schema import Plan
from fineserve.runtime.engine_args import EngineLaunch
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.prepare import Prepared
from fineserve.runtime.ray.orphan_guard import guard_argv

NODES_DIR = "nodes"  # RUN/nodes/<node>/ is a node's own run directory, on its host


@dataclass(frozen=True, slots=True)
class HostLaunch(EngineLaunch):
    """An engine reachable from other hosts: bound to ``host``, environment without the
    variables Ray sets for its workers (``drop_env``)."""

    host: str = "127.0.0.1"
    drop_env: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def full_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        src = os.environ if base is None else base
        clean = {k: v for k, v in src.items() if k not in self.drop_env}
        return EngineLaunch.full_env(self, clean)  # explicit: zero-arg super() and slots


def node_options(opts: DeployOptions, plan: Plan, node: str, port_base: int) -> DeployOptions:
    """The driver's options as one node's agent uses them: its own run directory (same path
    on every host, below RUN/nodes/), its port range, no gateway (port 0 is never busy), and
    only the --model-dir entries of its own models (the others are not its concern)."""
    names = {n for e in plan.engines if e.node == node
             for n in (e.model, plan.instance.model(e.model).ref)}
    return replace(opts, run_dir=Path(opts.run_dir) / NODES_DIR / node, node=node,
                   engine_port_base=port_base, port=0, host="127.0.0.1", api_keys=(),
                   model_dirs=tuple((k, p) for k, p in opts.model_dirs if k in names))


def ray_added_env(environ: dict[str, str], raylet_environ: dict[str, str] | None
                  ) -> tuple[str, ...]:
    """Variables a Ray worker has that an engine must not inherit: RAY_*, Ray's breakpoint
    hook, and OMP_NUM_THREADS when Ray set it (absent from the raylet's environment; it pins
    a CPU engine to one thread)."""
    out = [k for k in environ if k.startswith("RAY_")]
    if environ.get("PYTHONBREAKPOINT", "").startswith("ray."):
        out.append("PYTHONBREAKPOINT")
    if "OMP_NUM_THREADS" in environ and (raylet_environ is None
                                         or "OMP_NUM_THREADS" not in raylet_environ):
        out.append("OMP_NUM_THREADS")
    return tuple(sorted(out))


def read_environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def bind_to_host(prep: Prepared, host: str, drop_env: tuple[str, ...] = (),
                 guard_parent: int | None = None) -> Prepared:
    """Engines of ``prep`` listening on ``host`` (and under the orphan guard of process
    ``guard_parent``, the agent, when given)."""
    launches = []
    for x in prep.launches:
        argv = list(x.argv)
        i = argv.index("--host")
        argv[i + 1] = host
        wrapped = guard_argv(tuple(argv), sys.executable, guard_parent) \
            if guard_parent is not None else tuple(argv)
        base = {f.name: getattr(x, f.name) for f in fields(EngineLaunch)}
        launches.append(HostLaunch(**{**base, "argv": wrapped}, host=host, drop_env=drop_env))
    return replace(prep, launches=tuple(launches))
