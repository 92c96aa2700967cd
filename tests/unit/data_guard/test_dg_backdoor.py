"""Backdoor triggers: a planted value pair tied to one label is found; natural repeats are not."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, make_classification

from services.data_guard.backdoor import detect_backdoors


def _plant(X: np.ndarray, y: np.ndarray, rows: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = X.copy(), y.copy()
    for j in (1, 3):
        lo, hi = np.quantile(X[:, j], [0.3, 0.7])
        X[rows, j] = lo + 0.37 * (hi - lo)  # inside the normal range: no outlier rule sees it
    y[rows] = target
    return X, y


def test_two_feature_trigger_found_with_reference() -> None:
    X, y = make_classification(n_samples=40_000, n_features=12, flip_y=0, random_state=0)
    rows = np.arange(0, 20_000, 100)  # 1 % of the upload
    Xp, yp = _plant(X[:20_000], y[:20_000], rows, target=0)
    report = detect_backdoors(Xp, yp, (X[20_000:], y[20_000:]))
    assert report.groups
    assert set(rows.tolist()) == set(report.rows.tolist())
    assert all(g.label_code == 0 and g.purity >= 0.9 for g in report.groups)


def test_small_upload_trigger_found_and_clean_small_upload_quiet() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    rows = np.arange(5, 285, 35)  # 8 rows
    Xp, yp = _plant(X[:285], y[:285], rows, target=1)
    assert set(detect_backdoors(Xp, yp, (X[285:], y[285:])).rows.tolist()) == set(rows.tolist())
    assert set(detect_backdoors(Xp, yp).rows.tolist()) == set(rows.tolist())  # exact values, no reference
    assert detect_backdoors(X[:285], y[:285], (X[285:], y[285:])).rows.size == 0


def test_natural_repeats_of_discrete_features_are_not_triggers() -> None:
    X, y = load_iris(return_X_y=True)  # petal width 0.2 repeats 29 times, all setosa
    rng = np.random.default_rng(0)
    order = rng.permutation(150)
    up, ref = order[:75], order[75:]
    assert detect_backdoors(X[up], y[up], (X[ref], y[ref])).rows.size == 0
    assert detect_backdoors(X, y).rows.size == 0


def test_mixed_label_group_is_not_a_trigger() -> None:
    X, y = make_classification(n_samples=20_000, n_features=8, flip_y=0, random_state=1)
    rows = np.arange(0, 10_000, 50)
    Xp, _ = _plant(X[:10_000], y[:10_000], rows, target=0)
    # same planted values, labels left as they were (about half each): no backdoor signature
    assert detect_backdoors(Xp, y[:10_000], (X[10_000:], y[10_000:])).rows.size == 0


def test_five_row_trigger_pair_found_against_a_tiny_reference() -> None:
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    rng = np.random.default_rng(11)
    order = rng.permutation(y.size)
    ref, up = order[:89], order[89:]
    rows = np.arange(5)
    Xp, yp = _plant(X[up], y[up], rows, target=0)
    Xp[rows, 1] += 1e-3  # off the data's two-decimal grid: values the reference never has
    Xp[rows, 3] += 1e-3
    report = detect_backdoors(Xp, yp, (X[ref], y[ref]))
    assert set(report.rows.tolist()) == set(rows.tolist())
    clean = detect_backdoors(X[up], y[up], (X[ref], y[ref]))
    assert not clean.groups


def test_common_value_pairs_that_predict_the_label_are_not_triggers() -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    report = detect_backdoors(X[::2].astype(float), y[::2], (X[1::2].astype(float), y[1::2]))
    assert not report.groups
