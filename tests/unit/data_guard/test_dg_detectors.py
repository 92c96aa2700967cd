"""Detectors one by one, on data where the answer is known."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine, make_classification

from services.data_guard.duplicates import find_duplicates
from services.data_guard.label_noise import detect_label_noise
from services.data_guard.outliers import RobustStats, detect_outliers


def _flip(y: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(y.size, size=int(rate * y.size), replace=False))
    classes = np.unique(y)
    flipped = y.copy()
    for i in rows:
        flipped[i] = rng.choice(classes[classes != y[i]])
    return flipped, rows


def test_robust_stats_resist_contamination_and_skew() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(10.0, 2.0, size=(2000, 1))
    X[:200] = 1e6  # 10 % garbage moves a mean/std fit wildly, the median/MAD barely
    stats = RobustStats.fit(X)
    assert abs(stats.center[0] - 10.0) < 0.5
    assert 1.5 < stats.upper[0] < 3.0
    assert 1.5 < stats.lower[0] < 2.6
    # a binary feature: the common value must not make the other one an outlier
    b = (rng.random((1000, 1)) < 0.1).astype(float)
    assert np.abs(RobustStats.fit(b).transform(b)).max() < 3.5


def test_blatant_outliers_flagged_with_and_without_reference() -> None:
    X, _ = load_breast_cancer(return_X_y=True)
    ref, up = X[:285].copy(), X[285:].copy()
    rng = np.random.default_rng(1)
    bad = np.sort(rng.choice(up.shape[0], size=15, replace=False))
    cols = rng.integers(0, X.shape[1], size=15)
    up[bad, cols] = X[:, cols].max(axis=0) * 20  # far beyond anything in the data
    # few false flags: the reference calibrates; without one, skewed clean tails cost a little
    for reference, false_rate in ((ref, 0.02), (None, 0.03)):
        report = detect_outliers(up, reference)
        assert set(bad.tolist()) <= set(report.rows.tolist())
        assert report.rows.size <= bad.size + false_rate * up.shape[0]
    calibrated = detect_outliers(up, ref)
    assert calibrated.fitted_on_reference
    assert 0 < calibrated.expected_rate < 0.05


def test_outliers_ignore_nan_cells() -> None:
    X = np.random.default_rng(2).normal(size=(200, 3))
    X[5, 1] = np.nan
    report = detect_outliers(X)
    assert np.isfinite(report.scores).all()


def test_knn_finds_most_flipped_labels_without_reference() -> None:
    X, y = load_wine(return_X_y=True)
    noisy, flipped = _flip(y, 0.10, seed=3)
    report = detect_label_noise(X, noisy)
    found = np.intersect1d(report.rows, flipped).size
    assert found >= 0.4 * flipped.size
    assert report.rows.size - found <= 0.03 * y.size  # clean rows rarely flagged


def test_knn_with_reference_is_calibrated_and_precise() -> None:
    X, y = make_classification(n_samples=4000, n_features=10, n_informative=5, flip_y=0, class_sep=2.0, random_state=0)
    noisy, flipped = _flip(y[2000:], 0.10, seed=4)
    report = detect_label_noise(X[2000:], noisy, (X[:2000], y[:2000]))
    found = np.intersect1d(report.rows, flipped).size
    assert report.used_reference
    assert found >= 0.6 * flipped.size
    assert found >= 0.8 * report.rows.size
    assert report.expected_rate < 0.05
    clean = detect_label_noise(X[2000:], y[2000:], (X[:2000], y[:2000]))
    assert clean.rate < 0.05


def test_knn_excludes_the_row_itself() -> None:
    # Two clusters, one lone mislabelled point in the first: counting itself would give it a
    # vote for its own wrong label; excluding it leaves k neighbours that all disagree.
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    y = np.array([0] * 30 + [1] * 30)
    y[0] = 1
    report = detect_label_noise(X, y, k=5, majority=1.0)
    assert report.rows.tolist() == [0]


def test_knn_sampling_caps_work_and_says_so() -> None:
    X, y = make_classification(n_samples=3000, n_features=5, flip_y=0, random_state=1)
    report = detect_label_noise(X, y, max_fit_rows=500, max_query_rows=1000)
    assert report.sampled
    assert report.fit_rows == 500
    assert report.checked_rows == 1000
    assert report.rows.size < 100


def test_string_labels_work() -> None:
    X, y = load_wine(return_X_y=True)
    names = np.array(["a", "b", "c"])[y]
    noisy, flipped = _flip(names, 0.10, seed=6)
    report = detect_label_noise(X, noisy)
    assert np.intersect1d(report.rows, flipped).size >= 0.4 * flipped.size


def test_duplicates_and_conflicting_labels() -> None:
    X = np.arange(20, dtype=float).reshape(10, 2)
    y = np.arange(10) % 2
    X2 = np.vstack([X, X[[1, 2, 3]], [[-0.0, 100.0]], [[0.0, 100.0]]])
    y2 = np.concatenate([y, [y[1], 1 - y[2], 1 - y[3]], [0, 0]])
    report = find_duplicates(X2, y2)
    # row 10 repeats row 1 with its label; rows 11/12 repeat 2/3 with the other label;
    # row 14 repeats row 13 (-0.0 == 0.0)
    assert report.duplicate_rows.tolist() == [10, 14]
    assert report.conflicting_rows.tolist() == [2, 3, 11, 12]
    assert report.conflicting_groups == 2
    unlabelled = find_duplicates(X2)
    assert unlabelled.duplicate_rows.tolist() == [10, 11, 12, 14]
    assert unlabelled.conflicting_rows.size == 0


def test_nan_rows_compare_equal_as_duplicates() -> None:
    X = np.array([[np.nan, 1.0], [np.nan, 1.0], [1.0, np.nan]])
    assert find_duplicates(X).duplicate_rows.tolist() == [1]
