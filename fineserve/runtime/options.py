"""What ``fineserve deploy`` was asked to do, as one frozen value (CLI flags -> this -> deploy)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fineserve.runtime.state import Mode

ENGINE_PYTHON_ENV = "FINESERVE_ENGINE_PYTHON"


def default_engine_python() -> str:
    """FINESERVE_ENGINE_PYTHON, else this interpreter (vLLM installed beside fineserve)."""
    return os.environ.get(ENGINE_PYTHON_ENV) or sys.executable


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff for crashed engines, with a budget inside a sliding window."""

    initial_backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    max_restarts: int = 5  # per engine within window_s; one more crash = give up
    window_s: float = 600.0


@dataclass(frozen=True, slots=True)
class DeployOptions:
    run_dir: Path
    mode: Mode = Mode.MPS
    host: str = "127.0.0.1"  # gateway bind address
    port: int = 8000  # gateway port
    api_keys: tuple[str, ...] = ()
    engine_python: str = ""  # "" = default_engine_python()
    engine_port_base: int = 8100  # engine i listens on base + i (127.0.0.1 only)
    model_dirs: tuple[tuple[str, Path], ...] = ()  # (plan model name or ref, folder)
    dummy_weights: bool = False  # random weights; config.json (+ tokenizer) from the catalog
    enforce_eager: bool = False  # no CUDA graphs: starts several times faster, runs slower
    max_model_len: int | None = None  # None = min(arch context, KV capacity, 8192)
    extra_engine_args: tuple[str, ...] = ()
    startup_timeout_s: float = 900.0  # per engine, until /health answers
    stop_timeout_s: float = 20.0  # SIGTERM -> SIGKILL
    gateway_drain_s: float = 30.0
    restart: RestartPolicy = RestartPolicy()
    scheduler_max_queue: int | None = None  # gateway scheduler override (tests: small queues)
    scheduler_policy: str | None = None  # gateway local scheduler policy (None: its default)
    node: str | None = None  # which plan node this host is (None: the only node with engines)
    health_interval_s: float = 5.0  # probe of ready engines; unhealthy_after probes = hung
    unhealthy_after: int = 12
    # KV Slab pool per GPU (docs/kv-slab.md): None = as the plan says (kv_mode pooled -> on),
    # False = static KV per engine (the baseline), True = on. GPU modes, TP 1 engines only.
    kv_pool: bool | None = None

    @property
    def python(self) -> str:
        return self.engine_python or default_engine_python()

    @property
    def uses_gpus(self) -> bool:
        return self.mode is not Mode.CPU

    def model_dir_for(self, name: str, ref: str) -> Path | None:
        for key, path in self.model_dirs:
            if key in (name, ref):
                return path
        return None
