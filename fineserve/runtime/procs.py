"""Child processes we start, identified so that we never signal one we did not start.

A pid alone is not an identity: after a crash the kernel may hand it to an unrelated process.
Every process the runtime starts is recorded as (pid, start time in clock ticks since boot,
from /proc/PID/stat), and is signalled only while both still match. Children run in their own
process group (``start_new_session``) so that stopping one also stops what it spawned (vLLM's
engine core and workers) and a Ctrl-C in the terminal reaches only the deploy process, which
then shuts children down in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcId:
    """A process as the runtime recorded it when starting it."""

    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat; 0 when unknown (not Linux)

    def alive(self) -> bool:
        """True while this very process (same pid and start time) exists and is not a zombie."""
        return proc_start_ticks(self.pid) == self.start_ticks and not _is_zombie(self.pid)


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] == "Z"


def identify(pid: int) -> ProcId:
    """The identity of a process we just started (its /proc entry exists until reaped)."""
    return ProcId(pid, proc_start_ticks(pid) or 0)


def spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
          ) -> subprocess.Popen:
    """Start ``argv`` in its own session/process group, stdout and stderr appended to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)


def signal_group(proc: ProcId, sig: int) -> bool:
    """Send ``sig`` to the process group led by ``proc`` if it is still the process we started.

    Returns False (and sends nothing) when it is gone or its pid now names another process.
    """
    if not proc.alive():
        return False
    try:
        os.killpg(proc.pid, sig)  # the child leads its own group (start_new_session)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def terminate(proc: ProcId, timeout_s: float, popen: subprocess.Popen | None = None) -> bool:
    """SIGTERM the group, wait up to ``timeout_s``, then SIGKILL it. True if it had to be killed.

    ``popen`` (when we are the parent) is reaped so no zombie stays behind.
    """
    if not signal_group(proc, signal.SIGTERM):
        _reap(popen, 0)
        _kill_leftovers(proc)  # e.g. after kill -9 of the leader: its engine core lives on
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _reap(popen, 0.1) or not proc.alive():
            _kill_leftovers(proc)
            return False
        if popen is None:
            time.sleep(0.1)
    signal_group(proc, signal.SIGKILL)
    _kill_leftovers(proc)
    _reap(popen, 5.0)
    return True


def _kill_leftovers(proc: ProcId, wait_s: float = 5.0) -> None:
    """The group leader is gone: SIGKILL members it left behind (vLLM's engine core...) and
    wait until they are gone, so the caller may report "nothing left running".

    While any member lives the kernel keeps the group id, so a process with pid == group id
    that is not ``proc`` means the group is gone and that pid was reused: touch nothing.
    """
    ticks = proc_start_ticks(proc.pid)
    if ticks is not None and ticks != proc.start_ticks:
        return
    deadline = time.monotonic() + wait_s
    while True:
        members = [pid for pid in group_members(proc.pid) if pid != proc.pid]
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def group_members(pgid: int, zombies: bool = False) -> list[int]:
    """Pids whose process group is ``pgid`` (from /proc); exited-but-unreaped ones only when
    ``zombies`` (they hold nothing and vanish when their parent or init reaps them)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and (zombies or fields[0] != "Z"):
            out.append(int(entry.name))
    return out


def _reap(popen: subprocess.Popen | None, timeout_s: float) -> bool:
    if popen is None:
        return False
    try:
        popen.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False
