"""Errors the user can act on.

Every expected failure (bad input, impossible SLO, infeasible cluster) is a ``FineserveError``
carrying a one-line message that names the field or cause, and a ``hint`` that starts with what
to change. The CLI prints both and exits with ``exit_code``; tracebacks only with
``FINESERVE_DEBUG=1``.
"""

from __future__ import annotations


class FineserveError(Exception):
    """Base class of all errors that are the user's to fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} (to fix: {self.hint})"


class SpecError(FineserveError):
    """A field of an input file or option is missing, malformed or out of range."""


class UnknownModelError(SpecError):
    """A model name is neither built in nor a readable config.json."""


class ProfileError(SpecError):
    """A latency profile file is malformed; the message names the row and column."""


class PlanInfeasible(FineserveError):
    """No plan meets the constraints; the message names the binding resource."""


class PlanInvalid(FineserveError):
    """A plan breaks a constraint when recomputed without the solver."""
