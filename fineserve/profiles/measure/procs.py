"""Engine worker processes of the profiler: interpreter, environment, run and kill.

A worker leads its own process group (vLLM's children are in it), so killing the group
leaves nothing running. Shared by the one-by-one runner and the waves (``waves.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fineserve

KILL_GRACE_S = 20.0


def engine_python(explicit: str | None) -> str:
    """The engine interpreter: ``explicit``, else $FINESERVE_ENGINE_PYTHON, else this one."""
    return explicit or os.environ.get("FINESERVE_ENGINE_PYTHON") or sys.executable


def worker_env(cache: Path, extra: dict[str, str]) -> dict[str, str]:
    """Engine process environment: project on the path, compile caches under ``cache``."""
    env = dict(os.environ)
    repo = str(Path(fineserve.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of the memory probe
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    env.update(extra)
    return env


def run_worker(
    python: str, mode: str, job_path: Path, env: dict[str, str], log: Path,
    kill_at: float, poll: Callable[[], None] | None = None,
) -> int:  # fmt: skip
    """Run one worker to completion, or kill its process group at ``kill_at`` (epoch)."""
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {mode} {job_path.name}\n")
        sink.flush()
        proc = subprocess.Popen(
            [python, "-m", "fineserve.profiles.measure.worker", mode, str(job_path)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if time.time() > kill_at:
                    kill_group(proc)
                    break
                if poll is not None:
                    poll()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): leave nothing running
                kill_group(proc)
            else:  # what the worker left in its group (an EngineCore) goes with it
                signal_group(proc, signal.SIGKILL)
    return proc.returncode if proc.returncode is not None else -9


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's own process group (vLLM's children are in it), wait for the
    worker up to ``KILL_GRACE_S``, then SIGKILL the group whether or not the worker exited:
    vLLM's EngineCore may outlive a worker that exited on SIGTERM."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        pass


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the group ``proc`` leads; nothing where the group is gone."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
