"""analyze(): the verdict on clean data, poisoned data and bad references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine, make_classification
from sklearn.model_selection import train_test_split

from services.data_guard.detect import DetectorSettings, analyze
from services.data_guard.loader import Table
from shared.canonical import canonical_json
from shared.events import Decision, Severity

DATASETS = {
    "iris": lambda: load_iris(return_X_y=True),
    "wine": lambda: load_wine(return_X_y=True),
    "breast_cancer": lambda: load_breast_cancer(return_X_y=True),
    "classification": lambda: make_classification(
        n_samples=2000, n_features=12, n_informative=8, class_sep=1.5, flip_y=0, random_state=0
    ),
}


def _table(X: np.ndarray, y: np.ndarray | None, names: list[str] | None = None) -> Table:
    names = names or [f"f{i}" for i in range(X.shape[1])]
    return Table(X=np.asarray(X, dtype=float), y=y, feature_names=names, label_name="y")


def _flip(y: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(y.size, size=int(rate * y.size), replace=False))
    classes = np.unique(y)
    flipped = y.copy()
    for i in rows:
        flipped[i] = rng.choice(classes[classes != y[i]])
    return flipped, rows


def _split(name: str) -> tuple[Table, Table]:
    X, y = DATASETS[name]()
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    return _table(Xb, yb), _table(Xa, ya)


def _severity(report: object, check: str) -> Severity:
    findings = [f for f in report.findings if f.check == check]  # type: ignore[attr-defined]
    assert findings, check
    return findings[0].severity


@pytest.mark.parametrize("name", list(DATASETS))
def test_clean_data_is_not_failed(name: str) -> None:
    X, y = DATASETS[name]()
    alone = analyze(_table(X, y))
    assert alone.decision != Decision.FAIL
    assert not alone.used_reference
    assert any(f.check == "reference.none" for f in alone.findings)
    upload, reference = _split(name)
    split = analyze(upload, reference)
    assert split.decision != Decision.FAIL
    assert split.used_reference
    assert len(split.flagged_rows) <= 0.05 * upload.rows


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "classification"])
def test_ten_percent_flipped_labels_fail_with_reference(name: str) -> None:
    upload, reference = _split(name)
    assert upload.y is not None
    noisy, flipped = _flip(upload.y, 0.10, seed=7)
    report = analyze(_table(upload.X, noisy), reference)
    assert report.decision == Decision.FAIL
    assert _severity(report, "label_noise.confident_learning") == Severity.FAIL
    caught = np.intersect1d(report.flagged_rows, flipped).size
    assert caught >= 0.6 * flipped.size  # most flipped rows


@pytest.mark.parametrize("name", ["breast_cancer", "classification"])
def test_ten_percent_flipped_labels_fail_without_reference(name: str) -> None:
    X, y = DATASETS[name]()
    noisy, flipped = _flip(y, 0.10, seed=8)
    report = analyze(_table(X, noisy))
    assert report.decision == Decision.FAIL
    assert np.intersect1d(report.flagged_rows, flipped).size >= 0.6 * flipped.size


@pytest.mark.parametrize("name", ["iris", "wine"])
@pytest.mark.parametrize("seed", [8, 12, 13])
def test_ten_percent_flipped_labels_never_pass_on_small_data(name: str, seed: int) -> None:
    # 15-18 flipped rows without a reference: too few for the count test to always reach
    # `fail`, but always enough to warn.
    X, y = DATASETS[name]()
    noisy, flipped = _flip(y, 0.10, seed=seed)
    report = analyze(_table(X, noisy))
    assert report.decision in (Decision.WARN, Decision.FAIL)
    assert np.intersect1d(report.flagged_rows, flipped).size >= 0.5 * flipped.size


def test_blatant_outliers_flagged_and_fail_when_many() -> None:
    upload, reference = _split("breast_cancer")
    X = upload.X.copy()
    rng = np.random.default_rng(9)
    bad = np.sort(rng.choice(X.shape[0], size=int(0.08 * X.shape[0]), replace=False))
    X[bad, rng.integers(0, X.shape[1], size=bad.size)] = 1e6
    for ref in (reference, None):
        report = analyze(_table(X, upload.y), ref)
        assert set(bad.tolist()) <= set(report.flagged_rows)
        assert _severity(report, "outliers.robust_z") == Severity.FAIL
        assert report.decision == Decision.FAIL


def test_conflicting_duplicates_fail() -> None:
    X, y = load_iris(return_X_y=True)
    copies = np.arange(0, 150, 10)  # 15 rows copied with another label
    X2 = np.vstack([X, X[copies]])
    y2 = np.concatenate([y, (y[copies] + 1) % 3])
    report = analyze(_table(X2, y2))
    assert _severity(report, "duplicates.conflicting_labels") == Severity.FAIL
    assert report.decision == Decision.FAIL
    # each conflicting pair is flagged on the side the out-of-sample model finds less plausible
    flagged = set(report.flagged_rows)
    for original, copy in zip(copies.tolist(), range(150, 165), strict=True):
        assert original in flagged or copy in flagged
    assert len(flagged & set(range(150, 165))) >= 12


def test_schema_mismatch_fails_and_falls_back() -> None:
    upload, reference = _split("wine")
    renamed = _table(reference.X, reference.y, [*reference.feature_names[:-1], "other"])
    report = analyze(upload, renamed)
    assert _severity(report, "schema.features") == Severity.FAIL
    assert report.decision == Decision.FAIL
    assert not report.used_reference


def test_reference_columns_aligned_by_name() -> None:
    upload, reference = _split("wine")
    order = list(range(len(reference.feature_names)))[::-1]
    shuffled = _table(reference.X[:, order], reference.y, [reference.feature_names[i] for i in order])
    assert analyze(upload, shuffled).flagged_rows == analyze(upload, reference).flagged_rows


def test_class_balance_shift_against_reference() -> None:
    X, y = make_classification(n_samples=4000, n_features=8, flip_y=0, random_state=2)
    reference = _table(X[:2000], y[:2000])
    keep = np.flatnonzero((y[2000:] == 1) | (np.arange(2000) % 5 == 0)) + 2000  # drop 80 % of 0s
    report = analyze(_table(X[keep], y[keep]), reference)
    assert _severity(report, "class_balance.tvd") == Severity.FAIL
    same = analyze(_table(X[2000:], y[2000:]), reference)
    assert _severity(same, "class_balance.tvd") == Severity.INFO


def test_non_finite_values_reported_not_fatal() -> None:
    X, y = load_wine(return_X_y=True)
    X = X.copy()
    X[3, 2] = np.inf
    X[7, 0] = np.nan
    report = analyze(_table(X, y))
    assert _severity(report, "values.non_finite") == Severity.WARN
    assert {3, 7} <= set(report.flagged_rows)
    assert report.decision == Decision.WARN


def test_report_is_canonical_json_and_cli_ready() -> None:
    X, y = load_iris(return_X_y=True)
    report = analyze(_table(X, y.astype(str)))
    canonical_json(report.model_dump(mode="json"))  # no NaN/inf sneaks into evidence
    summary = report.cli_summary()
    assert summary["decision"] == report.decision.value
    assert summary["flagged_rows"] == sorted(set(report.flagged_rows))
    for finding in summary["findings"]:  # type: ignore[attr-defined]
        assert set(finding) == {"check", "severity", "message", "rows"}


def test_unlabelled_and_regression_targets_skip_label_checks() -> None:
    X, _ = load_wine(return_X_y=True)
    assert analyze(_table(X, None)).decision != Decision.FAIL
    target = np.random.default_rng(0).normal(size=X.shape[0])
    report = analyze(_table(X, target))
    assert any(f.check == "label_noise.skipped" for f in report.findings)


def test_hundred_thousand_clean_rows_pass_with_a_bounded_label_fit() -> None:
    # How fast this is belongs to `benchmarks/data_guard.py` (1,000,000 rows, with the figure
    # and its goal); a wall-clock assertion here failed on a loaded CI machine (issue 13).
    X, y = make_classification(n_samples=120_000, n_features=20, n_informative=8, flip_y=0, random_state=3)
    settings = DetectorSettings()
    report = analyze(_table(X[:100_000], y[:100_000]), _table(X[100_000:], y[100_000:]), settings)
    assert report.decision != Decision.FAIL
    noise = next(f for f in report.findings if f.check == "label_noise.confident_learning")
    assert noise.evidence["fit_rows"] == settings.label_max_fit_rows or noise.evidence["fit_rows"] <= 20_000
