"""Stand-in engine workers for the runner tests: a script speaking the worker's file protocol,
started through an executable that plays ``engine_python``, and the request that runs it."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from fineserve.profiles.measure.grid import GridSpec
from fineserve.profiles.measure.runner import ProfileRequest
from fineserve.profiles.precision import Precision


def stand_in_python(tmp_path: Path, source: str) -> Path:
    """Write ``source`` and an executable that runs it with this interpreter (whatever the
    runner passes on: module flags, the job file), to stand in for an engine's python."""
    script = tmp_path / "stand_in.py"
    script.write_text(source)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python


def profile_request(tmp_path: Path, python: Path, grid: GridSpec, **kw) -> ProfileRequest:
    """An 8B bf16 profile request on ``grid`` run by the stand-in (no MPS); ``kw`` overrides."""
    defaults = dict(model="llama-3.1-8b", precisions=(Precision.parse("bf16"),),
                    out=tmp_path / "out", grid=grid, gpu="h100", mps=False,
                    engine_python=str(python), cache_dir=tmp_path / "cache")
    return ProfileRequest(**{**defaults, **kw})
