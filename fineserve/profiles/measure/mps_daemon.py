"""The profiler's MPS daemon: the runtime's controller (``fineserve.runtime.mps``) on one group.

The group holds every GPU this process may use (``CUDA_VISIBLE_DEVICES`` if set, else all NVML
sees), named by UUID for the daemon and its clients alike, since a client's device list is read
relative to the daemon's. A daemon already answering on the group's pipe is reused and left
running; only one started here is quit again. Runs in the project's environment, never in the
engine worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fineserve.errors import FineserveError
from fineserve.runtime.errors import DeployError
from fineserve.runtime.mps import MpsController, MpsGroup, find_binaries, make_group
from fineserve.runtime.nvml import probe_gpus


class MpsError(FineserveError):
    """The MPS daemon could not be started or reached."""


@dataclass(frozen=True, slots=True)
class MpsDaemon:
    group: MpsGroup
    controller: MpsController
    started_here: bool

    def client_env(self, sm_pct: float) -> dict[str, str]:
        """Environment of an engine process holding ``sm_pct`` % of the SMs."""
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(self.group.uuids),
            "CUDA_MPS_PIPE_DIRECTORY": str(self.group.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.group.log_dir),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": f"{sm_pct:g}",
        }


def visible_uuids(visible: str | None, nvml_uuids: list[str]) -> tuple[str, ...]:
    """``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) as UUIDs; every GPU when unset."""
    if visible is None:
        return tuple(nvml_uuids)
    out = []
    for entry in (e.strip() for e in visible.split(",") if e.strip()):
        if entry.isdigit():
            if int(entry) >= len(nvml_uuids):
                raise MpsError(f"CUDA_VISIBLE_DEVICES: GPU {entry} is not on this host "
                               f"({len(nvml_uuids)} GPUs)", hint="fix CUDA_VISIBLE_DEVICES")
            entry = nvml_uuids[int(entry)]
        out.append(entry)
    return tuple(out)


def ensure_daemon(root: Path) -> MpsDaemon:
    """Reuse the daemon answering on the group's pipe under ``root``, or start one there.

    Raises:
        MpsError: no GPU, or the MPS binaries are missing.
        DeployError: the daemon did not come up (the hint names its log).
    """
    try:
        uuids = visible_uuids(os.environ.get("CUDA_VISIBLE_DEVICES"),
                              [g.uuid for g in probe_gpus()])
        binaries = find_binaries()
    except DeployError as exc:
        raise MpsError(exc.message, hint="run on a GPU host with the NVIDIA driver utilities, "
                       "or profile with --cpu") from None
    if not uuids:
        raise MpsError("MPS: no GPU is visible", hint="fix CUDA_VISIBLE_DEVICES")
    group = make_group(tuple(range(len(uuids))), uuids, root)
    controller = MpsController(binaries)
    return MpsDaemon(group, controller, started_here=controller.start(group))


def stop_daemon(daemon: MpsDaemon) -> None:
    """Quit the daemon if this process started it; leave anyone else's alone."""
    if daemon.started_here:
        daemon.controller.stop(daemon.group)
