"""Exact duplicate rows and duplicates whose labels conflict, by grouping identical rows.

Rows are compared byte-for-byte after canonicalising -0.0 to 0.0 and every NaN to one NaN, and
grouped with one sort (`np.unique` over a void view of each row): O(n log n), never all pairs.

Near-duplicates are rows that fall in the same cell of a fine grid over the robustly standardised
features (width `width` robust sigmas): a locality-sensitive hash (Indyk & Motwani, STOC 1998)
with one 64-bit key per row, so grouping stays one sort. Copies of reference rows are found by
hashing both tables' rows and joining on the key; a copy whose label differs from the trusted
row's is a label flip of known data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.data_guard.label_noise import encode_labels
from services.data_guard.outliers import RobustStats

# Odd 64-bit multipliers for the row hash (fixed: keys must agree between upload and reference).
_MULTIPLIERS = np.random.default_rng(0x6D6C77).integers(1, 2**63 - 1, size=4096, dtype=np.uint64) | np.uint64(1)


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


def row_hashes(cells: np.ndarray) -> np.ndarray:
    """One uint64 per row of an int64 (or float64 bit pattern) matrix: sum of cell * odd constant,
    mixed with a xorshift; collisions among a million rows are ~3e-8 likely."""
    if cells.shape[1] > _MULTIPLIERS.size:
        raise ValueError("too many columns to hash")
    words = np.ascontiguousarray(cells).view(np.uint64)
    h = np.zeros(cells.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(cells.shape[1]):
            h += words[:, j] * _MULTIPLIERS[j]
            h ^= h >> np.uint64(29)
    return h


def _canonical(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.where(np.isnan(X), np.nan, X + 0.0), dtype=np.float64)


@dataclass(frozen=True)
class NearDuplicateReport:
    """Rows sharing a fine grid cell with another row, and such groups with several labels."""

    group: np.ndarray
    """per row: its cell's group id (rows alone in their cell get their own)."""
    near_duplicate_rows: np.ndarray
    """sorted rows that share their cell with an earlier row."""
    conflicting_rows: np.ndarray
    """sorted rows of cells that carry more than one label."""
    conflicting_groups: int
    width: float
    """cell width in robust standard deviations."""


def find_near_duplicates(
    X: np.ndarray, y: np.ndarray | None, stats: RobustStats, *, width: float = 0.02
) -> NearDuplicateReport:
    """Group rows whose robust z-scores round to the same multiple of `width` in every feature."""
    # Clipped far beyond any real spread, so that the cell index of a 1e308 value (whose z overflows)
    # still fits an int64 instead of casting inf.
    z = np.clip(stats.transform(X), -1e12, 1e12)
    cells = np.where(np.isfinite(z), np.floor(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0) / width), -(2**40))
    _, group = np.unique(row_hashes(cells.astype(np.int64)), return_inverse=True)
    group = group.ravel()
    _, first = np.unique(group, return_index=True)
    is_first = np.zeros(X.shape[0], dtype=bool)
    is_first[first] = True
    empty = np.zeros(0, dtype=np.int64)
    conflicting, n_groups = empty, 0
    if y is not None and X.shape[0]:
        (codes,) = encode_labels(y)
        pairs = np.unique(group.astype(np.int64) * (int(codes.max()) + 1) + codes)
        labels_per_group = np.bincount(pairs // (int(codes.max()) + 1), minlength=int(group.max()) + 1)
        bad = labels_per_group > 1
        n_groups = int(np.count_nonzero(bad))
        conflicting = np.flatnonzero(bad[group]).astype(np.int64)
    return NearDuplicateReport(group, np.flatnonzero(~is_first).astype(np.int64), conflicting, n_groups, width)


@dataclass(frozen=True)
class ReferenceCopyReport:
    """Upload rows that are exact copies of reference rows."""

    copy_rows: np.ndarray
    """sorted upload rows whose features equal some reference row's."""
    relabelled_rows: np.ndarray
    """sorted copies whose label is none of the labels the reference gives those features."""


def find_reference_copies(
    X: np.ndarray, y: np.ndarray | None, X_ref: np.ndarray, y_ref: np.ndarray | None
) -> ReferenceCopyReport:
    """Join upload and reference rows on a 64-bit hash of their canonical feature bytes."""
    h = row_hashes(_canonical(X))
    h_ref = row_hashes(_canonical(X_ref))
    copies = np.isin(h, h_ref)
    relabelled = np.zeros(0, dtype=np.int64)
    if y is not None and y_ref is not None and copies.any():
        codes, ref_codes = encode_labels(y, y_ref)
        k = np.uint64(int(max(codes.max(initial=0), ref_codes.max(initial=0))) + 1)
        with np.errstate(over="ignore"):
            pair = h * k + codes.astype(np.uint64)
            ref_pair = h_ref * k + ref_codes.astype(np.uint64)
        relabelled = np.flatnonzero(copies & ~np.isin(pair, ref_pair)).astype(np.int64)
    return ReferenceCopyReport(np.flatnonzero(copies).astype(np.int64), relabelled)


def resolve_conflicts(
    rows: np.ndarray, group: np.ndarray, codes: np.ndarray, label_probability: np.ndarray, *, tie: float = 0.05
) -> np.ndarray:
    """Of the rows in label-conflicting groups, the ones to flag: those not carrying their group's
    most plausible label (highest mean out-of-sample probability of the label).

    Labels within `tie` of the best count as ties and the whole group is flagged: identical
    features give the model nothing but its own estimate, and an out-of-sample probability from a
    model fitted on a few hundred rows is not precise to a few hundredths, so a 0.501 / 0.499 split
    says "unknown", not "the first label" (seen on breast_cancer, issue 4)."""
    if rows.size == 0:
        return rows
    g, c, p = group[rows], codes[rows], label_probability[rows]
    keys = g.astype(np.int64) * (int(codes.max()) + 1) + c
    uniq, inv = np.unique(keys, return_inverse=True)
    mean_p = np.bincount(inv, weights=p) / np.bincount(inv)
    key_group = uniq // (int(codes.max()) + 1)
    best = np.full(int(group.max()) + 1, -1.0)
    np.maximum.at(best, key_group, mean_p)
    winners = mean_p >= best[key_group] - max(tie, 1e-9)
    n_winners = np.bincount(key_group, weights=winners.astype(float), minlength=best.size)
    # a tie (two labels equally plausible) cannot be resolved: flag the whole group
    keep = ~winners[inv] | (n_winners[g] > 1)
    return np.sort(rows[keep])
