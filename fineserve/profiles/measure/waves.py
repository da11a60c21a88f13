"""Run one wave of engine workers (``session.plan_waves``): start, wait until up, measure in turn.

Every worker is started with a control folder (``ProfileJob.control``). The wave's leaders
(first engine of each compile group not yet compiled in this run) start first; the others
start once every leader is up or gone, and load the compile cache the leaders filled. When all
are up, the engines are measured one at a time in the wave's order: ``{tag}.go`` lets one
measure, the parent waits for it to exit, then the next goes. Nothing is measured while an
engine starts. At the end, or on any exception, ``stop`` is written, every worker's process
group gets SIGTERM at once (they shut down in parallel), then each is waited for and its
group killed (what vLLM left in it too): nothing stays running.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fineserve.profiles.measure.procs import signal_group

POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class WaveMember:
    """One engine of the wave: its tag in the control folder and how to start it."""

    tag: str
    leader: bool
    start: Callable[[], subprocess.Popen[bytes]]  # spawns the worker (its own process group)
    on_poll: Callable[[], None] = lambda: None  # progress while it measures


@dataclass(frozen=True, slots=True)
class WaveResult:
    measured: tuple[str, ...]  # tags that got their turn and exited
    failed: tuple[str, ...]  # tags whose engine did not start
    out_of_time: bool


def run_wave(
    members: Sequence[WaveMember], control: Path, kill_at: float,
    kill: Callable[[subprocess.Popen[bytes]], None],
    turn_fits: Callable[[], bool] = lambda: True,
) -> WaveResult:  # fmt: skip
    """Start ``members`` (leaders first), then let each measure in order until ``kill_at``.

    ``turn_fits`` is asked before each turn (the budget: at least one point must fit);
    ``kill`` ends one worker's process group.
    """
    control.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    measured: list[str] = []
    out_of_time = False
    try:
        for batch in ([m for m in members if m.leader], [m for m in members if not m.leader]):
            for m in batch:
                procs[m.tag] = m.start()
            if not _wait_up([m.tag for m in batch], procs, control, kill_at):
                out_of_time = True
                return WaveResult((), _failed(members, control), True)
        for m in members:
            if not _is_up(m.tag, procs, control):
                continue
            if not turn_fits() or time.time() >= kill_at:
                out_of_time = True
                break
            (control / f"{m.tag}.go").write_text("")
            proc = procs[m.tag]
            while proc.poll() is None and time.time() < kill_at:
                m.on_poll()
                time.sleep(POLL_S)
            m.on_poll()
            if proc.poll() is None:  # past the budget: the worker's own deadline failed
                out_of_time = True
                break
            measured.append(m.tag)
    finally:
        (control / "stop").write_text("")
        for proc in procs.values():  # every worker at once: they shut down in parallel
            signal_group(proc, signal.SIGTERM)
        for proc in procs.values():  # then each waited for, and what is left of it killed
            kill(proc)
    return WaveResult(tuple(measured), _failed(members, control), out_of_time)


def _is_up(tag: str, procs: dict[str, subprocess.Popen[bytes]], control: Path) -> bool:
    return (control / f"{tag}.ready").exists() and procs[tag].poll() is None


def _wait_up(tags: Sequence[str], procs: dict[str, subprocess.Popen[bytes]], control: Path,
             kill_at: float) -> bool:  # fmt: skip
    """Wait until every one of ``tags`` is ready, failed or exited; False: out of time."""
    while time.time() < kill_at:
        if all((control / f"{t}.ready").exists() or (control / f"{t}.failed").exists()
               or procs[t].poll() is not None for t in tags):
            return True
        time.sleep(POLL_S / 5)
    return False


def _failed(members: Sequence[WaveMember], control: Path) -> tuple[str, ...]:
    return tuple(m.tag for m in members if (control / f"{m.tag}.failed").exists())
