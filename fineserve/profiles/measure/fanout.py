"""Run one child process per GPU side by side, their output interleaved line by line.

Each child leads its own process group and cleans up after itself (its engines, its MPS
daemon) when it gets SIGTERM; a child still running at ``kill_at``, or when the parent is
interrupted, gets SIGTERM and, after a grace time, SIGKILL (``stop_all``). Nothing stays
running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from fineserve.profiles.measure.procs import KILL_GRACE_S

POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Child:
    name: str  # prefix of its output lines, e.g. "gpu1"
    argv: tuple[str, ...]
    env: dict[str, str]


def run_children(children: Sequence[Child], kill_at: float,
                 sink: TextIO | None = None) -> tuple[int, ...]:  # fmt: skip
    """Start every child, forward their output to ``sink`` (stdout) as ``[name] line``, wait
    for all; returns their exit codes (negative: killed by that signal)."""
    sink = sink or sys.stdout
    lock = threading.Lock()
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []
    try:
        for child in children:
            proc = subprocess.Popen(list(child.argv), env=child.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
            procs.append(proc)
            reader = threading.Thread(target=_forward, args=(proc, child.name, sink, lock),
                                      daemon=True)
            reader.start()
            readers.append(reader)
        while any(p.poll() is None for p in procs) and time.time() < kill_at:
            time.sleep(POLL_S)
    finally:
        stop_all(procs)
        for reader in readers:
            reader.join(timeout=5)
    return tuple(p.returncode if p.returncode is not None else -9 for p in procs)


def stop_all(procs: Sequence[subprocess.Popen[str]], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM every running child's group at once (each cleans up in parallel), SIGKILL what
    is left after ``grace_s``: a parent killed soon after still got every child signalled."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        _signal_group(proc, signal.SIGTERM)
    until = time.time() + grace_s
    for proc in live:
        try:
            proc.wait(timeout=max(0.1, until - time.time()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _forward(proc: subprocess.Popen[str], name: str, sink: TextIO, lock: threading.Lock) -> None:
    if proc.stdout is None:
        return
    for line in proc.stdout:
        with lock:
            sink.write(f"[{name}] {line}" if line.endswith("\n") else f"[{name}] {line}\n")
            sink.flush()
