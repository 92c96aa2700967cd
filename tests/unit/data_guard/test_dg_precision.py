"""Flagged rows a person can trust (issue 12): which rows each detector lists, not the decision."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification

from services.data_guard.calibration import select_by_false_share
from services.data_guard.detect import DetectorSettings, analyze
from services.data_guard.loader import Table
from shared.events import Decision, Severity


def _table(X: np.ndarray, y: np.ndarray) -> Table:
    return Table(X=np.asarray(X, dtype=float), y=y, feature_names=[f"f{i}" for i in range(X.shape[1])], label_name="y")


def _precision_recall(flagged: list[int], truth: np.ndarray) -> tuple[float, float]:
    tp = np.intersect1d(flagged, truth).size
    return tp / max(len(flagged), 1), tp / truth.size


def test_selection_keeps_the_rows_beyond_the_clean_tail_and_drops_the_clean_ones_near_the_threshold() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=5_000)
    scores = np.concatenate([rng.normal(size=9_700), rng.uniform(6.0, 10.0, 300)])
    candidates = np.flatnonzero(scores > 2.3)  # a 1 % clean rate: ~100 clean candidates beside the 300
    kept = candidates[select_by_false_share(scores[candidates], clean, scores.size, 0.1)]
    poisoned = np.arange(9_700, 10_000)
    assert set(poisoned.tolist()) <= set(kept.tolist())
    # about 10 % clean in expectation (Benjamini-Hochberg); this draw: 41 of 341
    assert np.setdiff1d(kept, poisoned).size <= 0.15 * kept.size


def test_selection_lists_almost_nothing_of_a_clean_upload() -> None:
    rng = np.random.default_rng(1)
    clean, scores = rng.normal(size=5_000), rng.normal(size=10_000)
    candidates = np.flatnonzero(scores > 2.3)
    assert candidates.size > 50
    assert select_by_false_share(scores[candidates], clean, scores.size, 0.1).size <= 5


def test_selection_keeps_every_candidate_without_clean_scores() -> None:
    scores = np.array([5.0, 4.0, 3.0])
    assert select_by_false_share(scores, np.zeros(0), 100, 0.1).tolist() == [0, 1, 2]


def test_selection_keeps_tied_scores_together() -> None:
    clean = np.linspace(0.0, 1.0, 1_000)
    scores = np.array([2.0, 2.0, 2.0, 0.999])
    assert select_by_false_share(scores, clean, 1_000, 0.1).tolist() == [0, 1, 2]


def _outlier_case() -> tuple[Table, Table, np.ndarray]:
    X, y = make_classification(n_samples=8_000, n_features=10, n_informative=6, class_sep=1.5, flip_y=0, random_state=3)
    reference = _table(X[:4_000], y[:4_000])
    Xu = X[4_000:].copy()
    rng = np.random.default_rng(3)
    bad = np.sort(rng.choice(4_000, size=120, replace=False))
    sigma = np.std(Xu, axis=0)
    for i in bad:
        cols = rng.choice(10, size=2, replace=False)
        Xu[i, cols] = np.median(Xu[:, cols], axis=0) + rng.choice([-1.0, 1.0], 2) * rng.uniform(7, 12, 2) * sigma[cols]
    return _table(Xu, y[4_000:]), reference, bad


def test_outlier_upload_lists_the_outliers_not_the_label_models_clean_doubts() -> None:
    upload, reference, bad = _outlier_case()
    report = analyze(upload, reference)
    assert report.decision == Decision.FAIL
    precision, recall = _precision_recall(report.flagged_rows, bad)
    assert precision >= 0.9
    assert recall >= 0.95
    # confident learning flags ~1 % of any upload at its calibrated rate; on an upload whose labels
    # are untouched, those rows are not listed for a person to inspect
    label = next(f for f in report.findings if f.check == "label_noise.confident_learning")
    assert label.count <= 0.2 * bad.size


def test_count_test_still_sees_every_row_above_the_calibrated_threshold() -> None:
    upload, reference, _ = _outlier_case()
    report = analyze(upload, reference)
    for finding in report.findings:
        if finding.check.startswith("outliers.") or finding.check == "label_noise.confident_learning":
            above = finding.evidence["above_threshold"]
            assert isinstance(above, int)
            assert finding.count <= above
    mahalanobis = next(f for f in report.findings if f.check == "outliers.mahalanobis")
    assert mahalanobis.severity == Severity.FAIL


def test_listing_everything_restores_the_rows_above_the_threshold() -> None:
    upload, reference, _ = _outlier_case()
    everything = analyze(upload, reference, DetectorSettings(row_false_share=0.999))
    trusted = analyze(upload, reference)
    assert set(trusted.flagged_rows) <= set(everything.flagged_rows)
    assert trusted.decision == everything.decision
