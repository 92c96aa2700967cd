"""What each detector would cost on a table, estimated from its shape before anything runs.

A detector whose estimate is over the budget is skipped and the verdict says so, instead of being
stopped by a clock after the work is spent (issue 12: a 20 x 3,000 upload, 120 KB, held the bus
for more than 8 minutes in the Mahalanobis scorer's 3,000 x 3,000 covariance inversions).

The estimates count elementary operations, with the constants of the code they stand for: the
number of model fits (`calibration.holdout_splits`: five folds and a refit below 5,000 rows, else
one split and the final fit), the sample caps in `DetectorSettings`, and the work per fit. Every
detector but one is linear in rows x columns once its caps apply; the Mahalanobis scorer is not
(n d^2 to form a covariance and about 10 d^3 per pseudo-inverse), so the budget is what bounds it.

The budget itself is linear in the cells read: `ops_per_cell` operations per cell of the upload
and the reference, plus a fixed `base_ops` for the per-column and per-model overheads of small
tables. A detector inside it costs at most a constant per cell, which the loader's cell limit
bounds; one outside it (Mahalanobis on 3,000 columns of 20 rows) is skipped. Estimates are
deliberately rough (a factor of a few): they only need to tell seconds from hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (calibration.holdout_splits) below this many trusted rows the scorers are cross-fitted in folds.
_MIN_SPLIT = 5_000
_FOLDS = 5
# (label_noise._classifier) boosting rounds and leaves per tree; histograms have up to 256 bins.
_BOOST_ROUNDS = 60
_LEAVES = 15
_BINS = 256
# (outliers.MahalanobisScorer.fit, robust) two Ledoit-Wolf fits and two pseudo-inverses per fit;
# an SVD-based pseudo-inverse of a d x d matrix costs about 10 d^3 operations.
_INVERSES = 2
_SVD = 10.0


@dataclass(frozen=True)
class Shape:
    """The sizes the estimates depend on."""

    rows: int
    """rows of the upload."""
    columns: int
    """feature columns."""
    reference_rows: int = 0
    """rows of the trusted reference (0 without one)."""


def budget(shape: Shape, *, ops_per_cell: float, base_ops: float) -> float:
    """Operations a detector may spend on `shape`: linear in the cells, plus a fixed allowance."""
    return ops_per_cell * (shape.rows + shape.reference_rows) * shape.columns + base_ops


def _fits(trusted_rows: int) -> int:
    """How many times a scorer is fitted on `trusted_rows` rows (folds + refit, or split + final)."""
    return _FOLDS + 1 if trusted_rows < _MIN_SPLIT else 2


def _log2(n: int) -> float:
    return math.log2(max(n, 2))


def robust_z_cost(shape: Shape, *, max_fit: int) -> float:
    """Per-column medians (a sort) for each fit, then one pass to score."""
    trusted = shape.reference_rows or shape.rows
    fit = min(trusted, max_fit)
    return float(_fits(trusted) * fit * _log2(fit) * shape.columns + 4 * (trusted + shape.rows) * shape.columns)


def mahalanobis_cost(shape: Shape, *, max_fit: int) -> float:
    """Rank transforms and the covariance per fit (n d log n + n d^2), inverses (d^3), scoring (n d^2)."""
    trusted = shape.reference_rows or shape.rows
    fit = min(trusted, max_fit)
    d = shape.columns
    per_fit = fit * d * _log2(fit) + 2 * fit * d * d + _INVERSES * _SVD * d**3
    return float(_fits(trusted) * per_fit + (trusted + shape.rows) * d * d)


def neighbours_cost(shape: Shape, *, index_rows: int) -> float:
    """Distances from every scored row to the indexed sample (brute force, the worst case)."""
    trusted = shape.reference_rows or shape.rows
    index = min(trusted, index_rows)
    return float((_fits(trusted) * index + trusted + shape.rows) * index * shape.columns)


def label_noise_cost(shape: Shape, *, max_fit: int) -> float:
    """Boosted trees (histograms per round and leaf) plus a logistic regression, per fit."""
    trusted = shape.reference_rows or shape.rows
    fit = min(trusted, max_fit)
    per_fit = _BOOST_ROUNDS * (fit + _LEAVES * _BINS) * shape.columns + 300 * fit * shape.columns
    return float(_fits(trusted) * per_fit + (trusted + shape.rows) * _BOOST_ROUNDS * shape.columns)


def backdoor_cost(shape: Shape, *, max_features: int = 64) -> float:
    """Exact values per feature (a sort) and all pairs of the first `max_features` features."""
    rows = shape.rows + shape.reference_rows
    paired = min(shape.columns, max_features)
    return float(rows * shape.columns * _log2(rows) + rows * paired * (paired - 1))
