"""``fineserve deploy PLAN --ray ADDRESS``: the multi-node deployment (docs/ray.md).

``run_on_ray`` is what ``deploy_cmd._deploy`` calls when ``--ray`` is given (same options,
same observer).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
