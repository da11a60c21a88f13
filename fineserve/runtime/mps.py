"""One MPS control daemon per GPU group, with its own pipe and log directory.

A group is a set of GPUs linked by tensor-parallel engines (usually one GPU): a process is the
client of exactly one daemon (the one on its ``CUDA_MPS_PIPE_DIRECTORY``), and a TP engine's
rank processes inherit one environment, so its GPUs must share a daemon; and a GPU may have
only one MPS server (EXCLUSIVE_PROCESS), so every engine on any of those GPUs joins that same
daemon. Each daemon runs with ``CUDA_VISIBLE_DEVICES`` = its GPUs' UUIDs and the MPS server
renumbers them 0..n-1 for its clients (``MpsGroup.client_devices``); its pipe directory is in
the run directory, so it never meets a system-wide daemon (``/tmp/nvidia-mps``) or another
deployment's. A daemon
already answering on our pipe is reused and never stopped; ``stop`` only quits daemons this
runtime started (``echo quit | nvidia-cuda-mps-control`` with the same environment).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fineserve.runtime.errors import DeployError

CONTROL = "nvidia-cuda-mps-control"
SERVER = "nvidia-cuda-mps-server"
EXTRA_DIRS = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/cuda/bin")
# sun_path holds 108 bytes; the daemon adds "/control" and longer names below the pipe dir
MAX_PIPE_DIR = 80


@dataclass(frozen=True, slots=True)
class MpsBinaries:
    control: Path
    server: Path


@dataclass(frozen=True, slots=True)
class MpsGroup:
    name: str  # "gpu0", "gpu0-1"
    gpus: tuple[int, ...]
    uuids: tuple[str, ...]
    pipe_dir: Path
    log_dir: Path

    def env(self, base: dict[str, str] | None = None, path_dir: Path | None = None
            ) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(CUDA_VISIBLE_DEVICES=",".join(self.uuids),
                   CUDA_MPS_PIPE_DIRECTORY=str(self.pipe_dir),
                   CUDA_MPS_LOG_DIRECTORY=str(self.log_dir))
        if path_dir is not None:  # the daemon starts the server binary from PATH
            env["PATH"] = f"{path_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def client_devices(self, gpus: tuple[int, ...]) -> tuple[int, ...]:
        """A client's ``CUDA_VISIBLE_DEVICES`` for host GPUs ``gpus``: their positions in this
        daemon's device list (the server remaps them; host indices or UUIDs would be wrong).

        Raises DeployError for a GPU outside the group (a TP engine split across daemons).
        """
        missing = [g for g in gpus if g not in self.gpus]
        if missing:
            raise DeployError(f"MPS group {self.name} does not hold GPU "
                              f"{', '.join(map(str, missing))}",
                              hint="an engine's GPUs must all be in one MPS group")
        return tuple(self.gpus.index(g) for g in gpus)


def find_binaries(path: str | None = None) -> MpsBinaries:
    """Locate the MPS control and server binaries (PATH, then /usr/local/nvidia/bin...)."""
    search = os.pathsep.join([path if path is not None else os.environ.get("PATH", ""),
                              *EXTRA_DIRS])
    control, server = shutil.which(CONTROL, path=search), shutil.which(SERVER, path=search)
    if control is None or server is None:
        missing = CONTROL if control is None else SERVER
        raise DeployError(f"MPS: {missing} not found (searched PATH and "
                          f"{', '.join(EXTRA_DIRS)})",
                          hint="install the NVIDIA driver's compute utilities, or deploy "
                               "with --no-mps (time-sliced sharing)")
    return MpsBinaries(Path(control), Path(server))


def gpu_groups(engine_gpus: Iterable[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Connected components of GPUs linked by engines (union-find), sorted."""
    parent: dict[int, int] = {}

    def root(g: int) -> int:
        while parent.setdefault(g, g) != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for gpus in engine_gpus:
        for g in gpus[1:]:
            parent[root(g)] = root(gpus[0])
        root(gpus[0])
    comps: dict[int, list[int]] = {}
    for g in parent:
        comps.setdefault(root(g), []).append(g)
    return sorted(tuple(sorted(c)) for c in comps.values())


def group_name(gpus: tuple[int, ...]) -> str:
    return "gpu" + "-".join(str(g) for g in gpus)


def make_group(gpus: tuple[int, ...], uuids: tuple[str, ...], run_root: Path) -> MpsGroup:
    """Pipe under RUN/mps/<group>, or /tmp/fineserve-mps-<hash>/<group> if RUN is too long."""
    name = group_name(gpus)
    pipe = run_root / "mps" / name
    if len(str(pipe)) > MAX_PIPE_DIR:
        digest = hashlib.sha1(str(run_root).encode()).hexdigest()[:10]
        pipe = Path("/tmp") / f"fineserve-mps-{digest}" / name
    return MpsGroup(name, gpus, uuids, pipe, run_root / "logs" / f"mps-{name}")


class MpsController:
    """Start / detect / stop daemons. ``run`` is subprocess.run (a fake in unit tests)."""

    def __init__(self, binaries: MpsBinaries, run=subprocess.run,
                 command_timeout_s: float = 10.0) -> None:
        self.bin = binaries
        self._run = run
        self._timeout = command_timeout_s

    def _command(self, group: MpsGroup, text: str | None, *args: str
                 ) -> subprocess.CompletedProcess:
        try:
            return self._run([str(self.bin.control), *args], input=text, text=True,
                             capture_output=True, timeout=self._timeout,
                             env=group.env(path_dir=self.bin.server.parent))
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([str(self.bin.control)], 124, "", "timeout")

    def is_running(self, group: MpsGroup) -> bool:
        """A daemon answers on this group's pipe (the control socket alone may be stale)."""
        if not (group.pipe_dir / "control").exists():
            return False
        return self._command(group, "get_server_list\n").returncode == 0

    def start(self, group: MpsGroup, wait_s: float = 15.0) -> bool:
        """Start the group's daemon; True if we started it, False if one already ran there.

        Raises DeployError (with the daemon's log) when it does not come up.
        """
        if self.is_running(group):
            return False
        group.pipe_dir.mkdir(parents=True, exist_ok=True)
        group.log_dir.mkdir(parents=True, exist_ok=True)
        res = self._command(group, None, "-d")
        if res.returncode != 0:
            raise DeployError(f"MPS daemon for {group.name} did not start "
                              f"(exit {res.returncode}: {(res.stderr or res.stdout).strip()})",
                              hint=f"see {group.log_dir}/control.log")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.is_running(group):
                return True
            time.sleep(0.2)
        raise DeployError(f"MPS daemon for {group.name} does not answer on {group.pipe_dir}",
                          hint=f"see {group.log_dir}/control.log")

    def stop(self, group: MpsGroup, wait_s: float = 15.0) -> bool:
        """Quit the group's daemon (call only for daemons we started); True when it is gone."""
        if not self.is_running(group):
            return True
        self._command(group, "quit\n")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not self.is_running(group):
                return True
            time.sleep(0.2)
        return False
