"""The space the extraction detectors measure queries in, fitted offline on the reference (issue 9).

Distances between raw or robustly standardised rows are ruled by heavy-tailed and integer-valued
features: one log-normal amount far in its tail, or an integer count whose median absolute
deviation is 0, puts every distance at the scale of that one feature, and PRADA's distances of
honest clients then look as synthetic as an attacker's. The extraction detectors therefore work
in a Gaussian copula space: each feature is mapped through its reference CDF (mid-ranks, so ties
of an integer feature share one value) to a normal score, so every feature weighs about one sigma
whatever its law, and a 1% jitter on a tail value stays a small move.

For the distribution distance the copula scores are projected on principal axes of the reference
(`fit_projection`), whitened: the leading axes carry the features' correlations, the trailing ones
the directions the reference barely uses, where queries with broken correlations spread most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import ndtri

FloatArray = npt.NDArray[np.float64]
#: Knots kept per feature for its CDF: enough for a smooth map, bounded profile size.
MAX_KNOTS = 256
#: Principal axes kept for the distribution distance (half leading, half trailing when d is larger).
MAX_AXES = 8
# A near-zero eigenvalue (a feature that is almost a function of others) must not turn any jitter
# into a huge whitened move: eigenvalues are floored at this share of the mean eigenvalue.
_EIGEN_FLOOR = 0.05


@dataclass(frozen=True)
class Copula:
    """Per-feature knots (values) and their mid-rank CDF levels."""

    values: list[FloatArray]
    levels: list[FloatArray]

    def transform(self, x: FloatArray) -> FloatArray:
        """Normal scores of raw rows `x` (n x d); values beyond the reference clamp to its ends,
        NaN stays NaN (the OOD and invalid-input detectors judge those)."""
        u = np.empty(x.shape, dtype=np.float64)
        for j, (v, f) in enumerate(zip(self.values, self.levels, strict=True)):
            u[:, j] = np.interp(x[:, j], v, f)
        out: FloatArray = ndtri(u)
        return out


def fit_copula(x: FloatArray) -> Copula:
    """Knots of each column's empirical CDF at mid-ranks, at most `MAX_KNOTS` per feature."""
    n = x.shape[0]
    values: list[FloatArray] = []
    levels: list[FloatArray] = []
    for j in range(x.shape[1]):
        v, counts = np.unique(x[:, j], return_counts=True)
        f = (np.cumsum(counts) - counts / 2.0) / n
        if len(v) > MAX_KNOTS:
            keep = np.unique(np.linspace(0, len(v) - 1, MAX_KNOTS).round().astype(np.int64))
            v, f = v[keep], f[keep]
        values.append(np.asarray(v, dtype=np.float64))
        levels.append(np.asarray(f, dtype=np.float64))
    return Copula(values, levels)


def fit_projection(q: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(mean, d x k whitening matrix) of the reference's principal axes in copula space: all of
    them when d <= `MAX_AXES`, else the leading and trailing `MAX_AXES // 2`."""
    mean = q.mean(axis=0)
    cov = np.atleast_2d(np.cov(q, rowvar=False))
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    d = len(eigval)
    if d <= MAX_AXES:
        pick = np.arange(d)
    else:
        half = MAX_AXES // 2
        pick = np.concatenate([np.arange(half), np.arange(d - half, d)])
    floor = _EIGEN_FLOOR * max(float(eigval.mean()), 1e-12)
    scale = 1.0 / np.sqrt(np.maximum(eigval[pick], floor))
    matrix: FloatArray = eigvec[:, pick] * scale
    return np.asarray(mean, dtype=np.float64), matrix
