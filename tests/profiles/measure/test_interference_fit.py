"""Interference fit: recovers known parameters from synthetic data, saves and loads."""

from __future__ import annotations

import math
import random

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.measure.interference_fit import (
    NO_INTERFERENCE,
    InterferenceFit,
    InterferenceSample,
    SlowdownParams,
    fit_interference,
    fit_slowdown,
    hbm_demand,
)

TRUE = SlowdownParams(a=0.25, capacity=0.9)


def synthetic(params: SlowdownParams, phase: str, noise: float, n: int = 40, seed: int = 1):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u_self, u_other = rng.uniform(0.05, 0.8), rng.uniform(0.0, 1.2)
        slow = params.slowdown(u_self, u_other) * math.exp(rng.gauss(0, noise))
        out.append(InterferenceSample(phase, u_self, u_other, slow))
    return out


def test_model_shape():
    assert TRUE.slowdown(0.3, 0.0) == 1.0  # alone: no slowdown
    assert TRUE.slowdown(0.3, 0.4) == pytest.approx(1.1)  # below saturation: a * others
    assert TRUE.slowdown(0.6, 0.6) == pytest.approx(1.15 * 1.2 / 0.9)  # saturated
    assert NO_INTERFERENCE.slowdown(0.9, 2.0) == 1.0


def test_fit_recovers_known_parameters_without_noise():
    fit = fit_slowdown(synthetic(TRUE, "decode", noise=0.0))
    assert fit.a == pytest.approx(TRUE.a, abs=0.02)
    assert fit.capacity == pytest.approx(TRUE.capacity, abs=0.02)
    assert fit.median_abs_error < 0.005 and fit.samples == 40


def test_fit_tracks_noisy_data_to_the_noise_level():
    fit = fit_slowdown(synthetic(TRUE, "decode", noise=0.03, n=200))
    assert fit.a == pytest.approx(TRUE.a, abs=0.08)
    assert fit.capacity == pytest.approx(TRUE.capacity, abs=0.08)
    assert fit.median_abs_error < 0.03


def test_phases_are_fitted_separately_and_round_trip(tmp_path):
    prefill_truth = SlowdownParams(a=0.05, capacity=2.0)
    samples = synthetic(TRUE, "decode", 0.0) + synthetic(prefill_truth, "prefill", 0.0, seed=2)
    fit = fit_interference(samples, "H100-SXM-80GB")
    assert fit.decode.capacity == pytest.approx(0.9, abs=0.02)
    assert fit.prefill.a == pytest.approx(0.05, abs=0.02)
    path = fit.save(tmp_path / "interference.json")
    assert InterferenceFit.load(path) == fit


def test_missing_phase_means_no_interference():
    fit = fit_interference(synthetic(TRUE, "decode", 0.0), "H100-SXM-80GB")
    assert fit.prefill == NO_INTERFERENCE


def test_bad_input_is_a_named_error(tmp_path):
    with pytest.raises(SpecError, match="no samples"):
        fit_slowdown([])
    with pytest.raises(SpecError, match="bad sample"):
        fit_slowdown([InterferenceSample("decode", 0.2, 0.1, 0.0)])
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(SpecError, match="x.json"):
        InterferenceFit.load(tmp_path / "x.json")
    with pytest.raises(SpecError):
        hbm_demand(1e9, 0.0, 3.35e12)


def test_demand_is_the_fraction_of_peak_bandwidth():
    # 16 GB of weights read every 8 ms on a 3.35 TB/s part: ~60% of peak
    assert hbm_demand(16e9, 0.008, 3.35e12) == pytest.approx(0.597, abs=1e-3)
