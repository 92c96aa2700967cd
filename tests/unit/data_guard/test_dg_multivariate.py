"""Multivariate outliers: joint anomalies that no single feature shows."""

from __future__ import annotations

import numpy as np

from services.data_guard.outliers import MahalanobisScorer, NeighbourScorer, RobustZScorer, detect_outliers


def _correlated(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return np.column_stack([a, a + 0.1 * rng.normal(size=n), rng.normal(size=n)])


def test_mahalanobis_catches_correlation_breaking_rows_the_per_feature_rule_misses() -> None:
    reference, upload = _correlated(5_000, 0), _correlated(2_000, 1)
    bad = np.arange(40)
    upload[bad, 1] = -upload[bad, 0]  # both values ordinary, their pairing impossible
    upload[bad, 0] = np.where(np.abs(upload[bad, 0]) < 1, 1.5, upload[bad, 0])
    per_feature = detect_outliers(upload, reference, scorer=RobustZScorer())
    joint = detect_outliers(upload, reference, scorer=MahalanobisScorer())
    assert np.intersect1d(per_feature.rows, bad).size < 5
    assert set(bad.tolist()) <= set(joint.rows.tolist())
    assert joint.rows.size <= bad.size + 10  # calibrated: ~0.1 % of 2000 clean rows
    assert joint.fitted_on_reference and joint.expected_rate == 0.001


def test_neighbour_score_sees_the_empty_space_between_clusters() -> None:
    rng = np.random.default_rng(4)
    centres = np.array([[-6.0, -6.0], [6.0, 6.0]])
    reference = centres[rng.integers(0, 2, 4_000)] + rng.normal(scale=0.5, size=(4_000, 2))
    upload = centres[rng.integers(0, 2, 1_000)] + rng.normal(scale=0.5, size=(1_000, 2))
    upload[:10] = rng.normal(scale=0.3, size=(10, 2))  # between the clusters: near the mean
    neighbours = detect_outliers(upload, reference, scorer=NeighbourScorer())
    mahalanobis = detect_outliers(upload, reference, scorer=MahalanobisScorer())
    assert set(range(10)) <= set(neighbours.rows.tolist())
    assert np.intersect1d(mahalanobis.rows, np.arange(10)).size == 0  # one ellipsoid cannot see it


def test_without_reference_robust_fit_still_finds_blatant_rows() -> None:
    upload = _correlated(3_000, 5)
    upload[:60] = 40.0
    report = detect_outliers(upload, None, scorer=MahalanobisScorer(robust=True))
    assert set(range(60)) <= set(report.rows.tolist())
    assert not report.fitted_on_reference and report.calibration == "assumed"
    assert report.rows.size < 60 + 0.01 * 3_000


def test_nan_cells_never_make_nan_scores() -> None:
    X = _correlated(500, 6)
    X[3, 1] = np.nan
    for scorer in (MahalanobisScorer(), NeighbourScorer()):
        assert np.isfinite(scorer.fit(X).score(X)).all()
