"""Restart rules for crashed engines: exponential backoff, a budget, and the fault domain.

Pure logic (time passed in) so the rules are unit-tested exactly; ``deploy.Deployment`` acts
on the answers. The fault domain: under MPS a fatal fault in one client tears down the MPS
server and with it every client on those GPUs, and even when it does not, the others may
hold corrupted state; so a crash restarts every engine of that MPS group. Without MPS (and on
CPU) processes are isolated and only the crashed engine restarts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from fineserve.runtime.options import RestartPolicy
from fineserve.runtime.state import Mode


class Backoff:
    """Crash history of one engine inside the policy's sliding window."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._crashes: deque[float] = deque()
        self.total = 0  # restarts ever scheduled

    def on_crash(self, now_s: float) -> float | None:
        """Seconds to wait before restarting, or None when the budget is spent (give up)."""
        window = self.policy.window_s
        while self._crashes and now_s - self._crashes[0] > window:
            self._crashes.popleft()
        self._crashes.append(now_s)
        n = len(self._crashes)
        if n > self.policy.max_restarts:
            return None
        self.total += 1
        return min(self.policy.max_backoff_s, self.policy.initial_backoff_s * 2 ** (n - 1))

    @property
    def recent(self) -> int:
        return len(self._crashes)


def restart_scope(crashed: str, mps_group_of: Mapping[str, str], mode: Mode) -> list[str]:
    """Engines to restart when ``crashed`` exits: its whole MPS group under MPS, else itself.

    ``mps_group_of`` maps every engine id to its MPS group name ("" when not an MPS client).
    """
    group = mps_group_of.get(crashed, "")
    if mode is not Mode.MPS or not group:
        return [crashed]
    return sorted(e for e, g in mps_group_of.items() if g == group)
