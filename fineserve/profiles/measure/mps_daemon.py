"""An MPS control daemon for the profiler's engines: reused if one answers, else started.

Only a daemon this module started is stopped again, through its own pipe folder (``quit`` on
the control pipe), never by process name. The runtime has its own MPS manager; this one is the
profiler's, small on purpose, and follows the same folder convention.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fineserve.errors import FineserveError

CONTROL = "nvidia-cuda-mps-control"
_SEARCH = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/cuda/bin")


class MpsError(FineserveError):
    """The MPS daemon could not be started or reached."""


@dataclass(frozen=True, slots=True)
class MpsDaemon:
    pipe_dir: Path
    log_dir: Path
    started_here: bool

    def client_env(self, sm_pct: float) -> dict[str, str]:
        """Environment of an engine process holding ``sm_pct`` % of the SMs."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": f"{sm_pct:g}",
        }


def _control_binary() -> str:
    found = shutil.which(CONTROL)
    if found:
        return found
    for folder in _SEARCH:
        candidate = Path(folder) / CONTROL
        if candidate.exists():
            return str(candidate)
    raise MpsError(f"{CONTROL} not found", hint="install the NVIDIA driver utilities, or --no-mps")


def _control(binary: str, pipe_dir: Path, log_dir: Path, command: str | None) -> bool:
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe_dir),
           "CUDA_MPS_LOG_DIRECTORY": str(log_dir)}
    args = [binary] if command is not None else [binary, "-d"]
    try:
        done = subprocess.run(args, input=command, env=env, capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_daemon(root: Path) -> MpsDaemon:
    """Reuse the daemon answering on ``root/pipe``, or start one there.

    Raises:
        MpsError: the control binary is missing or the daemon did not come up.
    """
    binary = _control_binary()
    pipe_dir, log_dir = root / "pipe", root / "log"
    if (pipe_dir / "control").exists() and _control(binary, pipe_dir, log_dir,
                                                    "get_server_list\n"):
        return MpsDaemon(pipe_dir, log_dir, started_here=False)
    pipe_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    if not _control(binary, pipe_dir, log_dir, None):
        raise MpsError(f"{CONTROL} -d failed (pipe {pipe_dir})",
                       hint=f"see {log_dir}/control.log; another MPS daemon may own the GPU")
    for _ in range(50):
        if _control(binary, pipe_dir, log_dir, "get_server_list\n"):
            return MpsDaemon(pipe_dir, log_dir, started_here=True)
        time.sleep(0.1)
    raise MpsError(f"MPS daemon on {pipe_dir} does not answer", hint=f"see {log_dir}")


def stop_daemon(daemon: MpsDaemon) -> None:
    """Quit the daemon if this process started it; leave anyone else's alone."""
    if daemon.started_here:
        _control(_control_binary(), daemon.pipe_dir, daemon.log_dir, "quit\n")
