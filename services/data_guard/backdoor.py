"""Backdoor triggers: small groups that share an unusual value or a dense spot in one or two
features, which the reference lacks, and that almost all carry one label.

A trigger (BadNets, Gu et al. 2017; for tabular data, a fixed value planted in one or two
columns) has to be rare in clean data, repeated in the poison and tied to the attacker's target
label, so the detector looks for exactly that conjunction:

1. candidate groups: rows with one exact value in a feature, or rows in one cell of a two-feature
   grid whose edges are the reference's quantiles (all pairs: linear in rows, quadratic only in
   features);
2. the group is much larger in the upload than the reference predicts: a conditional binomial
   test (upload count given upload + reference count), Bonferroni-corrected over every candidate,
   and a ratio floor, since significance alone is cheap at a million rows;
3. almost all of the group carries one label, itself a test: the chance that a random group of
   that size is that pure is multiplied into the p-value (the two are independent under the
   null of a clean upload), so small uploads with a handful of poisoned rows are testable.
Exact values, exact value pairs and grid cells are three families, each corrected for its own
number of tests.

Without a reference only exact values are tested, in features that are otherwise continuous
(repeats at the minimum or maximum are censoring, zero-inflation or caps, not triggers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from services.data_guard.calibration import sample_rows
from services.data_guard.label_noise import encode_labels


@dataclass(frozen=True)
class TriggerGroup:
    """One suspected trigger: where it sits, its label and its rows."""

    features: tuple[int, ...]
    """column indices involved (one or two)."""
    description: str
    """e.g. 'x3 == 0.25' or 'x3 in [0.1, 0.4) and x7 in [2.0, 2.2)'."""
    label_code: int
    """encoded label the group carries."""
    rows: np.ndarray
    """sorted 0-based rows of the group carrying that label."""
    upload_share: float
    """share of upload rows in the group's spot."""
    reference_share: float
    """share of reference rows in the same spot (0 without a reference)."""
    purity: float
    """share of the spot's upload rows carrying `label_code`."""
    p_value: float
    """Bonferroni-corrected conditional binomial p-value (1.0 without a reference)."""


@dataclass(frozen=True)
class BackdoorReport:
    """Every trigger group found, and the rows they cover."""

    groups: list[TriggerGroup] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tests: int = 0
    """how many candidate spots were tested (the Bonferroni factor)."""
    used_reference: bool = False


def _excess(a: np.ndarray, b: np.ndarray, n_u: int, n_r: int) -> np.ndarray:
    """One-sided p-value that `a` upload rows of (a + b) fall in a spot, were both samples alike."""
    share = n_u / (n_u + n_r)
    return np.asarray(sps.binom.sf(a - 1, a + b, share))


def _purity(codes: np.ndarray, members: np.ndarray, n_classes: int) -> tuple[int, float]:
    counts = np.bincount(codes[members], minlength=n_classes)
    top = int(counts.argmax())
    return top, float(counts[top] / max(members.size, 1))


def _tighten(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Keep the rows of a spot that sit in its dense core (the poison), not its clean fringe."""
    centre = np.median(values[rows], axis=0)
    spread = np.abs(values[rows] - centre).max(axis=1)
    radius = float(np.median(spread))
    return rows[spread <= 2.5 * radius + 1e-12]


def detect_backdoors(
    X: np.ndarray,
    y: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    bins: int = 16,
    min_group: int = 5,
    min_ratio: float = 5.0,
    purity: float = 0.9,
    alpha: float = 1e-3,
    max_features: int = 64,
    max_reference_rows: int = 200_000,
    seed: int = 0,
) -> BackdoorReport:
    """Find trigger groups in labelled data X, y (see the module docstring for the tests).

    `min_group` rows at least per group; `min_ratio`: upload share / reference share floor;
    `purity`: share of the group carrying its top label; `alpha`: family-wise error over all
    spots tested. Features beyond `max_features` are not paired (quadratic cost).
    """
    n, d = X.shape
    if n < min_group or d == 0:
        return BackdoorReport(used_reference=reference is not None)
    rng = np.random.default_rng(seed)
    if reference is not None:
        ref_rows = sample_rows(reference[0].shape[0], max_reference_rows, rng)
        X_ref, y_ref = reference[0][ref_rows], reference[1][ref_rows]
        codes, _ = encode_labels(y, y_ref)
    else:
        X_ref = None
        (codes,) = encode_labels(y)
    n_classes = int(codes.max(initial=0)) + 1
    candidates: list[tuple[tuple[int, ...], str, np.ndarray, float, float, float]] = []

    # (1a) exact values per feature
    for j in range(d):
        col = X[:, j]
        finite = np.isfinite(col)
        values, inverse, counts = np.unique(col[finite], return_inverse=True, return_counts=True)
        if values.size == 0:
            continue
        big = np.flatnonzero(counts >= min_group)
        if big.size == 0:
            continue
        if X_ref is None:
            # continuous feature: most values unique; bounds excluded (censoring, not triggers)
            if values.size < 0.5 * finite.sum():
                continue
            typical = max(float(np.quantile(counts, 0.99)), 1.0)
            big = big[(counts[big] >= 3 * typical) & (big != 0) & (big != values.size - 1)]
            for v in big:
                candidates.append(
                    (
                        (j,),
                        f"feature {j} == {values[v]:.6g}",
                        np.flatnonzero(finite)[inverse == v],
                        1.0,
                        counts[v] / n,
                        0.0,
                    )
                )
            continue
        ref_col = np.sort(X_ref[:, j][np.isfinite(X_ref[:, j])])
        ref_counts = np.searchsorted(ref_col, values[big], "right") - np.searchsorted(ref_col, values[big], "left")
        candidates.extend(
            (
                (j,),
                f"feature {j} == {values[v]:.6g}",
                np.flatnonzero(finite)[inverse == v],
                float(p),
                counts[v] / n,
                rc / max(ref_col.size, 1),
            )
            for v, rc, p in zip(big, ref_counts, _excess(counts[big], ref_counts, n, ref_col.size), strict=True)
        )

    exact_tests = max(len(candidates), 1)
    # (1b) one exact value in each of two features at once (a two-feature trigger): the rows of a
    # trigger repeat a pair that clean data, even with coarse or integer features, rarely repeats.
    # Pairs are selected on their count in upload + reference together, which under the null
    # (both samples alike) says nothing about how the count splits, so the conditional test stays
    # valid after selection and the Bonferroni factor is the number selected. On tiny references
    # this is what makes a 5-row trigger testable at all: a 16 x 16 grid family costs 2^8 tests per
    # pair (wine: 5 trigger rows in 89, issue 4).
    exact_pair_tests = 0
    exact_pair_candidates: list[tuple[tuple[int, ...], str, np.ndarray, float, float, float]] = []
    if X_ref is not None:
        n_r = X_ref.shape[0]
        ids: dict[int, np.ndarray] = {}
        novel: dict[int, np.ndarray] = {}  # per upload row: its value never occurs in the reference
        for j in range(min(d, max_features)):
            upload_col = X[:, j]
            _, up_counts = np.unique(upload_col[np.isfinite(upload_col)], return_counts=True)
            if not (up_counts >= 2).any():
                continue  # a pair needs repeats in the upload (continuous features skip here)
            col = np.concatenate([upload_col, X_ref[:, j]])
            finite = np.isfinite(col)
            _, inverse, counts = np.unique(np.where(finite, col, 0.0), return_inverse=True, return_counts=True)
            inverse = inverse.ravel()
            repeated = finite & (counts[inverse] >= min_group)
            if repeated[:n].any():
                ids[j] = np.where(repeated, inverse, -1).astype(np.int64)
                ref_counts_j = np.bincount(inverse[n:], minlength=counts.size)
                novel[j] = ref_counts_j[inverse[:n]] == 0
        features_with_repeats = sorted(ids)
        for a_index, j in enumerate(features_with_repeats):
            for k in features_with_repeats[a_index + 1 :]:
                both = np.flatnonzero((ids[j] >= 0) & (ids[k] >= 0))
                if both.size < min_group:
                    continue
                keys = ids[j][both] * (int(ids[k].max()) + 1) + ids[k][both]
                uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
                inverse = inverse.ravel()
                selected = counts >= min_group
                exact_pair_tests += int(selected.sum())
                from_upload = both < n
                up = np.bincount(inverse[from_upload], minlength=uniq.size)
                hot = np.flatnonzero(selected & (up >= min_group) & (up == counts))
                for c in hot:
                    members = both[(inverse == c) & from_upload]
                    # Only values the reference never has: a common value pair (pixels at 0 and 16
                    # on digits) can be pure because the features predict the label, which the
                    # label test's null (labels exchangeable within the group) does not allow for.
                    if not (novel[j][members[0]] and novel[k][members[0]]):
                        continue
                    ref_count = int(counts[c] - up[c])
                    p = float(_excess(np.array([up[c]]), np.array([ref_count]), n, n_r)[0])
                    exact_pair_candidates.append(
                        (
                            (j, k),
                            f"feature {j} == {X[members[0], j]:.6g} and feature {k} == {X[members[0], k]:.6g}",
                            members,
                            p,
                            up[c] / n,
                            ref_count / n_r,
                        )
                    )
    exact_pair_tests = max(exact_pair_tests, 1)
    first_pair_candidate = len(candidates)
    candidates.extend(exact_pair_candidates)
    first_grid_candidate = len(candidates)

    # (1c) dense cells of two-feature grids, edges at reference quantiles
    pair_tests = 1
    if X_ref is not None and X_ref.shape[0] >= 2 * bins:
        used = min(d, max_features)
        qs = np.linspace(0, 1, bins + 1)[1:-1]
        binned = np.empty((n, used), dtype=np.int32)
        ref_binned = np.empty((X_ref.shape[0], used), dtype=np.int32)
        edges: list[np.ndarray] = []
        for j in range(used):
            e = np.unique(np.nanquantile(X_ref[:, j], qs)) if np.isfinite(X_ref[:, j]).any() else np.zeros(0)
            edges.append(e)
            binned[:, j] = np.searchsorted(e, np.nan_to_num(X[:, j], nan=np.inf), "right")
            ref_binned[:, j] = np.searchsorted(e, np.nan_to_num(X_ref[:, j], nan=np.inf), "right")
        cells = bins * bins
        pair_tests = max(used * (used - 1) // 2 * cells, 1)
        for j in range(used):
            for k in range(j + 1, used):
                cell = binned[:, j] * bins + binned[:, k]
                a = np.bincount(cell, minlength=cells)
                b = np.bincount(ref_binned[:, j] * bins + ref_binned[:, k], minlength=cells)
                share_u, share_r = a / n, (b + 0.5) / X_ref.shape[0]
                hot = np.flatnonzero((a >= min_group) & (share_u >= min_ratio * share_r))
                if hot.size == 0:
                    continue
                p_values = _excess(a[hot], b[hot], n, X_ref.shape[0])
                for c, p in zip(hot, p_values, strict=True):
                    if p * pair_tests > alpha * 1e3:  # cheap pre-filter before the label test
                        continue
                    members = np.flatnonzero(cell == c)
                    candidates.append(
                        (
                            (j, k),
                            _cell_text(j, k, int(c), bins, edges),
                            members,
                            float(p),
                            a[c] / n,
                            b[c] / X_ref.shape[0],
                        )
                    )
    # (2) + (3): keep significant, large-ratio, label-pure groups
    label_share = np.bincount(codes, minlength=n_classes) / n
    groups: list[TriggerGroup] = []
    for index, (features, text, members, p, share_u, share_r) in enumerate(candidates):
        if index < first_pair_candidate:
            family_tests = exact_tests
        elif index < first_grid_candidate:
            family_tests = exact_pair_tests
        else:
            family_tests = pair_tests
        top, pure = _purity(codes, members, n_classes)
        if pure < purity:
            continue
        if X_ref is not None:
            if share_u < min_ratio * max(share_r, 0.5 / X_ref.shape[0]):
                continue
            p_label = float(sps.binom.sf(round(pure * members.size) - 1, members.size, label_share[top]))
            corrected = min(1.0, p * p_label * family_tests)
            if corrected > alpha:
                continue
        else:
            corrected = 1.0
        rows = members[codes[members] == top]
        if index >= first_grid_candidate:
            rows = _tighten(X[:, list(features)], rows)
        if rows.size < min_group:
            continue
        groups.append(
            TriggerGroup(
                features, text, top, np.sort(rows).astype(np.int64), float(share_u), float(share_r), pure, corrected
            )
        )
    all_rows = np.unique(np.concatenate([g.rows for g in groups])) if groups else np.zeros(0, dtype=np.int64)
    return BackdoorReport(
        groups=groups,
        rows=all_rows.astype(np.int64),
        tests=exact_tests + (exact_pair_tests if X_ref is not None else 0) + pair_tests,
        used_reference=X_ref is not None,
    )


def _cell_text(j: int, k: int, cell: int, bins: int, edges: list[np.ndarray]) -> str:
    def span(feature: int, b: int) -> str:
        e = edges[feature]
        lo = f"{e[b - 1]:.4g}" if b > 0 and b - 1 < e.size else "-inf"
        hi = f"{e[b]:.4g}" if b < e.size else "inf"
        return f"feature {feature} in [{lo}, {hi})"

    return f"{span(j, cell // bins)} and {span(k, cell % bins)}"
