"""Near-duplicates, copies of reference rows, conflict resolution, drift and value types."""

from __future__ import annotations

import numpy as np

from services.data_guard.drift import feature_drift, type_mismatches
from services.data_guard.duplicates import find_near_duplicates, find_reference_copies, resolve_conflicts
from services.data_guard.outliers import RobustStats


def test_near_duplicates_with_another_label_are_grouped_without_all_pairs() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1_000, 5))
    y = rng.integers(0, 2, 1_000)
    copies = X[:10] + 1e-4  # nudged copies: not exact, still the same points
    X2 = np.vstack([X, copies])
    y2 = np.concatenate([y, 1 - y[:10]])
    near = find_near_duplicates(X2, y2, RobustStats.fit(X))
    assert set(range(1_000, 1_010)) <= set(near.conflicting_rows.tolist())
    assert near.conflicting_groups >= 8  # a few pairs may straddle a cell edge
    assert np.intersect1d(near.conflicting_rows, np.arange(10, 1_000)).size == 0


def test_relabelled_copies_of_reference_rows_are_found() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 4))
    ref_y = rng.integers(0, 3, 500)
    upload = np.vstack([rng.normal(size=(300, 4)), ref[:20]])
    upload_y = np.concatenate([rng.integers(0, 3, 300), ref_y[:10], (ref_y[10:20] + 1) % 3])
    copies = find_reference_copies(upload, upload_y, ref, ref_y)
    assert copies.copy_rows.tolist() == list(range(300, 320))
    assert copies.relabelled_rows.tolist() == list(range(310, 320))


def test_conflict_resolution_flags_the_less_plausible_label_and_both_on_a_tie() -> None:
    group = np.array([0, 0, 1, 1, 2])
    codes = np.array([0, 1, 0, 1, 0])
    prob = np.array([0.9, 0.1, 0.5, 0.5, 0.7])
    assert resolve_conflicts(np.array([0, 1, 2, 3]), group, codes, prob).tolist() == [1, 2, 3]


def test_conflict_resolution_treats_a_near_tie_as_unknown() -> None:
    group = np.array([0, 0, 1, 1])
    codes = np.array([0, 1, 0, 1])
    prob = np.array([0.501, 0.499, 0.8, 0.2])  # group 0: the model cannot tell; group 1: it can
    assert resolve_conflicts(np.arange(4), group, codes, prob).tolist() == [0, 1, 3]
    assert resolve_conflicts(np.arange(4), group, codes, prob, tie=0.0).tolist() == [1, 3]


def test_drift_effect_size_separates_a_shift_from_sampling_noise() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(20_000, 2))
    up = rng.normal(size=(20_000, 2))
    up[:, 1] += 1.0
    drifts = {d.feature: d for d in feature_drift(up, ref)}
    assert drifts[0].effect < 0.05
    assert 0.8 < drifts[1].effect < 1.2
    assert drifts[1].ks_p_value < 1e-6


def test_type_mismatches_against_integer_and_binary_reference_features() -> None:
    ref = np.column_stack([np.arange(100.0), np.arange(100) % 2, np.linspace(0, 1, 100)])
    up = ref.copy()
    up[:3, 0] += 0.5
    up[:4, 1] = 7
    problems = {(p.feature, p.problem, p.rows) for p in type_mismatches(up, ref)}
    assert problems == {(0, "non_integer", 3), (1, "out_of_set", 4)}
