"""Exact duplicate rows and duplicates whose labels conflict, by grouping identical rows.

Rows are compared byte-for-byte after canonicalising -0.0 to 0.0 and every NaN to one NaN, and
grouped with one sort (`np.unique` over a void view of each row): O(n log n), never all pairs.
Near-duplicates (hashing or random projections) and copies of reference rows are issue 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.data_guard.label_noise import encode_labels


@dataclass(frozen=True)
class DuplicateReport:
    """Repeated rows, and groups of identical features carrying different labels."""

    duplicate_rows: np.ndarray
    """sorted rows that repeat an earlier row exactly (features and label); the first is kept."""
    conflicting_rows: np.ndarray
    """sorted rows of every group of identical features that carries more than one label."""
    conflicting_groups: int
    """number of such groups."""


def _row_keys(X: np.ndarray) -> np.ndarray:
    canon = np.where(np.isnan(X), np.nan, X + 0.0)  # X + 0.0 turns -0.0 into 0.0
    canon = np.ascontiguousarray(canon, dtype=np.float64)
    return canon.view(np.dtype((np.void, canon.dtype.itemsize * canon.shape[1]))).ravel()


def find_duplicates(X: np.ndarray, y: np.ndarray | None = None) -> DuplicateReport:
    """Group identical rows of X (and y); report repeats and label conflicts."""
    n = X.shape[0]
    empty = np.zeros(0, dtype=np.int64)
    if n == 0 or X.shape[1] == 0:
        return DuplicateReport(empty, empty, 0)
    _, feature_group = np.unique(_row_keys(X), return_inverse=True)
    feature_group = feature_group.ravel()
    if y is None:
        full_group = feature_group
    else:
        (codes,) = encode_labels(y)
        # Pair (feature group, label) into one integer per row; both are < n.
        full_group = feature_group.astype(np.int64) * (int(codes.max()) + 1) + codes
    _, first_index = np.unique(full_group, return_index=True)
    is_first = np.zeros(n, dtype=bool)
    is_first[first_index] = True
    duplicate_rows = np.flatnonzero(~is_first).astype(np.int64)

    conflicting = empty
    groups = 0
    if y is not None:
        # A feature group conflicts when it holds more than one distinct (features, label) pair.
        distinct_pairs = np.unique(full_group)
        pair_group = distinct_pairs // (int(codes.max()) + 1)
        labels_per_group = np.bincount(pair_group, minlength=int(feature_group.max()) + 1)
        bad_group = labels_per_group > 1
        groups = int(np.count_nonzero(bad_group))
        conflicting = np.flatnonzero(bad_group[feature_group]).astype(np.int64)
    return DuplicateReport(duplicate_rows, conflicting, groups)
