"""The gateway as a child process of a deployment (single host or Ray driver): start it and
wait for its ready line, which also says the URL it serves on."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fineserve.runtime.errors import EngineGaveUp, EngineStartError
from fineserve.runtime.options import RestartPolicy
from fineserve.runtime.supervisor import Backoff
from fineserve.runtime.worker import ManagedProcess, ProcessSpec, tail

READY_LINE = re.compile(r"gateway ready on (https?://\S+)")


def gateway_ready(proc: ManagedProcess) -> bool:
    return READY_LINE.search(proc.log_since_start()) is not None


def gateway_spec(config: Path, log: Path, host: str, port: int) -> ProcessSpec:
    return ProcessSpec("gateway", (sys.executable, "-m", "fineserve.runtime.gateway",
                                   str(config)),
                       {**os.environ, "PYTHONUNBUFFERED": "1"}, log, port, host=host)


def log_hint(proc: ManagedProcess) -> str:
    last = [ln for ln in tail(proc.spec.log, 40).splitlines() if ln.strip()]
    return f"its log ends with: {last[-1].strip()[:300]}" if last else \
        f"see {proc.spec.log}"


def wait_ready(proc: ManagedProcess, timeout_s: float,
               check_stop: Callable[[], None] = lambda: None) -> str | None:
    """Block until the started gateway prints its ready line; its URL. Raises
    EngineStartError when it exits or stays silent past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        check_stop()
        if proc.probe(time.monotonic()):
            m = READY_LINE.search(proc.log_since_start())
            return m.group(1) if m else None
        code = proc.poll()
        if code is not None or time.monotonic() > deadline:
            why = f"exited with code {code}" if code is not None else \
                f"printed no ready line within {timeout_s:.0f} s"
            raise EngineStartError(f"gateway {why} (log: {proc.spec.log})",
                                   hint=log_hint(proc), log_path=str(proc.spec.log))
        time.sleep(0.1)


class GatewayRestarts:
    """Supervision of the running gateway: a restart after a backoff when it exits, give-up
    (EngineGaveUp) when it keeps exiting. The deployment starts it again when ``due``."""

    def __init__(self, policy: RestartPolicy, warn: Callable[[str], None]) -> None:
        self.backoff = Backoff(policy)
        self.restart_at: float | None = None
        self.warn = warn

    @property
    def pending(self) -> bool:
        """An exit was seen and the restart is still ahead."""
        return self.restart_at is not None

    def due(self, proc: ManagedProcess, now: float) -> bool:
        """True when the exited gateway is to be started again now."""
        if self.restart_at is None:
            if proc.poll() is None:
                return False
            delay = self.backoff.on_crash(now)
            if delay is None:
                raise EngineGaveUp("gateway keeps exiting; restart budget spent "
                                   f"(log: {proc.spec.log})", hint=log_hint(proc))
            self.warn(f"gateway exited (code {proc.exit_code}); restarting in {delay:.0f} s")
            self.restart_at = now + delay
            return False
        if now < self.restart_at:
            return False
        self.restart_at = None
        return True
