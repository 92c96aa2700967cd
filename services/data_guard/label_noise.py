"""Label noise: confident learning on out-of-sample probabilities, and the neighbour-vote baseline.

`detect_label_issues` is the detector data-guard runs (Northcutt et al., JAIR 2021; steps are
numbered below). `detect_label_noise`, the seed's neighbour vote, stays as a baseline.

The neighbour vote: rows whose label disagrees with a strong majority of their neighbours.

Features are standardised (median and robust scale, clipped, NaN imputed to the centre) so that
no single large-valued feature decides the distances. With a trusted reference, neighbours come
from the reference and its own leave-one-out disagreement rate calibrates what "normal" is;
without one, neighbours come from the upload itself, excluding the row itself. This is the
naive neighbour vote (a baseline; issue 4 replaces it with out-of-sample probabilities and
confident learning, Northcutt et al., JAIR 2021), kept fast by capping the fitted set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from services.data_guard.calibration import Threshold, calibrate, holdout_splits, sample_rows
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


# --- confident learning on out-of-sample probabilities (issue 4) ----------------------------
#
# Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
# JAIR 70 (2021). Steps, numbered as in the paper's section 3:
#   (1) out-of-sample predicted probabilities p(y* = j | x) for every row;
#   (2) per-class thresholds t_j = mean p_j over rows labelled j (the class's self-confidence);
#   (3) the confident joint C[i][j]: rows labelled i whose p_j >= t_j, counted under the most
#       probable such j;
#   (4) calibrate C to the class counts and normalise to the joint Q(noisy label, true label);
#   (5) rank and prune: for each class i, the n * sum_{j != i} Q[i][j] rows labelled i with the
#       largest margin max_{j != i} p_j - p_i are label issues (cleanlab's
#       `filter_by="prune_by_class"`; its default "both" loses true flips with many classes).
# data-guard adds one step of its own: (6) a margin threshold calibrated on held-out rows of the
# trusted reference, so the share of clean rows flagged is bounded by a stated rate.


def _classifier(seed: int) -> HistGradientBoostingClassifier:
    # Gradient-boosted trees: non-linear, NaN-aware, linear-time prediction; small and regularised
    # so that a fit on tens of thousands of rows takes about a second on one core.
    return HistGradientBoostingClassifier(
        max_iter=60,
        learning_rate=0.15,
        max_leaf_nodes=15,
        min_samples_leaf=10,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )


@dataclass
class ProbabilityModel:
    """Class probabilities from boosted trees averaged with a logistic regression.

    The average is better calibrated than either alone on small tabular data (the trees are
    over-confident, the linear model under-fits curved boundaries).
    """

    n_classes: int
    seed: int = 0
    stats: RobustStats | None = None
    trees: HistGradientBoostingClassifier | None = None
    linear: LogisticRegression | None = None
    only_class: int | None = None
    columns: np.ndarray | None = None
    """features with a finite value in the fitted rows (the others say nothing)."""
    prior: np.ndarray | None = None
    """class shares, the prediction when no feature has a finite value."""

    def fit(self, X: np.ndarray, codes: np.ndarray) -> ProbabilityModel:
        """Fit on rows X with integer labels `codes` (0 <= code < n_classes)."""
        model = ProbabilityModel(self.n_classes, self.seed)
        present = np.unique(codes)
        if present.size < 2:
            model.only_class = int(present[0]) if present.size else 0
            return model
        # A column with no finite value makes the trees' binning raise ("window shape cannot be
        # larger than input array shape", issue 12): such columns are left out of the fit.
        model.columns = np.flatnonzero(np.isfinite(X).any(axis=0))
        if model.columns.size == 0:
            model.prior = np.bincount(codes, minlength=self.n_classes) / codes.size
            return model
        X = _trees_input(X[:, model.columns])
        model.stats = RobustStats.fit(X)
        Z = standardise(X, model.stats)
        model.trees = _classifier(self.seed).fit(X, codes)
        model.linear = LogisticRegression(C=1.0, max_iter=300).fit(Z, codes)
        return model

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(rows, n_classes) probabilities; classes unseen in training get 0."""
        out = np.zeros((X.shape[0], self.n_classes))
        if self.only_class is not None:
            out[:, self.only_class] = 1.0
            return out
        if self.prior is not None:
            out[:] = self.prior
            return out
        if self.trees is None or self.linear is None or self.stats is None or self.columns is None:
            raise RuntimeError("ProbabilityModel.predict_proba called before fit")
        for start in range(0, X.shape[0], 200_000):
            part = _trees_input(X[start : start + 200_000, self.columns])
            p_trees = self.trees.predict_proba(part)
            p_linear = self.linear.predict_proba(standardise(part, self.stats))
            out[start : start + part.shape[0], self.trees.classes_] = 0.5 * (p_trees + p_linear)
        return out


def _trees_input(X: np.ndarray) -> np.ndarray:
    """X with infinite cells as missing (NaN): the trees route missing values, not infinities."""
    return np.asarray(np.where(np.isinf(X), np.nan, X)) if np.isinf(X).any() else X


def self_confidence_thresholds(probs: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Step (2): t_j = mean p_j over rows labelled j (1.0 for a class with no rows)."""
    sums = np.zeros(n_classes)
    np.add.at(sums, codes, probs[np.arange(codes.size), codes])
    counts = np.bincount(codes, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_joint(probs: np.ndarray, codes: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step (3): the confident joint C and each row's confident class (-1 when none)."""
    n_classes = probs.shape[1]
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    confident = np.where(above.any(axis=1), best, -1)
    joint = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = confident >= 0
    np.add.at(joint, (codes[ok], confident[ok]), 1)
    return joint, confident


def find_label_issues(
    probs: np.ndarray, codes: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Steps (2)-(5): a boolean mask of label issues and the noise joint Q (rows: given label).

    `thresholds` default to the data's own self-confidence; pass ones measured on trusted rows.
    """
    n, n_classes = probs.shape
    t = self_confidence_thresholds(probs, codes, n_classes) if thresholds is None else thresholds
    joint, _ = confident_joint(probs, codes, t)
    # (4) calibrate: each row of C sums to the number of rows carrying that label.
    label_counts = np.bincount(codes, minlength=n_classes).astype(float)
    row_sums = joint.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        calibrated = np.where(
            row_sums[:, None] > 0, joint / np.maximum(row_sums[:, None], 1) * label_counts[:, None], 0
        )
    Q = calibrated / max(float(calibrated.sum()), 1.0)
    # (5) prune by class: the n * sum_{j != i} Q[i][j] largest-margin rows labelled i. Per-cell
    # counts (prune by noise rate) split a class's estimated noise over k - 1 small, noisy cells
    # and, with "both", also required p_j >= t_j: on digits (10 classes) that dropped 11 of 45
    # true flips. With a reference the calibrated margin below bounds the clean flag rate anyway.
    pruned = np.zeros(n, dtype=bool)
    margins = label_margins(probs, codes)
    for i in range(n_classes):
        rows_i = np.flatnonzero(codes == i)
        take = round(float(Q[i].sum() - Q[i, i]) * n)
        if rows_i.size == 0 or take <= 0:
            continue
        pruned[rows_i[np.argsort(-margins[rows_i], kind="stable")[:take]]] = True
    return pruned & (margins > 0), Q


def label_margins(probs: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """max_{j != label} p_j - p_label per row: > 0 when the model prefers another class."""
    n = codes.size
    given = probs[np.arange(n), codes]
    others = probs.copy()
    others[np.arange(n), codes] = -np.inf
    return np.asarray(others.max(axis=1) - given) if probs.shape[1] > 1 else np.zeros(n)


@dataclass(frozen=True)
class LabelIssueReport:
    """Confident-learning label issues, with the calibration behind them."""

    rows: np.ndarray
    """sorted 0-based indices of flagged rows (int64)."""
    margins: np.ndarray
    """per row: best other class probability minus the given label's (out of sample)."""
    label_probability: np.ndarray
    """per row: out-of-sample probability of its given label."""
    threshold: float
    """margin above which a confident-learning issue is flagged."""
    expected_rate: float
    """fraction of clean rows expected flagged (calibrated on the reference, else assumed)."""
    estimated_noise_rate: float
    """off-diagonal mass of the calibrated confident joint: the share of labels CL thinks wrong."""
    used_reference: bool
    """True when the model was trained and calibrated on a trusted reference."""
    fit_rows: int
    """rows the final probability model was trained on."""
    calibration_rows: int
    """held-out trusted rows the margin threshold was measured on (0 without a reference)."""
    unknown_label_rows: int
    """rows whose label the reference never had (not judged here; see class balance)."""
    clean_margins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """held-out reference rows' margins the threshold was calibrated on (empty without a reference)."""

    @property
    def rate(self) -> float:
        """Fraction of rows flagged."""
        return float(self.rows.size / self.margins.size) if self.margins.size else 0.0


def detect_label_issues(
    X: np.ndarray,
    y: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    rate: float = 0.01,
    no_reference_margin: float = 0.4,
    no_reference_rate: float = 0.01,
    max_fit: int = 30_000,
    max_holdout: int = 20_000,
    folds: int = 5,
    seed: int = 0,
) -> LabelIssueReport:
    """Rows whose label a model trained elsewhere confidently contradicts (steps (1)-(6) above).

    With `reference` = (X_ref, y_ref): the model is cross-fitted on the reference (held-out
    probabilities give the class thresholds and the margin calibration), then refitted and
    applied to X, whose labels it never saw. Without: `folds`-fold cross-fitting on X itself
    (each row predicted by a model trained on the other folds), a fixed margin floor and an
    assumed clean rate.
    """
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    if reference is not None:
        X_ref, y_ref = reference
        codes, ref_codes = encode_labels(y, y_ref)
    else:
        (codes,) = encode_labels(y)
        X_ref, ref_codes = X, codes
    n_classes = int(max(codes.max(initial=0), ref_codes.max(initial=0))) + 1
    base = ProbabilityModel(n_classes, seed)

    if reference is not None:
        held_probs, held_codes = [], []
        splits = list(holdout_splits(X_ref.shape[0], rng, folds=folds, max_fit=max_fit, max_holdout=max_holdout))
        model = base
        for fit_rows, held_rows in splits:
            model = base.fit(X_ref[fit_rows], ref_codes[fit_rows])
            held_probs.append(model.predict_proba(X_ref[held_rows]))
            held_codes.append(ref_codes[held_rows])
        if len(splits) > 1:
            fit_sample = sample_rows(X_ref.shape[0], max_fit, rng)
            model = base.fit(X_ref[fit_sample], ref_codes[fit_sample])
            fit_rows_used = int(fit_sample.size)
        else:
            fit_rows_used = int(splits[0][0].size)
        ref_probs, ref_held = np.vstack(held_probs), np.concatenate(held_codes)
        thresholds = self_confidence_thresholds(ref_probs, ref_held, n_classes)
        clean_margins = label_margins(ref_probs, ref_held)
        margin_threshold = calibrate(clean_margins, rate, floor=0.0, extrapolate=False)
        probs = model.predict_proba(X)
        known = np.isin(codes, np.unique(ref_codes))
    else:
        probs = np.zeros((n, n_classes))
        # Two folds above 5,000 rows: each model still sees >= 2,500 rows, and one boosted fit less
        # is what keeps a 10,000-row upload inside the 1 s bus budget (issue 4).
        k = max(2, min(folds if n < 5_000 else 2, n))
        order = rng.permutation(n)
        for part in np.array_split(order, k):
            rest = np.setdiff1d(order, part, assume_unique=True)
            rest = rest[sample_rows(rest.size, max_fit, rng)]
            probs[part] = base.fit(X[rest], codes[rest]).predict_proba(X[part])
        fit_rows_used = min(n, max_fit)
        thresholds = None
        margin_threshold = Threshold(no_reference_margin, no_reference_rate, 0, "assumed")
        clean_margins = np.zeros(0)
        known = np.ones(n, dtype=bool)

    issues, Q = find_label_issues(probs[known], codes[known], thresholds)
    margins = label_margins(probs, codes)
    flagged = np.zeros(n, dtype=bool)
    flagged[np.flatnonzero(known)[issues]] = True
    flagged &= margins > margin_threshold.value
    return LabelIssueReport(
        rows=np.flatnonzero(flagged).astype(np.int64),
        margins=margins,
        label_probability=probs[np.arange(n), codes],
        threshold=margin_threshold.value,
        expected_rate=margin_threshold.rate,
        estimated_noise_rate=float(Q.sum() - np.trace(Q)),
        used_reference=reference is not None,
        fit_rows=fit_rows_used,
        calibration_rows=margin_threshold.calibration_rows,
        unknown_label_rows=int(np.count_nonzero(~known)),
        clean_margins=clean_margins,
    )
