"""Errors of ``fineserve deploy``: each is one line naming the engine, GPU, port or file."""

from __future__ import annotations

from fineserve.errors import FineserveError


class DeployError(FineserveError):
    """The deployment cannot start or keep running (missing GPU, MPS, model folder, port...)."""


class EngineStartError(DeployError):
    """An engine exited or never answered /health while starting; ``log_path`` is its log."""

    def __init__(self, message: str, hint: str | None = None, log_path: str = "") -> None:
        super().__init__(message, hint)
        self.log_path = log_path


class EngineGaveUp(DeployError):
    """An engine kept crashing and its restart budget is spent."""
