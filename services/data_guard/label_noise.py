"""Label-consistency check: rows whose label disagrees with a strong majority of their neighbours.

Features are standardised (median and robust scale, clipped, NaN imputed to the centre) so that
no single large-valued feature decides the distances. With a trusted reference, neighbours come
from the reference and its own leave-one-out disagreement rate calibrates what "normal" is;
without one, neighbours come from the upload itself, excluding the row itself. This is the
naive neighbour vote (a baseline; issue 4 replaces it with out-of-sample probabilities and
confident learning, Northcutt et al., JAIR 2021), kept fast by capping the fitted set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from services.data_guard.outliers import RobustStats

# Standardised values are clipped: one blatant outlier cell must not dominate every distance.
_Z_CLIP = 10.0


@dataclass(frozen=True)
class LabelNoiseReport:
    """Rows whose label contradicts a strong neighbour majority, with the calibration used."""

    rows: np.ndarray
    """sorted 0-based indices of flagged rows (int64)."""
    checked_rows: int
    """how many rows were queried (all of them unless the query cap sampled)."""
    fit_rows: int
    """how many rows the neighbour index holds (capped by sampling)."""
    k: int
    """neighbours per row."""
    majority: float
    """fraction of neighbours that must agree on another label to flag a row."""
    expected_rate: float
    """flag rate of clean data: reference leave-one-out rate, or an assumed rate."""
    used_reference: bool
    """True when the neighbours came from a trusted reference."""
    sampled: bool
    """True when fitted or queried rows were sampled to stay fast."""

    @property
    def rate(self) -> float:
        """Fraction of checked rows flagged."""
        return float(self.rows.size / self.checked_rows) if self.checked_rows else 0.0


def encode_labels(*label_arrays: np.ndarray) -> list[np.ndarray]:
    """Map labels (numbers or strings) of several arrays to shared integer codes."""
    as_text = any(a.dtype.kind in "US" for a in label_arrays)
    arrays = [a.astype(str) if as_text else a for a in label_arrays]
    _, codes = np.unique(np.concatenate(arrays), return_inverse=True)
    out: list[np.ndarray] = []
    start = 0
    for a in arrays:
        out.append(codes[start : start + a.shape[0]].astype(np.int64))
        start += a.shape[0]
    return out


def standardise(X: np.ndarray, stats: RobustStats) -> np.ndarray:
    """Robust z-scores clipped to +-10, non-finite cells set to 0 (the centre)."""
    z = stats.transform(X)
    z[~np.isfinite(z)] = 0.0
    return np.asarray(np.clip(z, -_Z_CLIP, _Z_CLIP))


def _neighbour_votes(
    fit_Z: np.ndarray,
    fit_codes: np.ndarray,
    fit_ids: np.ndarray | None,
    query_Z: np.ndarray,
    query_ids: np.ndarray | None,
    k: int,
) -> np.ndarray:
    """(n_query, k) neighbour label codes, excluding each query row itself when it is fitted.

    `fit_ids` / `query_ids` are row ids in one numbering (None when the sets are disjoint).
    """
    exclude_self = fit_ids is not None and query_ids is not None
    n_neighbors = min(k + 1 if exclude_self else k, fit_Z.shape[0])
    # algorithm="auto": sklearn picks a tree for few dimensions and chunked brute force beyond.
    index = NearestNeighbors(n_neighbors=n_neighbors).fit(fit_Z)
    _, idx = index.kneighbors(query_Z)
    if fit_ids is None or query_ids is None:
        return np.asarray(fit_codes[idx])
    is_self = fit_ids[idx] == query_ids[:, None]
    # A row not in the fitted sample, or whose exact duplicate tied ahead of it, has no self
    # among its neighbours: drop its farthest neighbour instead so every row keeps k votes.
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    # Only the first self hit per row is dropped (duplicates share ids only with themselves).
    first = np.zeros_like(is_self)
    first[np.arange(is_self.shape[0]), is_self.argmax(axis=1)] = True
    kept = idx[~first].reshape(idx.shape[0], idx.shape[1] - 1)
    return np.asarray(fit_codes[kept])


def _disagreeing(own: np.ndarray, votes: np.ndarray, n_classes: int, majority: float) -> np.ndarray:
    """Boolean per row: another label holds at least `majority` of the votes."""
    counts = np.zeros((votes.shape[0], n_classes), dtype=np.int64)
    rows = np.repeat(np.arange(votes.shape[0]), votes.shape[1])
    np.add.at(counts, (rows, votes.ravel()), 1)
    counts[np.arange(own.shape[0]), own] = -1  # the row's own label cannot be "another label"
    top = counts.max(axis=1)
    return np.asarray(top >= np.ceil(majority * votes.shape[1] - 1e-9))


def detect_label_noise(
    X: np.ndarray,
    y: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    k: int = 10,
    majority: float = 0.8,
    max_fit_rows: int = 10_000,
    max_query_rows: int = 100_000,
    no_reference_rate: float = 0.02,
    seed: int = 0,
) -> LabelNoiseReport:
    """Flag rows whose label differs from the label held by >= `majority` of their k neighbours.

    `reference` is (X_ref, y_ref), already aligned to X's columns. Above `max_fit_rows` the
    neighbour index holds a seeded random sample; above `max_query_rows` only a sample is checked.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    if reference is not None:
        X_ref, y_ref = reference
        own, ref_codes = encode_labels(y, y_ref)
        stats = RobustStats.fit(X_ref)
        fit_pool_Z, fit_pool_codes = standardise(X_ref, stats), ref_codes
    else:
        (own,) = encode_labels(y)
        stats = RobustStats.fit(X)
        fit_pool_Z, fit_pool_codes = standardise(X, stats), own
    n_classes = int(max(own.max(initial=0), fit_pool_codes.max(initial=0))) + 1
    query_Z = fit_pool_Z if reference is None else standardise(X, stats)

    fit_ids = np.arange(fit_pool_Z.shape[0])
    if fit_ids.size > max_fit_rows:
        fit_ids = np.sort(rng.choice(fit_ids.size, size=max_fit_rows, replace=False))
    query_ids = np.arange(n)
    if n > max_query_rows:
        query_ids = np.sort(rng.choice(n, size=max_query_rows, replace=False))
    sampled = fit_ids.size < fit_pool_Z.shape[0] or query_ids.size < n
    effective_k = min(k, fit_ids.size - (1 if reference is None else 0))
    if effective_k < 1:
        return LabelNoiseReport(
            np.zeros(0, np.int64), 0, int(fit_ids.size), 0, majority, 0.0, reference is not None, sampled
        )

    fit_Z, fit_codes = fit_pool_Z[fit_ids], fit_pool_codes[fit_ids]
    if reference is None:
        votes = _neighbour_votes(fit_Z, fit_codes, fit_ids, query_Z[query_ids], query_ids, effective_k)
        expected = no_reference_rate
    else:
        votes = _neighbour_votes(fit_Z, fit_codes, None, query_Z[query_ids], None, effective_k)
        # Calibrate on the reference itself (leave-one-out over its fitted sample): the rate at
        # which clean rows of this data already disagree with their neighbours.
        ref_votes = _neighbour_votes(fit_Z, fit_codes, fit_ids, fit_Z, fit_ids, effective_k)
        ref_flags = _disagreeing(fit_codes, ref_votes, n_classes, majority)
        expected = max(float(ref_flags.mean()), 1.0 / max(fit_ids.size, 1))
    flags = _disagreeing(own[query_ids], votes, n_classes, majority)
    return LabelNoiseReport(
        rows=query_ids[flags].astype(np.int64),
        checked_rows=int(query_ids.size),
        fit_rows=int(fit_ids.size),
        k=effective_k,
        majority=majority,
        expected_rate=expected,
        used_reference=reference is not None,
        sampled=sampled,
    )
