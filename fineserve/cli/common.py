"""What every command shares: consoles, the error boundary, the latency model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from fineserve.errors import FineserveError

out = Console()  # results (stdout)
err = Console(stderr=True)  # progress, warnings and errors (stderr)

T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Turn a FineserveError into one line on stderr and its exit code (2 for bad input).
    ``FINESERVE_DEBUG=1`` shows the traceback instead."""
    try:
        return fn()
    except FineserveError as exc:
        if os.environ.get("FINESERVE_DEBUG") == "1":
            raise
        line = f"error: {exc.message}"
        if exc.hint:
            line += f" (to fix: {exc.hint})"
        err.print(line, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def latency_model(profiles: list[Path] | None):
    """Shipped profiles plus the user's, with the roofline estimator behind them."""
    from fineserve.profiles.composite import default_latency_model

    return default_latency_model(list(profiles or []))

