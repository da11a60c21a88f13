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


TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
# an exception line, after any log prefix ("(EngineCore pid=1) ERROR ... [core.py:708] ")
RAISED = re.compile(r"(?:^|\s)([\w.]*(?:Error|Exception|Interrupt)(?::\s.*)?)$")


def first_traceback(lines: list[str]) -> tuple[int, int | None] | None:
    """Where a log's first traceback starts and (None: not in ``lines``) its exception line."""
    start = next((i for i, ln in enumerate(lines) if TRACEBACK.search(ln)), None)
    if start is None:
        return None
    raised = next((i for i in range(start + 1, len(lines)) if RAISED.search(lines[i])), None)
    return start, raised


def log_hint(proc: ManagedProcess) -> str:
    """The root cause where the log holds a traceback (its first exception line: vLLM's last
    line is only "Engine core initialization failed. See root cause above"), else the last
    line."""
    lines = [ln for ln in tail(proc.spec.log, 400).splitlines() if ln.strip()]
    if not lines:
        return f"see {proc.spec.log}"
    found = first_traceback(lines)
    if found is not None and found[1] is not None:
        cause = RAISED.search(lines[found[1]])
        return f"its log's first error: {cause.group(1).strip()[:300]}"
    return f"its log ends with: {lines[-1].strip()[:300]}"


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
