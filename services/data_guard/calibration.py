"""Thresholds set on trusted data to a stated false-flag rate, and the held-out splits behind them.

Every row-level detector works the same way: fit on one part of the trusted reference, score a
held-out part it never saw, and put the threshold where a stated fraction `rate` of those clean,
unseen rows would be flagged (split conformal calibration: Vovk et al., "Algorithmic Learning in a
Random World", 2005; Lei et al., JASA 2018). Small references cannot show a 0.1 % quantile, so the
tail is extrapolated with an exponential (peaks-over-threshold, shape 0) fitted between two bulk
quantiles, which is conservative for the light, Gaussian-like tails of distances and z-scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Below this many held-out rows per unit of rate (n * rate), the empirical quantile is too noisy
#: to stand alone and the exponential tail extrapolation is taken as well (the larger wins).
_MIN_TAIL_COUNT = 10.0


@dataclass(frozen=True)
class Threshold:
    """A score threshold and the clean flag rate it stands for."""

    value: float
    """rows scoring strictly above this are flagged."""
    rate: float
    """fraction of clean rows expected above it (the count test's null rate)."""
    calibration_rows: int
    """held-out rows the threshold was measured on (0 when assumed)."""
    method: str
    """'empirical', 'tail' (extrapolated) or 'assumed'."""


def tail_quantile(scores: np.ndarray, rate: float, *, low: float = 0.75, high: float = 0.9) -> float:
    """The (1 - rate) quantile of `scores` extrapolated from an exponential tail.

    For an exponential tail, q(p) = q(high) + beta * ln((1 - high) / (1 - p)); beta is measured
    between the `low` and `high` quantiles, which stay in the bulk even when several per cent of
    the rows are poisoned, so this also works on the judged data itself.
    """
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return math.inf
    q_low, q_high = np.quantile(finite, [low, high])
    beta = float(q_high - q_low) / math.log((1.0 - low) / (1.0 - high))
    if beta <= 0:  # a flat bulk (ties): fall back to the spread of the whole sample
        beta = float(np.std(finite)) or 1.0
    return float(q_high) + beta * math.log((1.0 - high) / rate)


def calibrate(scores: np.ndarray, rate: float, *, floor: float = -math.inf, extrapolate: bool = True) -> Threshold:
    """Threshold at the clean (held-out) `scores`' (1 - rate) quantile, never below `floor`.

    The conformal order statistic k = ceil((n + 1)(1 - rate)) guarantees a flag rate of at most
    `rate` on exchangeable clean rows; when k > n, or n * rate is small, the exponential tail
    extrapolation stands in for the quantile the sample cannot show (`extrapolate=False` for
    bounded scores such as probability margins, where an exponential tail makes no sense).
    """
    if not 0 < rate < 1:
        raise ValueError("rate must be in (0, 1)")
    finite = np.sort(scores[np.isfinite(scores)])
    n = int(finite.size)
    if n == 0:
        return Threshold(max(floor, 0.0), rate, 0, "assumed")
    k = math.ceil((n + 1) * (1.0 - rate))
    empirical = float(finite[k - 1]) if k <= n else float(finite[-1])
    method = "empirical"
    value = empirical
    if extrapolate and n * rate < _MIN_TAIL_COUNT and n >= 20:
        extrapolated = tail_quantile(finite, rate)
        if extrapolated > value:
            value, method = extrapolated, "tail"
    # n clean rows cannot vouch for a rate below 1 / (n + 1): the count test uses the larger.
    return Threshold(max(value, floor), max(rate, 1.0 / (n + 1)), n, method)


def holdout_splits(
    n: int,
    rng: np.random.Generator,
    *,
    folds: int = 5,
    max_fit: int = 50_000,
    max_holdout: int = 50_000,
    min_split: int = 5_000,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) pairs covering a reference of `n` rows.

    A large reference (n >= `min_split`) gets one random split: up to `max_holdout` rows held
    out, up to `max_fit` of the others fitted. A small one gets `folds`-fold cross-fitting, so
    every row is scored once by a model that did not see it.
    """
    order = rng.permutation(n)
    if n >= min_split:
        hold = min(max_holdout, n // 4)
        yield np.sort(order[hold : hold + max_fit]), np.sort(order[:hold])
        return
    k = max(2, min(folds, n))
    for part in np.array_split(order, k):
        fit = np.setdiff1d(order, part, assume_unique=True)
        yield np.sort(fit), np.sort(part)


def sample_rows(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `cap` rows (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def select_by_false_share(scores: np.ndarray, clean_scores: np.ndarray, n: int, share: float) -> np.ndarray:
    """Positions of the highest `scores` to flag so that clean rows are about `share` of them.

    `scores` are the candidate rows' (already above a detector's calibrated threshold) and
    `clean_scores` a held-out sample of trusted rows scored the same way. Flagging every candidate
    scoring at least s is expected to flag n * P_clean(score >= s) clean rows, estimated from
    `clean_scores`; the lowest s whose estimate is at most `share` of the rows flagged is kept
    (Benjamini & Hochberg's step-up rule with an empirical null, Storey's FDR estimate with the
    null share taken as 1, which can only overstate the clean rows). The threshold that gives a
    detector its count test stays put: this only chooses which of its rows a person is sent to
    inspect, since a rate calibrated for the decision (0.1 % to 1 % of the upload) is a third of
    the flags when 3 % of the rows are poisoned (issue 12). Without clean scores every candidate
    is kept (nothing to estimate the clean share with).
    """
    order = np.argsort(-scores, kind="stable")
    if clean_scores.size == 0 or scores.size == 0:
        return np.sort(order)
    ranked = scores[order]
    clean = np.sort(clean_scores[np.isfinite(clean_scores)])
    # clean rows scoring at least each candidate's score, and candidates flagged with it (ties in)
    clean_above = clean.size - np.searchsorted(clean, ranked, "left")
    flagged = np.searchsorted(-ranked, -ranked, "right")
    expected_clean = n * clean_above / max(clean.size, 1)
    ok = np.flatnonzero(expected_clean <= share * flagged)
    if ok.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(order[: flagged[ok[-1]]]).astype(np.int64)
