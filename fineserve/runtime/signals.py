"""SIGINT/SIGTERM -> a clean stop of a foreground deployment (single host or Ray driver)."""

from __future__ import annotations

import signal
from collections.abc import Callable


def install_signals(handler: Callable[[str], None]) -> dict[int, object]:
    """Route SIGINT and SIGTERM to ``handler(signal name)``; the previous handlers."""
    old: dict[int, object] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda n, _f: handler(signal.Signals(n).name))
        except ValueError:  # not the main thread (tests): the caller stops us instead
            pass
    return old


def restore_signals(old: dict[int, object]) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)  # type: ignore[arg-type]
