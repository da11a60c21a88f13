"""Step times from engine-core timestamps, on stamps laid out as vLLM's two scheduling modes
lay them out (timing.py's docstring)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.profiles.measure.timing import (
    Stamps,
    decode_prompt_tokens,
    decode_window,
    late_lead,
    prefill_step,
)

BLOCKER_S, BATCH_S, HOST_S = 0.185, 0.012, 0.0005


def sync_stamps() -> tuple[Stamps, list[Stamps]]:
    """Synchronous: step 2 is scheduled after step 1's outputs are made."""
    blocker = Stamps(0.0, BLOCKER_S, BLOCKER_S)
    start = BLOCKER_S + HOST_S
    batch = [Stamps(start, start + BATCH_S, start + BATCH_S)] * 4
    return blocker, batch


def async_stamps() -> tuple[Stamps, list[Stamps]]:
    """Asynchronous (vLLM's GPU default): step 2 is scheduled right after step 1 is launched
    and runs on the GPU as soon as step 1 ends; outputs are stamped a little later."""
    blocker = Stamps(0.0, BLOCKER_S + HOST_S, BLOCKER_S + HOST_S)
    scheduled = 0.002
    done = BLOCKER_S + BATCH_S + HOST_S
    return blocker, [Stamps(scheduled, done, done)] * 4


@pytest.mark.parametrize("layout", [sync_stamps, async_stamps])
def test_prefill_is_the_batch_step_alone_in_either_scheduling_mode(layout):
    blocker, batch = layout()
    step = prefill_step(batch, blocker)
    assert step.clean
    assert step.seconds == pytest.approx(BATCH_S, abs=HOST_S)


def test_the_first_h100_formula_counted_the_blocker_under_async_scheduling():
    blocker, batch = async_stamps()
    old = max(s.first for s in batch) - min(s.scheduled for s in batch)
    assert old > BLOCKER_S  # what the first run recorded: ~185 ms for a 128-token prompt
    assert prefill_step(batch, blocker).seconds < 2 * BATCH_S


@given(delay=st.floats(0.0, BATCH_S + 0.05))
def test_a_late_blocker_stamp_shortens_the_step_by_as_much_as_it_lengthens_the_lead(delay):
    # async: the host stamps the blocker's output ``delay`` after its step ended (busy); the
    # GPU ran the batch's step meanwhile. The batch's own stamps cannot be early.
    blocker, batch = async_stamps()
    reference = prefill_step(batch, blocker).lead
    late = Stamps(blocker.scheduled, blocker.first + delay, blocker.last + delay)
    done = max(batch[0].first, late.first + HOST_S)  # both outputs at once when very late
    step = prefill_step([Stamps(batch[0].scheduled, done, done)], late)
    assert step.lead == pytest.approx(reference + delay)
    assert step.seconds == pytest.approx(done - late.first)
    short = BATCH_S - step.seconds
    assert late_lead(step.lead, reference) == (delay > reference * 0.005 + 2e-4)
    if not late_lead(step.lead, reference):
        assert short <= reference * 0.005 + 2e-4 + 1e-12  # what passes is short by < the bound


def test_the_blocker_stamp_plays_no_part_under_sync_scheduling():
    blocker, batch = sync_stamps()
    assert prefill_step(batch, blocker).lead is None  # the batch's own scheduling starts it
    assert prefill_step(*reversed(async_stamps())).lead == pytest.approx(BLOCKER_S + HOST_S)


def test_a_split_batch_and_a_batch_chunked_into_the_blocker_step_are_not_clean():
    blocker, batch = sync_stamps()
    late = Stamps(batch[0].first, batch[0].first + BATCH_S, batch[0].first + BATCH_S)
    assert prefill_step([*batch[:3], late], blocker).steps == 2
    rode = [Stamps(blocker.scheduled, s.first, s.last) for s in batch]
    step = prefill_step(rode, blocker)
    assert step.rode_along and not step.clean


def test_a_lone_request_on_an_idle_engine_is_scheduled_to_first_token():
    assert prefill_step([Stamps(1.0, 1.02, 1.02)]).seconds == pytest.approx(0.02)
    with pytest.raises(ValueError):
        prefill_step([])


def simulate_decode(first_steps: list[int], tokens: int, prefill_s: list[float],
                    decode_s: float) -> list[Stamps]:
    """Requests whose first token comes in step s_i, then one token per step; steps up to the
    last first token still prefill (step s costs prefill_s[s]), later ones only decode
    (``decode_s``)."""
    horizon = max(first_steps) + tokens
    ends, t = [], 0.0
    for step in range(horizon):
        t += prefill_s[step] if step <= max(first_steps) else decode_s
        ends.append(t)
    return [Stamps(0.0, ends[s], ends[s + tokens - 1]) for s in first_steps]


@given(
    first_steps=st.lists(st.integers(0, 4), min_size=1, max_size=16).map(
        lambda xs: sorted(x - min(xs) for x in xs)).filter(
        lambda xs: set(xs) == set(range(max(xs) + 1))),  # every prefill step completes one
    tokens=st.integers(8, 200),
    decode_ms=st.floats(1.0, 50.0),
    prefill_ms=st.lists(st.floats(1.0, 500.0), min_size=5, max_size=5),
)
def test_decode_window_recovers_the_pure_decode_step(first_steps, tokens, decode_ms,
                                                     prefill_ms):
    stamps = simulate_decode(first_steps, tokens, [p / 1e3 for p in prefill_ms], decode_ms / 1e3)
    window = decode_window(stamps, tokens)
    k = max(first_steps)
    if tokens - 1 - k < 1:
        assert window is None
        return
    assert window is not None and window.consistent
    assert window.steps == tokens - 1 - k
    assert window.seconds == pytest.approx(decode_ms / 1e3, rel=1e-6)


def test_a_preempted_request_makes_the_window_inconsistent():
    stamps = simulate_decode([0, 0, 1], 32, [0.1, 0.1], 0.007)
    late = Stamps(0.0, stamps[0].first, stamps[0].last + 0.05)  # one extra step: preempted
    assert not decode_window([late, *stamps[1:]], 32).consistent


def test_decode_window_needs_two_tokens_and_a_batch():
    assert decode_window([], 16) is None
    assert decode_window([Stamps(0, 1, 1)], 1) is None


def test_decode_prompt_centres_the_window_on_the_context():
    assert decode_prompt_tokens(1024, 128) == 960
    assert decode_prompt_tokens(16, 128) == 1
