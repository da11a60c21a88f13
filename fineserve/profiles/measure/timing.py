"""Step times from vLLM's per-request engine-core timestamps (standard library only).

vLLM stamps, per request, when the scheduler first scheduled it (``scheduled``), and when the
engine core produced its first and last token (``first``, ``last``: the time the step's
outputs were made, one stamp per engine step). Two scheduling modes stamp differently:

- synchronous: a step is scheduled after the previous step's outputs are made, so
  ``scheduled`` is the step's start;
- asynchronous (vLLM's default on GPUs): step N+1 is scheduled as soon as step N is launched,
  so ``scheduled`` lies inside the *previous* step; the GPU runs N+1 right after N, and the
  previous step's output stamp is where N+1 begins.

Both cases: a step starts at the later of the previous step's output stamp and its own
scheduling stamp. The functions here use only that rule and the step structure, never the
mode, so they hold for either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stamps:
    """One request's engine-core timestamps (seconds, one monotonic clock)."""

    scheduled: float
    first: float
    last: float


@dataclass(frozen=True, slots=True)
class PrefillStep:
    seconds: float  # the batch's own step
    steps: int  # distinct steps the batch's first tokens came from (1 = one step)
    rode_along: bool  # part of the batch was scheduled in the blocker's step (chunked in)
    # the blocker's apparent step (its first token - its scheduling) where its output stamp
    # is taken as the batch's start (asynchronous scheduling), else None: a stamp made late
    # (the host busy when the blocker's step ended) makes this longer and ``seconds`` shorter
    # by the same amount (``late_lead``).
    lead: float | None = None

    @property
    def clean(self) -> bool:
        return self.steps == 1 and not self.rode_along


@dataclass(frozen=True, slots=True)
class DecodeWindow:
    seconds: float  # one full-batch decode step
    steps: int  # decode steps in the window
    consistent: bool  # requests sharing a first-token step also share a last-token step


def prefill_step(batch: Sequence[Stamps], blocker: Stamps | None = None) -> PrefillStep:
    """The step in which ``batch`` was prefilled, behind ``blocker`` (or on an idle engine).

    Start = max(blocker's first token, batch scheduled): in a synchronous engine the batch is
    scheduled after the blocker's outputs, in an asynchronous one before them (while the
    blocker runs), and the step then starts when the blocker's step ends.
    """
    if not batch:
        raise ValueError("prefill_step of an empty batch")
    firsts = {s.first for s in batch}
    scheduled = min(s.scheduled for s in batch)
    start = scheduled if blocker is None else max(blocker.first, scheduled)
    rode = blocker is not None and scheduled <= blocker.scheduled
    lead = (blocker.first - blocker.scheduled
            if blocker is not None and blocker.first > scheduled else None)
    return PrefillStep(max(firsts) - start, len(firsts), rode, lead)


def late_lead(lead: float, reference: float, *, rel: float = 0.005, abs_s: float = 2e-4) -> bool:
    """Whether a blocker's apparent step ``lead`` is longer than its ``reference`` (the same
    prompt's step on an idle engine, or the shortest seen) by more than the step itself varies
    (``rel`` of it plus ``abs_s``): its output stamp was made late, and the batch step read
    from it is short by as much. The batch's own stamps cannot make a step look short: it is
    scheduled before its step starts and stamped after it ends.

    Seen on the H100 (2026-11-26): 164 of 600 prefill runs > 10% short (150 at SM 100), down
    to 0.7 ms for a 13 ms step, i.e. both outputs stamped back to back after the batch's step.
    """
    return lead > reference * (1 + rel) + abs_s


def device_prefill_step(steps: Sequence[tuple[int, float]], batch_tokens: int,
                        blocker_tokens: int = 0) -> float | None:  # fmt: skip
    """The batch's step among one run's device-timed steps (``steptimer.take``: scheduled
    tokens, seconds), or None where the run did not go as planned: behind a blocker, the
    blocker's step (at least ``blocker_tokens``) then the batch's (its ``batch_tokens``, one
    more allowed: a token of the blocker scheduled ahead of its end); without one, the batch
    alone. Steps with no tokens are skipped, and so are trailing steps of a token or two (the
    same kind of ahead-scheduled token). A batch split over steps, or sharing the blocker's,
    gives None (retried like an unclean stamp run)."""
    real = [(n, s) for n, s in steps if n > 0]
    while len(real) > (2 if blocker_tokens else 1) and real[-1][0] <= 2:
        real.pop()
    if blocker_tokens:
        if len(real) != 2 or real[0][0] < blocker_tokens:
            return None
        tokens, seconds = real[1]
    else:
        if len(real) != 1:
            return None
        tokens, seconds = real[0]
    ok = batch_tokens <= tokens <= batch_tokens + 1 and seconds > 0
    return seconds if ok else None


def device_probe_problem(steps: Sequence[tuple[int, float]], batch_tokens: int,
                         blocker_tokens: int, lead: float | None) -> str | None:  # fmt: skip
    """Why one probe run's device-timed steps cannot be trusted (None: they can). The batch's
    step must be found (``device_prefill_step``), and the blocker's device time must lie
    within its stamps (``lead``: first token - scheduled): its events are recorded after
    its scheduling and reached before its output is stamped, so it cannot be longer (10% + 1
    ms slack), and a small fraction of it means the events saw the kernel launches, not the
    GPU's work (another stream)."""
    if device_prefill_step(steps, batch_tokens, blocker_tokens) is None:
        return f"the batch's step not found among {len(steps)} timed steps"
    if blocker_tokens and lead and lead > 0:
        device = next(s for n, s in steps if n > 0)
        if not 0.3 * lead <= device <= 1.1 * lead + 1e-3:
            return (f"the blocker's step is {device * 1e3:.1f} ms on the device and "
                    f"{lead * 1e3:.1f} ms between its stamps")
    return None


def decode_window(batch: Sequence[Stamps], tokens: int) -> DecodeWindow | None:
    """Mean full-batch decode step of requests that each generated ``tokens`` tokens.

    Request i gets its first token in step s_i and its last in s_i + tokens - 1 (one token a
    step, ``ignore_eos``). Between the last first token (every prefill done) and the first
    last token (nobody finished) every step decodes the whole batch and nothing else:
    ``tokens - 1 - k`` steps, k = max s_i - min s_i. First tokens come from k + 1 distinct
    steps when every step completes a prefill (prompts shorter than the step budget minus the
    batch), so k = distinct first stamps - 1. None when the window holds no step.
    """
    if not batch or tokens < 2:
        return None
    firsts = sorted({s.first for s in batch})
    lasts = sorted({s.last for s in batch})
    k = len(firsts) - 1
    steps = tokens - 1 - k
    if steps < 1:
        return None
    rank_first = {v: i for i, v in enumerate(firsts)}
    rank_last = {v: i for i, v in enumerate(lasts)}
    consistent = len(firsts) == len(lasts) and all(
        rank_first[s.first] == rank_last[s.last] for s in batch)
    window = min(s.last for s in batch) - max(s.first for s in batch)
    return DecodeWindow(window / steps, steps, consistent)


MIN_DECODE_TOKENS = 32  # a sized decode run generates at least this many tokens


def window_tokens(step_s: float, window_s: float, batch: int, context: int, step_budget: int,
                  most: int) -> int:  # fmt: skip
    """Tokens a decode run generates so that its full-batch window lasts ``window_s``: the
    window is about n - 1 - k steps, k the steps its prefill takes (at most batch x context
    over the step budget). Between ``MIN_DECODE_TOKENS`` and ``most`` (the grid's tokens).

    Why a wall-time window rather than fixed tokens: a host stall of a few ms lands in a
    window whatever its length, so the relative error is stall / window time, not per step;
    on the H100 single runs > 5% off came only from windows < 0.75 s (docs/profiler.md).
    """
    if not step_s > 0 or not window_s > 0:
        return most
    k = -(-batch * context // max(1, step_budget))
    n = int(-(-window_s // step_s)) + 1 + k
    return max(min(MIN_DECODE_TOKENS, most), min(most, n))


def decode_prompt_tokens(context: int, tokens: int) -> int:
    """Prompt length whose decode window (about ``tokens`` steps) runs at mean ``context``."""
    return max(1, round(context - tokens / 2))
