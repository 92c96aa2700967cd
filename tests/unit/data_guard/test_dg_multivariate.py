"""Multivariate outliers: joint anomalies that no single feature shows."""

from __future__ import annotations

import numpy as np

from services.data_guard.outliers import (
    MahalanobisScorer,
    NeighbourScorer,
    NormalScores,
    RobustZScorer,
    detect_outliers,
    symmetric_stats,
)


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


def test_normal_scores_tame_heavy_tails_and_keep_blatant_values_far() -> None:
    rng = np.random.default_rng(7)
    heavy = rng.lognormal(sigma=1.5, size=(5_000, 1))
    scores = NormalScores.fit(heavy)
    z = scores.transform(heavy)[:, 0]
    assert abs(float(np.mean(z))) < 0.05 and abs(float(np.std(z)) - 1.0) < 0.05
    far = scores.transform(np.array([[heavy.max() * 20 + 1.0]]))[0, 0]
    assert far > 10.0  # beyond the fitted range: continues in robust sigmas, not capped at ~3.7


def test_mahalanobis_on_normal_scores_sees_mismatched_heavy_tailed_pairs() -> None:
    # A monotone but non-linear, heavy-tailed pair (area grows like radius squared): the pairing
    # breaks while each value stays in range.
    rng = np.random.default_rng(8)

    def pair(n: int) -> np.ndarray:
        r = rng.lognormal(sigma=0.6, size=n)
        return np.column_stack([r, r**2 * np.exp(0.05 * rng.normal(size=n)), rng.normal(size=n)])

    reference, upload = pair(5_000), pair(2_000)
    bad = np.arange(40)
    upload[bad, 1] = rng.permutation(upload[:, 1])[: bad.size]
    report = detect_outliers(upload, reference, scorer=MahalanobisScorer())
    assert np.intersect1d(report.rows, bad).size >= 28  # a random partner is sometimes close
    assert np.setdiff1d(report.rows, bad).size <= 10


def test_neighbour_scale_of_a_nearly_constant_feature_is_the_spread_off_its_median() -> None:
    X = np.zeros((1_000, 2))
    X[:, 0] = np.random.default_rng(9).normal(size=1_000)
    X[0, 1] = 16.0  # one rare value: the std (0.5) would make a 1 look like 2 sigma, not 0.06
    stats = symmetric_stats(X)
    assert stats.upper[1] > 10.0
