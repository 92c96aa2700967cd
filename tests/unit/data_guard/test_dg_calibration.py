"""Calibration: thresholds at a stated clean flag rate, tail extrapolation, held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from services.data_guard.calibration import calibrate, holdout_splits, tail_quantile


def test_empirical_threshold_flags_about_the_stated_rate_on_fresh_clean_data() -> None:
    rng = np.random.default_rng(0)
    threshold = calibrate(np.abs(rng.normal(size=50_000)), 0.01)
    assert threshold.method == "empirical"
    fresh = np.abs(rng.normal(size=200_000))
    assert 0.007 < np.mean(fresh > threshold.value) < 0.013


def test_small_calibration_sets_extrapolate_conservatively_and_state_a_floor_rate() -> None:
    rng = np.random.default_rng(1)
    threshold = calibrate(np.abs(rng.normal(size=200)), 0.001)
    assert threshold.method == "tail"
    assert threshold.value > 3.0  # beyond the 99.9 % point of |N(0,1)| (3.29) or close to it
    assert threshold.rate == pytest.approx(1 / 201)  # 200 rows cannot vouch for less


def test_tail_quantile_resists_five_percent_contamination() -> None:
    rng = np.random.default_rng(2)
    clean = np.abs(rng.normal(size=10_000))
    dirty = np.concatenate([clean, np.full(500, 1e6)])
    assert abs(tail_quantile(dirty, 0.001) - tail_quantile(clean, 0.001)) < 1.5


def test_holdout_splits_never_score_a_row_with_a_model_that_saw_it() -> None:
    rng = np.random.default_rng(3)
    for n in (50, 20_000):
        seen = np.zeros(n, dtype=int)
        for fit, held in holdout_splits(n, rng):
            assert np.intersect1d(fit, held).size == 0
            seen[held] += 1
        assert seen.max() == 1


def test_rate_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="rate"):
        calibrate(np.ones(10), 0.0)
