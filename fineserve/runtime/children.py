"""Child processes side by side, each the leader of its own process group, their output
interleaved line by line as ``[name] line``: the profiler's one child per GPU
(fineserve/profiles/measure/fanout.py) and the end-to-end benchmark's lanes
(bench/e2e/lanes.py).

A stop sends ``Stop.sig`` to every running child's group at once (each cleans up in
parallel: its engines, its MPS daemon, its deployment) and SIGKILL to the groups still running
``Stop.grace_s`` later, so nothing stays running. A stop starts at the deadline, or when the
parent is interrupted: by default the interrupt (an exception: KeyboardInterrupt, the
SystemExit of a SIGTERM handler) stops the children on its way out; with ``Stop.trap`` a
SIGTERM or Ctrl-C only starts the stop and ``run_children`` still returns the exit codes, so
the caller can save what the children wrote.

Lives in the runtime, beside procs.py (the deploy's own children), because both users depend
on the runtime already and on nothing of each other.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from fineserve.errors import FineserveError

POLL_S = 0.2
KILL_WAIT_S = 10.0  # after SIGKILL: a child stuck in the kernel (a GPU driver call) is left


class ChildStartError(FineserveError):
    """A child could not be started (no such program, bad working directory or cores)."""


@dataclass(frozen=True, slots=True)
class Child:
    """One child: ``name`` prefixes its output lines (e.g. "gpu1", "a@gpu0")."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path | None = None
    cores: tuple[int, ...] = ()  # pinned before it starts, inherited by what it starts; () = not
    log: Path | None = None  # also its output here, unprefixed (truncated first)


@dataclass(frozen=True, slots=True)
class Stop:
    """How children are stopped, and what a stop prints (nothing where a note is "")."""

    sig: signal.Signals = signal.SIGTERM  # sent first, to every running child's group
    grace_s: float = 20.0
    trap: bool = False  # SIGTERM / Ctrl-C start the stop instead of unwinding through us
    stopping: str = ""  # printed when the stop starts
    killing: str = ""  # printed when the grace has run out and the groups are killed


def run_children(children: Sequence[Child], deadline: float = math.inf,
                 sink: TextIO | None = None, stop: Stop = Stop(),
                 join_s: float = 5.0) -> tuple[int, ...]:  # fmt: skip
    """Start every child, forward their output to ``sink`` (stdout), wait for all; a child
    still running at ``deadline`` (epoch seconds) is stopped. Returns their exit codes
    (negative: killed by that signal; -9 also for a child that outlived its SIGKILL).

    Raises:
        ChildStartError: a child could not be started (those already started are stopped).
    """
    with _Run(children, stop, sink or sys.stdout, join_s) as run:
        return run.wait(deadline)


def prefixed(name: str, line: str) -> str:
    """One output line as ``[name] line``, ending in exactly one newline."""
    return f"[{name}] {line}" if line.endswith("\n") else f"[{name}] {line}\n"


class _Run:
    """The started children of one ``run_children`` call, their readers and their stop."""

    def __init__(self, children: Sequence[Child], stop: Stop, sink: TextIO,
                 join_s: float) -> None:  # fmt: skip
        self.children, self.policy, self.sink, self.join_s = tuple(children), stop, sink, join_s
        self.lock = threading.RLock()  # RLock: a note from the SIGTERM handler, mid-write
        self.procs: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        self.stop_at: float | None = None  # monotonic
        self.signalled: set[int] = set()  # pids whose group got the stop signal
        self.killed_at: float | None = None
        self.old_handler: Callable[[int, FrameType | None], Any] | int = signal.SIG_DFL

    def __enter__(self) -> _Run:
        if self.policy.trap:  # before the first child: no SIGTERM is missed
            old = signal.signal(signal.SIGTERM, self._on_sigterm)
            self.old_handler = signal.SIG_DFL if old is None else old  # None: not Python's
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        try:
            if any(p.poll() is None for p in self.procs):  # unwinding: stop them first
                self.stop()
                self._wait()
        except BaseException:
            self.kill()  # interrupted again while stopping: no more grace
            raise
        finally:
            for proc in self.procs:  # the leaders are gone: what they left in their groups
                _signal_group(proc, signal.SIGKILL)
            if self.policy.trap:
                signal.signal(signal.SIGTERM, self.old_handler)
            self._join()

    def _start(self) -> None:
        """Fork every child before any reader thread runs (a ``preexec_fn`` that pins cores
        is unsafe in a process with threads); the readers start even if one fork fails, so
        the children already started are drained while they stop."""
        logs = []
        try:
            for child in self.children:
                logs.append(_open_log(child))
                self.procs.append(_popen(child))
                if self.stop_at is not None:  # a SIGTERM came while starting
                    self.stop()
        finally:
            for child, proc, log in zip(self.children, self.procs, logs, strict=False):
                reader = threading.Thread(target=self._forward, args=(proc, child.name, log),
                                          daemon=True)
                reader.start()
                self.readers.append(reader)
            for log in logs[len(self.procs):]:
                if log is not None:
                    log.close()

    def wait(self, deadline: float = math.inf) -> tuple[int, ...]:
        """Every child's exit code; the stop starts at ``deadline`` (epoch)."""
        self._wait(deadline)
        return tuple(-9 if p.returncode is None else p.returncode for p in self.procs)

    def _wait(self, deadline: float = math.inf) -> None:
        while True:
            try:  # the poll too: a Ctrl-C may land anywhere in the loop
                if all(p.poll() is not None for p in self.procs):
                    return
                if time.time() >= deadline:
                    self.stop()
                now = time.monotonic()
                if self.killed_at is not None and now - self.killed_at > KILL_WAIT_S:
                    return  # unkillable for now: its code reads -9
                if (self.stop_at is not None and self.killed_at is None
                        and now - self.stop_at > self.policy.grace_s):
                    self.kill()
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                if not self.policy.trap:
                    raise
                self.stop()

    def stop(self) -> None:
        """The stop signal to every child's group, once each; SIGKILL follows in ``wait``
        after the grace."""
        if self.stop_at is None:
            self.stop_at = time.monotonic()
            self._note(self.policy.stopping)
        for proc in self.procs:  # each once: a Ctrl-C landing mid-loop calls us again
            if proc.pid not in self.signalled:
                self.signalled.add(proc.pid)
                _signal_group(proc, self.policy.sig)

    def kill(self) -> None:
        """SIGKILL every child's group now."""
        if self.killed_at is None:
            self.killed_at = time.monotonic()
            self._note(self.policy.killing)
        for proc in self.procs:
            _signal_group(proc, signal.SIGKILL)

    def _on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop()

    def _note(self, text: str) -> None:
        if text:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        with self.lock:
            try:
                self.sink.write(text)
                self.sink.flush()
            except (OSError, ValueError):  # a closed stdout must not stop the draining
                pass

    def _forward(self, proc: subprocess.Popen[str], name: str, log: TextIO | None) -> None:
        if proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                if log is not None:
                    try:
                        log.write(line)
                        log.flush()
                    except OSError:  # a full disk: keep draining, or the child blocks
                        log.close()
                        log = None
                self._write(prefixed(name, line))
        finally:
            if log is not None:
                log.close()

    def _join(self) -> None:
        """The readers end when the pipes close; a grandchild in another group that kept
        the pipe open must not hold the caller past ``join_s``."""
        until = time.monotonic() + self.join_s
        for reader in self.readers:
            reader.join(max(0.0, until - time.monotonic()))


def _open_log(child: Child) -> TextIO | None:
    if child.log is None:
        return None
    try:
        return open(child.log, "w", encoding="utf-8")
    except OSError as exc:
        raise ChildStartError(f"could not start {child.name}: its log {child.log}: "
                              f"{exc.strerror}") from None


def _popen(child: Child) -> subprocess.Popen[str]:
    pin = partial(os.sched_setaffinity, 0, frozenset(child.cores)) if child.cores else None
    try:
        return subprocess.Popen(list(child.argv), env=dict(child.env), cwd=child.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", bufsize=1,
                                start_new_session=True, preexec_fn=pin)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ChildStartError(f"could not start {child.name} ({child.argv[0]}): {exc}") from None


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    """``sig`` to the group ``proc`` led (``start_new_session``: group id = its pid), also
    after it exited: the id stays reserved while any member lives, so this reaches what the
    child left behind in its group (a shell's background job), and nothing once the group is
    gone. (Linux hands out pids in sequence: a new group taking this id within one run would
    need pid_max processes started in between.)"""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
