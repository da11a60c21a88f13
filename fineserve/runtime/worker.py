"""One child process the runtime owns (a vLLM engine or the gateway): start, watch, stop.

The process runs in its own process group with its output appended to its log file; it is
"ready" once its readiness probe passes (``/health`` answering 200 for an engine). Health is
probed with a short blocking HTTP GET: the deploy loop is single-threaded and probes each
process at most every ``probe_interval_s``.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fineserve.runtime import procs
from fineserve.runtime.errors import DeployError
from fineserve.runtime.procs import ProcId


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (host, port). SO_REUSEADDR ignores TIME_WAIT leftovers
    of an engine we just stopped, exactly as the engine's own server will."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback)
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str  # engine id or "gateway"
    argv: tuple[str, ...]
    env: dict[str, str]
    log: Path
    port: int
    host: str = "127.0.0.1"
    ready_url: str = ""  # GET -> 200 means ready ("" = use ready_check only)


class ManagedProcess:
    """A child we started. Never signals anything but the exact process (group) it started."""

    def __init__(self, spec: ProcessSpec,
                 ready_check: Callable[[ManagedProcess], bool] | None = None,
                 probe_interval_s: float = 1.0) -> None:
        self.spec = spec
        self._ready_check = ready_check
        self.probe_interval_s = probe_interval_s
        self.popen: subprocess.Popen | None = None
        self.proc: ProcId | None = None
        self.started_at = 0.0  # time.monotonic() of the last start
        self.exit_code: int | None = None  # of the current run (None while it runs)
        self.last_exit: int | None = None  # of the latest run that ended (kept over restarts)
        self._last_probe = 0.0
        self._log_offset = 0

    def start(self) -> None:
        """Start it. Raises DeployError when its port is already taken."""
        if port_in_use(self.spec.host, self.spec.port):
            raise DeployError(f"{self.spec.name}: port {self.spec.port} is already in use",
                              hint="stop what listens there, or choose other ports "
                                   "(--port / --engine-port-base)")
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log, "ab") as f:
            f.write(f"\n===== fineserve: starting {self.spec.name} at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        self._log_offset = self.spec.log.stat().st_size
        self.popen = procs.spawn(list(self.spec.argv), self.spec.env, self.spec.log)
        self.proc = procs.identify(self.popen.pid)
        self.started_at = time.monotonic()
        self.exit_code = None
        self._last_probe = 0.0

    def poll(self) -> int | None:
        """Exit code once it has exited (and been reaped), else None."""
        if self.popen is None:
            return self.exit_code
        code = self.popen.poll()
        if code is not None:
            self.exit_code = self.last_exit = code
        return code

    @property
    def running(self) -> bool:
        return self.popen is not None and self.poll() is None

    def probe(self, now: float, force: bool = False) -> bool | None:
        """Readiness, checked at most every probe_interval_s (None = not probed this time)."""
        if not force and now - self._last_probe < self.probe_interval_s:
            return None
        self._last_probe = now
        if self._ready_check is not None:
            return self._ready_check(self)
        return http_ok(self.spec.ready_url)

    def log_since_start(self) -> str:
        """Output of the current run (for readiness lines such as 'gateway ready on')."""
        try:
            with open(self.spec.log, "rb") as f:
                f.seek(self._log_offset)
                return f.read(256 * 1024).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM its group, SIGKILL after ``timeout_s``. True if it had to be killed."""
        if self.proc is None:
            return False
        killed = procs.terminate(self.proc, timeout_s, self.popen)
        self.poll()
        return killed

    def send_term(self) -> None:
        """SIGTERM without waiting (to stop many processes in parallel)."""
        if self.proc is not None:
            procs.signal_group(self.proc, 15)
