"""Dataset-level comparisons with the reference: per-feature drift as an effect size, and types.

At a million rows every two-sample test rejects, so drift is judged by an effect size: the
1-Wasserstein distance between the upload's and the reference's values of a feature, in units of
the reference's robust spread (scale-free: 0.1 is a tenth of a standard deviation of mass moved).
Both sides are seeded samples, which keeps it linear and bounds its error (Ramdas et al., "On
Wasserstein two-sample testing", Entropy 2017).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from services.data_guard.calibration import sample_rows
from services.data_guard.outliers import MAD_TO_SIGMA


@dataclass(frozen=True)
class FeatureDrift:
    """How far one feature's distribution moved from the reference's."""

    feature: int
    effect: float
    """Wasserstein distance / reference robust sigma."""
    ks_p_value: float
    """Kolmogorov-Smirnov p-value of the same samples (context only; effect decides)."""


def feature_drift(X: np.ndarray, X_ref: np.ndarray, *, max_rows: int = 50_000, seed: int = 0) -> list[FeatureDrift]:
    """Drift of every feature (finite values only), on samples of at most `max_rows` per side."""
    rng = np.random.default_rng(seed)
    rows = sample_rows(X.shape[0], max_rows, rng)
    ref_rows = sample_rows(X_ref.shape[0], max_rows, rng)
    out: list[FeatureDrift] = []
    for j in range(X.shape[1]):
        a = X[rows, j][np.isfinite(X[rows, j])]
        b = X_ref[ref_rows, j][np.isfinite(X_ref[ref_rows, j])]
        if a.size == 0 or b.size == 0:
            continue
        spread = float(np.median(np.abs(b - np.median(b)))) * MAD_TO_SIGMA
        if spread <= 0:
            spread = float(np.std(b)) or 1.0
        effect = float(sps.wasserstein_distance(a, b)) / spread
        p = _ks_pvalue(a, b)
        out.append(FeatureDrift(j, effect, p))
    return out


_WARNINGS_LOCK = threading.Lock()


def _ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS p-value; scipy's exact method falls back to the asymptotic one on ties
    (real data has them) with a RuntimeWarning, which is expected here, not a fault."""
    # catch_warnings changes process-wide state: one thread at a time (uploads run in threads).
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        return float(sps.ks_2samp(a, b).pvalue)


@dataclass(frozen=True)
class TypeMismatch:
    """A feature whose values break a property every reference value has."""

    feature: int
    problem: str
    """'non_integer' (reference all whole numbers), 'out_of_set' (reference has <= 2 values)."""
    rows: int
    """upload rows breaking it."""


def type_mismatches(X: np.ndarray, X_ref: np.ndarray, *, max_rows: int = 200_000, seed: int = 0) -> list[TypeMismatch]:
    """Integer-valued and binary/constant reference features the upload breaks."""
    rng = np.random.default_rng(seed)
    ref = X_ref[sample_rows(X_ref.shape[0], max_rows, rng)]
    out: list[TypeMismatch] = []
    for j in range(X.shape[1]):
        r = ref[:, j][np.isfinite(ref[:, j])]
        if r.size == 0:
            continue
        col = X[:, j]
        finite = np.isfinite(col)
        values = np.unique(r)
        if values.size <= 2:
            bad = int(np.count_nonzero(finite & ~np.isin(col, values)))
            if bad:
                out.append(TypeMismatch(j, "out_of_set", bad))
                continue
        if np.all(r == np.round(r)):
            bad = int(np.count_nonzero(finite & (col != np.round(col))))
            if bad:
                out.append(TypeMismatch(j, "non_integer", bad))
    return out
