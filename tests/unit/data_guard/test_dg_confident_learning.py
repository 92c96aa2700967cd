"""Confident learning (Northcutt et al. 2021) on out-of-sample probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification

from services.data_guard.label_noise import (
    confident_joint,
    detect_label_issues,
    find_label_issues,
    self_confidence_thresholds,
)


def _flip(y: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(y.size, size=int(rate * y.size), replace=False))
    out = y.copy()
    out[rows] = 1 - out[rows]
    return out, rows


def test_confident_joint_on_a_hand_worked_example() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.95, 0.05]])
    labels = np.array([0, 0, 1, 1, 1])  # the last row is labelled 1 but looks like a 0
    t = self_confidence_thresholds(probs, labels, 2)
    assert np.allclose(t, [0.85, (0.8 + 0.9 + 0.05) / 3])
    joint, confident = confident_joint(probs, labels, t)
    assert confident.tolist() == [0, -1, 1, 1, 0]  # row 1 is below both thresholds
    assert joint.tolist() == [[1, 0], [1, 2]]
    issues, Q = find_label_issues(probs, labels, t)
    assert issues.tolist() == [False, False, False, False, True]
    assert np.isclose(Q.sum(), 1.0)


def test_flipped_labels_found_with_reference_precisely() -> None:
    X, y = make_classification(n_samples=6_000, n_features=10, n_informative=5, class_sep=2.0, flip_y=0, random_state=0)
    noisy, flipped = _flip(y[3_000:], 0.08, seed=1)
    report = detect_label_issues(X[3_000:], noisy, (X[:3_000], y[:3_000]))
    found = np.intersect1d(report.rows, flipped).size
    assert report.used_reference
    assert found >= 0.8 * flipped.size
    assert found >= 0.9 * report.rows.size
    assert 0.05 < report.estimated_noise_rate < 0.11


def test_clean_labels_are_rarely_flagged_with_or_without_reference() -> None:
    X, y = make_classification(n_samples=6_000, n_features=10, n_informative=5, class_sep=1.5, flip_y=0, random_state=2)
    with_ref = detect_label_issues(X[3_000:], y[3_000:], (X[:3_000], y[:3_000]))
    alone = detect_label_issues(X[3_000:], y[3_000:])
    assert with_ref.rate <= 0.01
    assert alone.rate <= 0.01
    assert not alone.used_reference and alone.calibration_rows == 0


def test_labels_the_reference_never_had_are_not_judged_as_flips() -> None:
    X, y = make_classification(n_samples=2_000, n_features=6, flip_y=0, random_state=3)
    upload_y = y[1_000:].copy()
    upload_y[:20] = 7
    report = detect_label_issues(X[1_000:], upload_y, (X[:1_000], y[:1_000]))
    assert report.unknown_label_rows == 20
    assert np.intersect1d(report.rows, np.arange(20)).size == 0
