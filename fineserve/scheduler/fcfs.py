"""FCFS: the baseline every engine gets without FineServe's local scheduler.

A fixed in-flight limit (``initial_limit``, the plan's max_batch) and a bounded FIFO queue;
no deadline prediction and no expiry, so a queued request waits until a slot frees (or the
client goes away) - what plain vLLM behind a concurrency cap does. Overload shows up only as
queue-full 429s.
"""

from __future__ import annotations

from fineserve.scheduler.policy import Policy


class FcfsPolicy(Policy):
    name = "fcfs"
    expires_queued = False
