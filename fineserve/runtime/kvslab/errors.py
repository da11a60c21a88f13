"""Errors of the KV Slab pool: bad configuration, impossible floors, unsupported engines."""

from __future__ import annotations

from fineserve.errors import FineserveError


class KvSlabError(FineserveError):
    """The KV pool cannot do what was asked; the message names the field or cause."""


class FloorsExceedPool(KvSlabError):
    """The engines' KV floors do not fit in the pool: the pool can never honour them."""


class UnsupportedEngine(KvSlabError):
    """The vLLM engine's configuration cannot be backed by slabs (version, TP, sleep mode...)."""
