"""Row outlier detection: per-feature robust z-scores, fitted on a trusted reference when given.

A row's score is its largest absolute robust z over the features, z = (x - median) / scale with
scale = 1.4826 * MAD (Hampel's consistent estimator of sigma under normality; Rousseeuw & Croux,
"Alternatives to the median absolute deviation", JASA 1993). The threshold is calibrated on the
reference's own scores to a stated false-flag rate when a reference exists, else a fixed z.

Joint outliers, each value plausible on its own but not together, need multivariate scorers:
`MahalanobisScorer` (a Ledoit-Wolf shrunk covariance of the robustly standardised reference,
trimmed and reweighted when the judged data must fit itself) and
`NeighbourScorer` (mean distance to the nearest rows of a reference sample, for multimodal data
where one ellipsoid fits badly). Scorers follow the `RowScorer` protocol (fit on trusted rows,
score any rows); `detect_outliers` fits one on part of the reference and calibrates its threshold
on the held-out rest (see `calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import stats as sps
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from services.data_guard.calibration import Threshold, calibrate, holdout_splits, sample_rows, tail_quantile

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
        n, d = X.shape
        center = np.zeros(d)
        lower = np.ones(d)
        upper = np.ones(d)
        if n == 0:
            return cls(center=center, lower=lower, upper=upper)
        # Vectorised over blocks of columns (a Python loop per column cost 8 s on 20 x 3,000,
        # issue 12); blocks keep the temporaries to a few million cells whatever the row count.
        step = max(1, _BLOCK_CELLS // max(n, 1))
        for start in range(0, d, step):
            block = X[:, start : start + step]
            values = np.where(np.isfinite(block), block, np.nan)
            med = _nanmedian(values)
            has = ~np.isnan(med)
            dev = values - np.where(has, med, 0.0)
            size = np.abs(dev)
            both = _nanmedian(size) * MAD_TO_SIGMA
            off = _nanmedian(np.where(dev != 0, size, np.nan)) * MAD_TO_SIGMA
            lo = _nanmedian(np.where(dev <= 0, size, np.nan)) * MAD_TO_SIGMA
            hi = _nanmedian(np.where(dev >= 0, size, np.nan)) * MAD_TO_SIGMA
            fallback = np.where(both > 0, both, np.where(off > 0, off, 1.0))
            cols = slice(start, start + block.shape[1])
            center[cols] = np.where(has, med, 0.0)
            lower[cols] = np.where(has, np.where(lo > 0, lo, fallback), 1.0)
            upper[cols] = np.where(has, np.where(hi > 0, hi, fallback), 1.0)
        return cls(center=center, lower=lower, upper=upper)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Robust z-scores, signed (NaN and inf pass through as NaN and inf)."""
        with np.errstate(invalid="ignore", over="ignore"):
            dev = X - self.center
            return np.asarray(np.where(dev >= 0, dev / self.upper, dev / self.lower))


# Cells per block of columns in the vectorised statistics.
_BLOCK_CELLS = 1 << 22


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median of each column over its non-NaN cells (NaN for none), exactly as `np.median`.

    One sort of the block (NaN sorts last) and the middle one or two values per column, which is
    what `np.median` returns for the finite cells: the middle value, or the mean of the two.
    `np.nanmedian` loops in Python over columns shorter than 600 rows.
    """
    ordered = np.sort(values, axis=0)
    count = np.count_nonzero(~np.isnan(values), axis=0)
    low = np.maximum((count - 1) // 2, 0)
    high = np.maximum(count // 2, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.take_along_axis(ordered, low[None, :], axis=0)[0]
        b = np.take_along_axis(ordered, np.minimum(high, max(ordered.shape[0] - 1, 0))[None, :], axis=0)[0]
        middle = np.where(count % 2 == 1, a, (a + b) / 2.0)
    return np.asarray(np.where(count > 0, middle, np.nan))


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


# Standardised cells are clipped: beyond this a value is an outlier anyway, and a 1e300 cell must
# not overflow the squared distances.
_Z_CLIP = 50.0
_CHUNK = 65_536
# Robust sigmas beyond which the self-fitted (no reference) Mahalanobis scorer treats a value as
# a suspect: left out of the ranks and of the first covariance fit.
_ROBUST_FENCE = 10.0


def robust_standardise(X: np.ndarray, stats: RobustStats, clip: float = _Z_CLIP) -> np.ndarray:
    """Robust z-scores (float64), clipped to +-clip, non-finite cells set to 0 (the centre)."""
    z = stats.transform(X)
    z[~np.isfinite(z)] = 0.0
    np.clip(z, -clip, clip, out=z)
    return np.asarray(z)


def symmetric_stats(X: np.ndarray) -> RobustStats:
    """Median and one symmetric scale per feature, IQR / 1.349 (sigma for normal data).

    Distances need the same unit on both sides of the centre: the side-wise MAD of `RobustStats`
    squeezes one mode of a bimodal feature and would hide the gap between modes.
    """
    n, d = X.shape
    center, scale = np.zeros(d), np.ones(d)
    step = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, d if n else 0, step):
        values = X[:, start : start + step]
        values = np.where(np.isfinite(values), values, np.nan)
        ordered = np.sort(values, axis=0)
        count = np.count_nonzero(~np.isnan(values), axis=0)
        q1, med, q3 = (_quantile(ordered, count, q) for q in (0.25, 0.5, 0.75))
        has = count > 0
        iqr = (q3 - q1) / 1.349
        # A feature constant on most rows (an edge pixel, a rare flag) gets the spread of the rows
        # off its median, as in `RobustStats`: its standard deviation would shrink with rarity, so
        # one rare value seen in the fitted rows would make that value extreme for the judged rows
        # but not for held-out rows fitted without it (miscalibrated on digits: 6 flags, ~1 expected).
        with np.errstate(invalid="ignore"):
            off = _nanmedian(np.where(values != med, np.abs(values - med), np.nan)) * MAD_TO_SIGMA
        spread = np.where(iqr > 0, iqr, np.where(off > 0, off, 1.0))
        cols = slice(start, start + values.shape[1])
        center[cols] = np.where(has, med, 0.0)
        scale[cols] = np.where(has, spread, 1.0)
    return RobustStats(center=center, lower=scale, upper=scale.copy())


def _quantile(ordered: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """Per column, the q-quantile of its `count` leading (sorted, non-NaN) cells, exactly as
    `np.quantile(..., method="linear")` computes it (the same lerp, from both ends)."""
    index = (count - 1) * q
    low = np.floor(np.maximum(index, 0)).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    t = np.maximum(index, 0) - low
    a = np.take_along_axis(ordered, low[None, :], axis=0)[0]
    b = np.take_along_axis(ordered, high[None, :], axis=0)[0]
    with np.errstate(invalid="ignore", over="ignore"):
        diff = b - a
        value = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return np.asarray(np.where(count > 0, value, np.nan))


@dataclass(frozen=True)
class NormalScores:
    """Per-feature rank-based inverse normal transform (a Gaussian copula's margins).

    Each value is mapped to Phi^-1 of its mid-rank among the fitted values, so skewed and heavy-
    tailed features become standard normal on the trusted rows, and a Mahalanobis distance on
    them measures how the features go together rather than how far one tail reaches (Liu, Lafferty
    & Wasserman, "The nonparanormal", JMLR 2009). Values beyond the fitted range continue linearly
    in robust sigmas from the outermost normal score, so blatant outliers stay far away.
    """

    sorted_values: tuple[np.ndarray, ...]
    stats: RobustStats

    @classmethod
    def fit(cls, X: np.ndarray, *, fence: float | None = None) -> NormalScores:
        """Sorted finite values per column, and robust scales for the extrapolation.

        `fence` (robust sigmas, side-wise) leaves the values beyond it out of the ranks, for
        fitting on data that may hold the outliers: ranked in, a block of identical outliers would
        only reach the top normal score of its own share (2 % of rows: about 2.3).
        """
        stats = RobustStats.fit(X)
        cols = []
        for j in range(X.shape[1]):
            col = X[:, j][np.isfinite(X[:, j])]
            if fence is not None and col.size:
                dev = col - stats.center[j]
                inside = np.where(dev >= 0, dev / stats.upper[j], -dev / stats.lower[j]) <= fence
                col = col[inside] if inside.any() else col
            cols.append(np.sort(col))
        return cls(sorted_values=tuple(cols), stats=stats)

    def transform(self, X: np.ndarray, clip: float = _Z_CLIP) -> np.ndarray:
        """Normal scores (float64), clipped to +-clip; non-finite cells set to 0 (the centre)."""
        out = np.zeros(X.shape, dtype=np.float64)
        for j, ref in enumerate(self.sorted_values):
            n = ref.size
            col = X[:, j]
            if n == 0:
                continue
            finite = np.isfinite(col)
            x = np.where(finite, col, ref[n // 2])
            mid = (np.searchsorted(ref, x, "left") + np.searchsorted(ref, x, "right")) / 2.0
            z = sps.norm.ppf(np.clip(mid, 0.5, n - 0.5) / n)
            edge = float(sps.norm.ppf(1.0 - 0.5 / n))
            z = np.where(x > ref[-1], edge + (x - ref[-1]) / self.stats.upper[j], z)
            z = np.where(x < ref[0], -edge - (ref[0] - x) / self.stats.lower[j], z)
            out[:, j] = np.where(finite, z, 0.0)
        np.clip(out, -clip, clip, out=out)
        return out


class MahalanobisScorer:
    """Mahalanobis distance under a regularised covariance of the normal scores (`NormalScores`).

    Ledoit-Wolf shrinkage (Ledoit & Wolf, J. Multivariate Anal. 2004) keeps the precision matrix
    well conditioned with few rows or collinear features; `robust=True` trims and reweights
    before the final fit, for fitting on data that may itself hold the outliers.
    """

    name = "mahalanobis"

    def __init__(self, *, robust: bool = False, max_rows: int = 50_000, seed: int = 0) -> None:
        self.robust = robust
        self.max_rows = max_rows
        self.seed = seed
        self.stats: NormalScores | None = None
        self.location: np.ndarray | None = None
        self.precision: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> MahalanobisScorer:
        """Standardise robustly, then estimate location and shrunk (or MCD) covariance."""
        fitted = MahalanobisScorer(robust=self.robust, max_rows=self.max_rows, seed=self.seed)
        rng = np.random.default_rng(self.seed)
        rows = sample_rows(X.shape[0], self.max_rows, rng)
        fitted.stats = NormalScores.fit(X[rows], fence=_ROBUST_FENCE if self.robust else None)
        Z = fitted.stats.transform(X[rows])
        if self.robust:
            # Reweighted shrinkage: fit, drop the rows beyond the chi-square 97.5 % point, refit.
            # The trimmed rows cannot pull the ellipsoid towards themselves, as in the reweighting
            # step of the MCD (Rousseeuw & Van Driessen 1999), at the cost of two cheap fits.
            keep = np.abs(Z).max(axis=1) <= _ROBUST_FENCE
            if keep.sum() <= Z.shape[1] + 1:
                keep[:] = True
            lw = LedoitWolf().fit(Z[keep])
            centred = Z - lw.location_
            d2 = np.einsum("ij,ij->i", centred @ np.linalg.pinv(lw.covariance_), centred)
            inliers = d2 <= float(sps.chi2.ppf(0.975, Z.shape[1]))
            if inliers.sum() > Z.shape[1] + 1:
                lw = LedoitWolf().fit(Z[inliers])
            location, cov = lw.location_, lw.covariance_
        else:
            lw = LedoitWolf().fit(Z)
            location, cov = lw.location_, lw.covariance_
        fitted.location = location
        fitted.precision = np.linalg.pinv(cov)
        return fitted

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row (NaN cells sit at the centre), in chunks."""
        if self.stats is None or self.location is None or self.precision is None:
            raise RuntimeError("MahalanobisScorer.score called before fit")
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], _CHUNK):
            Z = self.stats.transform(X[start : start + _CHUNK]) - self.location
            d2 = np.einsum("ij,ij->i", Z @ self.precision, Z)
            out[start : start + _CHUNK] = np.sqrt(np.maximum(d2, 0.0))
        return out


class NeighbourScorer:
    """Mean distance to the k nearest rows of a (sampled) reference, in robust z units.

    A density score that follows several clusters, where one covariance ellipsoid would cover the
    empty space between them (k-NN outlier score: Ramaswamy et al., SIGMOD 2000). The index is a
    seeded sample of `max_index` rows so that scoring stays linear in the judged rows.
    """

    name = "neighbours"

    def __init__(self, *, k: int = 5, max_index: int = 2_000, seed: int = 0) -> None:
        self.k = k
        self.max_index = max_index
        self.seed = seed
        self.stats: RobustStats | None = None
        self.index: NearestNeighbors | None = None
        self.index_rows = 0

    def fit(self, X: np.ndarray) -> NeighbourScorer:
        """Standardise robustly and index a sample of rows."""
        fitted = NeighbourScorer(k=self.k, max_index=self.max_index, seed=self.seed)
        fitted.stats = symmetric_stats(X)
        rows = sample_rows(X.shape[0], self.max_index, np.random.default_rng(self.seed))
        Z = robust_standardise(X[rows], fitted.stats, clip=10.0)
        fitted.index_rows = int(Z.shape[0])
        fitted.index = NearestNeighbors(n_neighbors=min(self.k + 1, fitted.index_rows)).fit(Z)
        return fitted

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mean distance to the k nearest indexed rows; an exact self-match is skipped."""
        if self.stats is None or self.index is None:
            raise RuntimeError("NeighbourScorer.score called before fit")
        out = np.empty(X.shape[0])
        k = min(self.k, self.index_rows - 1) if self.index_rows > 1 else 1
        for start in range(0, X.shape[0], _CHUNK):
            Z = robust_standardise(X[start : start + _CHUNK], self.stats, clip=10.0)
            dist, _ = self.index.kneighbors(Z)
            # A row that is itself in the index finds itself at distance 0: drop that one
            # neighbour (else the farthest), so indexed and other rows get comparable scores.
            keep = np.where(dist[:, :1] == 0.0, dist[:, 1 : k + 1], dist[:, :k]) if dist.shape[1] > k else dist
            out[start : start + _CHUNK] = keep.mean(axis=1)
        return out


@dataclass(frozen=True)
class OutlierReport:
    """Rows whose score passed the calibrated threshold, and how that threshold was set."""

    method: str
    """scorer name: 'robust_z', 'mahalanobis' or 'neighbours'."""
    rows: np.ndarray
    """sorted 0-based indices of flagged rows (int64)."""
    scores: np.ndarray
    """score of every row."""
    threshold: float
    """score above which a row is flagged."""
    expected_rate: float
    """fraction of clean rows expected above the threshold (calibrated, or assumed)."""
    fitted_on_reference: bool
    """True when the scorer was fitted and calibrated on a trusted reference."""
    calibration: str = "assumed"
    """how the threshold was set: 'empirical', 'tail' or 'assumed'."""
    clean_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """held-out reference rows' scores the threshold was calibrated on (empty without a reference)."""

    @property
    def rate(self) -> float:
        """Fraction of rows flagged."""
        return float(self.rows.size / self.scores.size) if self.scores.size else 0.0


def default_floor(scorer: RowScorer, dims: int) -> float:
    """Lowest sensible threshold per scorer, so a tiny, tight reference cannot flag everything."""
    if scorer.name == "robust_z":
        return 3.5
    if scorer.name == "mahalanobis":
        # sqrt of the chi-square 99.9 % point: what a Gaussian's clean rows rarely exceed.
        return math.sqrt(float(sps.chi2.ppf(0.999, max(dims, 1))))
    return 0.0


def detect_outliers(
    X: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    scorer: RowScorer | None = None,
    rate: float = 0.001,
    floor: float | None = None,
    no_reference_rate: float = 0.005,
    max_fit: int = 50_000,
    max_holdout: int = 50_000,
    seed: int = 0,
) -> OutlierReport:
    """Flag rows of X whose outlier score is unusually high.

    With a reference: fit on part of it, score the held-out rest, threshold at the clean rows'
    (1 - rate) quantile (`calibration.calibrate`), expected rate = `rate`. Without one: fit on X
    itself (robust estimators) and extrapolate the threshold from the bulk of X's own
    out-of-sample scores (`calibration.tail_quantile`); the clean rate is then assumed
    (`no_reference_rate`), and the report says so.
    """
    base = scorer if scorer is not None else RobustZScorer()
    lowest = default_floor(base, X.shape[1]) if floor is None else floor
    rng = np.random.default_rng(seed)
    trusted = reference if reference is not None and reference.shape[0] > 0 else None
    source = trusted if trusted is not None else X
    held_scores: list[np.ndarray] = []
    fitted: RowScorer | None = None
    splits = list(holdout_splits(source.shape[0], rng, max_fit=max_fit, max_holdout=max_holdout))
    for fit_rows, held_rows in splits:
        model = base.fit(source[fit_rows])
        held_scores.append(model.score(source[held_rows]))
        fitted = model
    if len(splits) > 1 or fitted is None:
        # cross-fitting (small data): the model for the judged rows sees every trusted row
        fitted = base.fit(source)
    oof = np.concatenate(held_scores) if held_scores else np.zeros(0)
    if trusted is not None:
        threshold = calibrate(oof, rate, floor=lowest)
    else:
        value = max(lowest, tail_quantile(oof, rate)) if oof.size else lowest
        threshold = Threshold(value, no_reference_rate, 0, "assumed")
    scores = fitted.score(X)
    rows = np.flatnonzero(scores > threshold.value).astype(np.int64)
    return OutlierReport(
        method=base.name,
        rows=rows,
        scores=scores,
        threshold=threshold.value,
        expected_rate=threshold.rate,
        fitted_on_reference=trusted is not None,
        calibration=threshold.method,
        clean_scores=oof if trusted is not None else np.zeros(0),
    )
