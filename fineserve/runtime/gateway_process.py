"""The gateway as a child process of a deployment (single host or Ray driver): start it and
wait for its ready line, which also says the URL it serves on."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fineserve.runtime.errors import EngineStartError
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
