"""Ray is optional: import it on demand, or fail with one line naming the extra."""

from __future__ import annotations

from types import ModuleType

from fineserve.runtime.errors import DeployError

EXTRA = "ray"


class RayMissing(DeployError):
    """``--ray`` was asked for but Ray is not installed."""


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayMissing("--ray: Ray is not installed",
                         hint=f"pip install 'fineserve[{EXTRA}]' (Ray >= 2.40) on the driver "
                              "and on every node") from None
    return ray
