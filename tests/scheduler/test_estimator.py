"""ServiceEstimator: recovers a linear prefill law, falls back sensibly on degenerate data."""

from __future__ import annotations

import pytest

from fineserve.scheduler.estimator import ServiceEstimator


def test_recovers_prompt_and_load_terms() -> None:
    est = ServiceEstimator()
    for i in range(200):
        x, n = 100 + 37 * (i % 11), 1 + (i * 7) % 13
        est.observe_prefill(x, n, 0.02 + 0.001 * x + 0.05 * n)
    assert est.prefill_s(1000, 1) == pytest.approx(1.07, rel=1e-6)
    assert est.prefill_s(1000, 10) == pytest.approx(1.52, rel=1e-6)


def test_one_operating_point_uses_the_ratio() -> None:
    est = ServiceEstimator(prefill_s_per_token_hint=1.0)
    est.observe_prefill(200, 4, 0.4)
    assert est.prefill_s(100, 4) == pytest.approx(0.2)


def test_hint_until_observed_and_slot_wait_needs_a_finish() -> None:
    est = ServiceEstimator(prefill_s_per_token_hint=0.002)
    assert est.prefill_s(500, 3) == pytest.approx(1.0)
    assert est.slot_wait_s(3, 4) == 0.0
    est.observe_finish(2.0, 0.05)
    assert est.slot_wait_s(3, 4) == pytest.approx(1.5)
    assert est.slot_wait_s(0, 4) == 0.0
