"""Row outlier detection: per-feature robust z-scores, fitted on a trusted reference when given.

A row's score is its largest absolute robust z over the features, z = (x - median) / scale with
scale = 1.4826 * MAD (Hampel's consistent estimator of sigma under normality; Rousseeuw & Croux,
"Alternatives to the median absolute deviation", JASA 1993). The threshold is calibrated on the
reference's own scores to a stated false-flag rate when a reference exists, else a fixed z.

Scorers follow the small `RowScorer` protocol (fit on trusted rows, score any rows), so a
multivariate detector (regularised Mahalanobis, issue 4) plugs into `detect_outliers` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# 1 / Phi^-1(3/4): makes the MAD a consistent estimator of the standard deviation for normal data.
MAD_TO_SIGMA = 1.482602218505602


class RowScorer(Protocol):
    """Something that learns what normal rows look like and scores rows (higher = stranger)."""

    name: str

    def fit(self, X: np.ndarray) -> RowScorer:
        """Learn from trusted (or, failing that, the judged) rows; returns the fitted scorer."""
        ...

    def score(self, X: np.ndarray) -> np.ndarray:
        """One finite, non-negative score per row of X; NaN cells must not produce NaN scores."""
        ...


@dataclass(frozen=True)
class RobustStats:
    """Per-feature median and one robust scale on each side of it ("double MAD").

    Separate scales below and above the median keep skewed features (sizes, counts, areas)
    from flagging their long natural tail (Leys et al., "Detecting outliers: do not use standard
    deviation around the mean, use absolute deviation around the median", JESP 2013).
    """

    center: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> RobustStats:
        """Median and side-wise MAD-based sigma per column, ignoring non-finite cells.

        Fallbacks where a side's MAD is 0: the two-sided MAD; then, for a feature constant on
        most rows (binary, zero-inflated), the MAD of the rows off the median so that a common
        value never makes the others infinitely far; then 1 for a feature constant everywhere.
        """
        d = X.shape[1]
        center = np.zeros(d)
        lower = np.ones(d)
        upper = np.ones(d)
        for j in range(d):
            col = X[:, j]
            col = col[np.isfinite(col)]
            if col.size == 0:
                continue
            med = float(np.median(col))
            dev = col - med
            both = _mad(dev)
            off = _mad(dev[dev != 0])
            fallback = both if both > 0 else (off if off > 0 else 1.0)
            lo = _mad(dev[dev <= 0])
            hi = _mad(dev[dev >= 0])
            center[j] = med
            lower[j] = lo if lo > 0 else fallback
            upper[j] = hi if hi > 0 else fallback
        return cls(center=center, lower=lower, upper=upper)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Robust z-scores, signed (NaN and inf pass through as NaN and inf)."""
        with np.errstate(invalid="ignore", over="ignore"):
            dev = X - self.center
            return np.asarray(np.where(dev >= 0, dev / self.upper, dev / self.lower))


def _mad(dev: np.ndarray) -> float:
    """MAD-based sigma of deviations from a centre (0 for no data)."""
    return float(np.median(np.abs(dev))) * MAD_TO_SIGMA if dev.size else 0.0


class RobustZScorer:
    """Per-feature rule: a row's score is max_j |robust z_j| over its finite cells."""

    name = "robust_z"

    def __init__(self, stats: RobustStats | None = None) -> None:
        self.stats = stats

    def fit(self, X: np.ndarray) -> RobustZScorer:
        """Fit median/MAD per feature on X."""
        return RobustZScorer(RobustStats.fit(X))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Largest absolute robust z per row; non-finite cells are ignored (reported elsewhere)."""
        if self.stats is None:
            raise RuntimeError("RobustZScorer.score called before fit")
        z = np.abs(self.stats.transform(X))
        z[~np.isfinite(z)] = 0.0
        return np.asarray(z.max(axis=1) if z.shape[1] else np.zeros(X.shape[0]))

    def worst_features(self, X: np.ndarray) -> np.ndarray:
        """Index of the feature with the largest |z| per row (the evidence for a flag)."""
        if self.stats is None:
            raise RuntimeError("RobustZScorer.worst_features called before fit")
        z = np.abs(self.stats.transform(X))
        z[~np.isfinite(z)] = 0.0
        return np.asarray(z.argmax(axis=1))


@dataclass(frozen=True)
class OutlierReport:
    """Rows whose score passed the threshold, and how that threshold was set."""

    method: str
    """scorer name, e.g. 'robust_z'."""
    rows: np.ndarray
    """sorted 0-based indices of flagged rows (int64)."""
    scores: np.ndarray
    """score of every row."""
    threshold: float
    """score above which a row is flagged."""
    expected_rate: float
    """fraction of clean rows expected above the threshold (measured on the reference, else assumed)."""
    fitted_on_reference: bool
    """True when the scorer was fitted and calibrated on a trusted reference."""

    @property
    def rate(self) -> float:
        """Fraction of rows flagged."""
        return float(self.rows.size / self.scores.size) if self.scores.size else 0.0


def detect_outliers(
    X: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    scorer: RowScorer | None = None,
    min_threshold: float = 3.5,
    calibration_rate: float = 0.002,
    no_reference_threshold: float = 8.0,
    no_reference_rate: float = 0.01,
) -> OutlierReport:
    """Flag rows of X whose outlier score is unusually high.

    With a reference: fit on it, set the threshold at the (1 - calibration_rate) quantile of the
    reference's own scores (never below `min_threshold`), and measure the clean flag rate there.
    Without one: fit on X itself (the median and MAD resist up to half the rows being poisoned)
    and use the fixed `no_reference_threshold`, assuming `no_reference_rate` of clean rows pass it.
    """
    base = scorer if scorer is not None else RobustZScorer()
    if reference is not None and reference.shape[0] > 0:
        fitted = base.fit(reference)
        ref_scores = fitted.score(reference)
        threshold = max(min_threshold, float(np.quantile(ref_scores, 1.0 - calibration_rate)))
        # The measured rate, floored: a small reference cannot show a rate below 1/n.
        expected = max(calibration_rate, float(np.mean(ref_scores > threshold)))
        on_reference = True
    else:
        fitted = base.fit(X)
        threshold = no_reference_threshold
        expected = no_reference_rate
        on_reference = False
    scores = fitted.score(X)
    rows = np.flatnonzero(scores > threshold).astype(np.int64)
    return OutlierReport(
        method=base.name,
        rows=rows,
        scores=scores,
        threshold=threshold,
        expected_rate=expected,
        fitted_on_reference=on_reference,
    )
