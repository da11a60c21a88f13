"""Builders for runtime unit tests: small plans of catalog models, options in a tmp run dir."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

from fineserve.planner.schema import (
    EnginePlacement,
    LengthStats,
    ModelDemand,
    Plan,
    Slo,
    hand_plan,
)
from fineserve.profiles.catalog import ModelSpec, resolve_arch
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.precision import Precision
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.state import Mode

GIB = 2**30


def demand(name: str, ref: str = "llama-3.1-8b", weights: str = "bf16", kv: str = "bf16",
           ttft: float = 0.5, tpot: float = 0.05) -> ModelDemand:
    spec = ModelSpec(resolve_arch(ref), Precision.parse(weights, kv))
    return ModelDemand(name, ref, spec, 2.0, Slo(ttft, tpot), LengthStats(512, 256), (1, 2))


def engine(eid: str, model: ModelDemand, gpus: tuple[int, ...] = (0,), sm: int = 50,
           kv: int = 4 * GIB, rate: float = 1.0, node: str = "n0",
           batch: int = 32) -> EnginePlacement:
    return EnginePlacement(eid, model.name, node, gpus, sm, batch,
                           model.spec.weight_bytes(len(gpus)), 3 * GIB, kv, 4.0, rate)


def plan(models: list[ModelDemand], engines: list[EnginePlacement], gpus: int = 2,
         nodes: tuple[str, ...] = ("n0",)) -> Plan:
    return hand_plan(models, engines, gpu_spec("H100-SXM-80GB"), nodes=nodes,
                     gpus_per_node=gpus)


def options(tmp: Path, mode: Mode = Mode.NO_MPS, **kw) -> DeployOptions:
    kw.setdefault("dummy_weights", True)
    kw.setdefault("engine_python", "/opt/py/bin/python")
    return DeployOptions(run_dir=tmp / "run", mode=mode, **kw)


def free_port_range(n: int, host: str = "127.0.0.1", first: int = 20100, step: int = 97) -> int:
    """A base port with ``n`` consecutive ports above it free on ``host`` (a deployment's
    gateway and engines take consecutive ports)."""
    for base in range(first, 60000, step):
        try:
            with ExitStack() as stack:
                for i in range(n):
                    stack.enter_context(socket.socket()).bind((host, base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")
