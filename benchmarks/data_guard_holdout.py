"""data-guard held-out benchmark: flagged-row precision and recall on a tuning and a reporting seed.

    uv run python benchmarks/data_guard_holdout.py --quick                  # seeds 1 (tune) and 2 (report)
    uv run python benchmarks/data_guard_holdout.py --quick --tune-seed 1 --report-seed 7
    uv run python benchmarks/data_guard_holdout.py --quick --seed 3         # one seed only
    uv run python benchmarks/data_guard_holdout.py --quick --detail         # per-check true/false flags

Issue 12 ("Flagged rows a person can trust"): on cases the project never tuned on, every decision
was right but the precision of flagged rows was 0.69-0.75 on synthetic outliers, a two-feature
backdoor, conflicting duplicates and a large mixed dataset. The goal is precision >= 0.8 and recall
>= 0.8 on every poisoned case with the right decision (`fail`), and clean data not `fail` with
<= 1 % of its rows flagged, on data that was not tuned on. So every case here is drawn from a
generator seed: thresholds are tuned looking at the tuning seed only, and the figures that count
are the reporting seed's, printed side by side in one run. The seed selects the synthetic data
(`make_classification` random_state), the reference/upload split, which rows are poisoned, and
the attack's parameters (which features carry a backdoor trigger, its value and target label).

Beside the four weak cases of the issue, cases of our own design: several attack kinds at once,
heavy-tailed clean features, integer-valued features, and a 50,000-row `make_classification`.
The seed method (`benchmarks/data_guard.py`: |z| > 3.5, 5-NN label vote) is the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_guard import THREADS, Case, _scores, _table, seed_method
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from services.data_guard.detect import DetectorSettings, analyze
from shared.events import Finding

Poison = tuple[np.ndarray, np.ndarray, np.ndarray]
Attack = Callable[[np.ndarray, np.ndarray, np.random.Generator], Poison]


def _mc(n: int, seed: int, d: int = 20) -> tuple[np.ndarray, np.ndarray]:
    return make_classification(
        n_samples=n,
        n_features=d,
        n_informative=8,
        n_redundant=6,
        n_classes=3,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0,
        random_state=seed,
    )


def _split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upload X, y and reference X, y: half each, stratified, the split drawn from `seed`."""
    Xr, Xu, yr, yu = train_test_split(X, y, test_size=0.5, random_state=seed, stratify=y)
    return Xu.astype(float), yu.copy(), Xr.astype(float), yr


def _pick(n: int, rate: float, rng: np.random.Generator, taken: np.ndarray | None = None) -> np.ndarray:
    free = np.arange(n) if taken is None else np.setdiff1d(np.arange(n), taken)
    return np.sort(rng.choice(free, size=max(5, round(rate * n)), replace=False))


# --- attacks (each returns the poisoned X, y and the poisoned rows) ------------------------------


def flips(rate: float) -> Attack:
    """Labels of `rate` of the rows changed to another class."""

    def attack(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
        rows = _pick(y.size, rate, rng)
        classes = np.unique(y)
        y = y.copy()
        for i in rows:
            y[i] = rng.choice(classes[classes != y[i]])
        return X, y, rows

    return attack


def outliers(rate: float, low: float, high: float, features: int) -> Attack:
    """`features` random features of each poisoned row moved by low..high robust sigmas (either way)."""

    def attack(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
        rows = _pick(y.size, rate, rng)
        X = X.copy()
        q1, med, q3 = np.quantile(X, [0.25, 0.5, 0.75], axis=0)
        sigma = np.maximum((q3 - q1) / 1.349, 1e-9)
        for i in rows:
            cols = rng.choice(X.shape[1], size=features, replace=False)
            shift = rng.uniform(low, high, size=features) * rng.choice([-1.0, 1.0], size=features)
            X[i, cols] = med[cols] + shift * sigma[cols]
        return X, y, rows

    return attack


def backdoor(rate: float) -> Attack:
    """Two random features set to in-range constants (30th-70th percentile); a random target label."""

    def attack(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
        rows = _pick(y.size, rate, rng)
        X, y = X.copy(), y.copy()
        for j in rng.choice(X.shape[1], size=2, replace=False):
            lo, hi = np.quantile(X[:, j], [0.3, 0.7])
            X[rows, j] = lo + rng.uniform(0.1, 0.9) * (hi - lo)
            if np.all(X[:, j] == np.round(X[:, j])):  # integer feature: an integer trigger
                X[rows, j] = np.round(X[rows, j])
        y[rows] = rng.choice(np.unique(y))
        return X, y, rows

    return attack


def conflicting_duplicates(rate: float) -> Attack:
    """Copies of `rate` of the rows appended with another label; the copies are the poison."""

    def attack(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
        src = _pick(y.size, rate, rng)
        classes = np.unique(y)
        labels = np.array([rng.choice(classes[classes != y[i]]) for i in src])
        n = y.size
        return np.vstack([X, X[src]]), np.concatenate([y, labels]), np.arange(n, n + src.size)

    return attack


def mixed(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
    """Several attack kinds at once, on disjoint rows: 2 % flips, 1 % outliers, 1 % backdoor,
    1 % conflicting duplicates (appended)."""
    poisoned: list[np.ndarray] = []
    X, y, rows = flips(0.02)(X, y, rng)
    poisoned.append(rows)
    for attack in (outliers(0.01, 8.0, 15.0, 2), backdoor(0.01)):
        before_X, before_y = X, y
        X, y, rows = attack(X, y, rng)
        # keep the attacks on disjoint rows: undo this attack on rows an earlier one took
        clash = np.isin(rows, np.concatenate(poisoned))
        X[rows[clash]], y[rows[clash]] = before_X[rows[clash]], before_y[rows[clash]]
        poisoned.append(rows[~clash])
    X, y, rows = conflicting_duplicates(0.01)(X, y, rng)
    poisoned.append(rows)
    return X, y, np.unique(np.concatenate(poisoned))


def clean(X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Poison:
    """No attack."""
    return X, y, np.zeros(0, dtype=np.int64)


# --- data sources --------------------------------------------------------------------------------


def heavy_tailed(X: np.ndarray) -> np.ndarray:
    """Half the features through sinh: monotone, so class structure stays, tails become heavy."""
    X = X.copy()
    X[:, ::2] = np.sinh(1.2 * X[:, ::2])
    return X


def integer_valued(X: np.ndarray) -> np.ndarray:
    """Every feature rounded to a small integer grid (counts, ratings): ties and repeats abound."""
    return np.round(X * 2.0)


def cases(seed: int, quick: bool) -> list[Case]:
    """Every case for generator `seed`; `quick` halves the synthetic sizes (not the 50k case).

    Heavy-tailed and integer-valued data are poisoned before the transform, so an outlier is
    6-15 sigma out in the latent Gaussian, which after sinh is an extreme of a heavy tail, not a
    value clean rows also reach, and a trigger is an integer like every other value.
    """
    rng = np.random.default_rng(seed)
    size = 10_000 if quick else 20_000
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "mc": _mc(2 * size, seed),
        "breast_cancer": load_breast_cancer(return_X_y=True),
    }
    transforms: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "mc heavy-tailed": heavy_tailed,
        "mc integer": integer_valued,
    }
    plan: list[tuple[str, str, Attack]] = [
        # the four weak cases
        ("mc", "synthetic outliers 3%", outliers(0.03, 6.0, 12.0, 2)),
        ("mc", "two-feature backdoor 3%", backdoor(0.03)),
        ("mc", "conflicting duplicates 3%", conflicting_duplicates(0.03)),
        ("mc 50k", "mixed (flip, outliers, backdoor, dups)", mixed),
        # of our own design
        ("mc", "clean", clean),
        ("mc", "flip 5%", flips(0.05)),
        ("mc", "blatant outliers 3%", outliers(0.03, 30.0, 60.0, 1)),
        ("mc heavy-tailed", "clean", clean),
        ("mc heavy-tailed", "synthetic outliers 3%", outliers(0.03, 6.0, 12.0, 2)),
        ("mc heavy-tailed", "mixed", mixed),
        ("mc integer", "clean", clean),
        ("mc integer", "two-feature backdoor 3%", backdoor(0.03)),
        ("mc integer", "conflicting duplicates 3%", conflicting_duplicates(0.03)),
        ("mc integer", "mixed", mixed),
        ("mc 50k", "clean", clean),
        ("breast_cancer", "synthetic outliers 5%", outliers(0.05, 8.0, 15.0, 2)),
        ("breast_cancer", "conflicting duplicates 3%", conflicting_duplicates(0.03)),
    ]
    out: list[Case] = []
    large: tuple[np.ndarray, np.ndarray] | None = None
    for source, attack_name, attack in plan:
        if source == "mc 50k":
            # 50,000 upload rows against a 50,000-row reference (data from a seed of its own)
            large = large if large is not None else _mc(100_000, seed + 1000)
            X, y = large
        else:
            X, y = sources["mc" if source in transforms else source]
        Xu, yu, Xr, yr = _split(X, y, seed)
        Xp, yp, rows = attack(Xu, yu, rng)
        if source in transforms:
            Xp, Xr = transforms[source](Xp), transforms[source](Xr)
        label = f"{source} ({Xu.shape[0]:,} rows)" if source.startswith("mc") else source
        out.append(Case(f"{label} {attack_name}", _table(Xp, yp), _table(Xr, yr), rows))
    return out


# --- running --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One method's outcome on one case."""

    decision: str
    share: float
    precision: float
    recall: float
    seconds: float

    def met(self, poisoned: bool) -> bool:
        """The issue's goal for this case."""
        if poisoned:
            return self.decision == "fail" and self.precision >= 0.8 and self.recall >= 0.8
        return self.decision != "fail" and self.share <= 0.01


def _per_check(findings: list[Finding], truth: np.ndarray) -> str:
    """Per row-level check: true and false flags (from the finding's listed rows)."""
    parts = []
    for f in findings:
        if f.count and f.rows:
            tp = int(np.isin(f.rows, truth).sum())
            extra = "+" if f.count > len(f.rows) else ""
            parts.append(f"{f.check} {tp}/{len(f.rows) - tp}{extra}")
    return "; ".join(parts) if parts else "no rows flagged"


def run(case: Case, settings: DetectorSettings, detail: bool) -> tuple[Result, Result]:
    """data-guard and the seed method on one case."""
    start = time.perf_counter()
    report = analyze(case.upload, case.reference, settings)
    seconds = time.perf_counter() - start
    p, r, share = _scores(np.asarray(report.flagged_rows, dtype=np.int64), case.poisoned, case.upload.rows)
    ours = Result(report.decision.value, share, p, r, seconds)
    if detail:
        print(f"    {case.name}: true/false flags per check: {_per_check(report.findings, case.poisoned)}")
    start = time.perf_counter()
    with threadpool_limits(limits=THREADS):
        decision, rows = seed_method(case.upload)
    seconds = time.perf_counter() - start
    p, r, share = _scores(rows, case.poisoned, case.upload.rows)
    return ours, Result(decision, share, p, r, seconds)


def _cell(res: Result) -> str:
    return f"{res.decision:8} {res.share:7.2%} {res.precision:5.2f} {res.recall:5.2f}"


def main() -> int:
    """Run both seeds; exit 0 when every goal is met on the reporting seed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000-row synthetic uploads instead of 20,000")
    parser.add_argument("--tune-seed", type=int, default=1, help="generator seed thresholds may be tuned on")
    parser.add_argument("--report-seed", type=int, default=2, help="generator seed the figures are reported on")
    parser.add_argument("--seed", type=int, default=None, help="run this one generator seed only")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--detail", action="store_true", help="print true/false flags per check")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="a DetectorSettings field (tuning)"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.setting)
    settings = DetectorSettings.model_validate({"threads": THREADS, **overrides})
    seeds = [args.seed] if args.seed is not None else [args.tune_seed, args.report_seed]
    results: dict[int, list[tuple[Case, Result, Result]]] = {}
    for seed in seeds:
        results[seed] = []
        for case in cases(seed, args.quick):
            if args.only and args.only not in case.name:
                continue
            ours, seed_res = run(case, settings, args.detail)
            results[seed].append((case, ours, seed_res))
            print(f"  seed {seed}: {case.name}: {_cell(ours)} ({ours.seconds:.1f} s)", file=sys.stderr, flush=True)
    roles = {args.tune_seed: "tune", args.report_seed: "report"}
    cols = " ".join(f"{'seed ' + str(s) + ' (' + roles.get(s, 'seed') + ')':>29}" for s in seeds)
    header = f"{'case':58} {'method':10} {cols}  goal (seed {seeds[-1]})"
    sub = f"{'':58} {'':10} " + " ".join(f"{'decision':8} {'flagged':>7} {'prec':>5} {'rec':>5}" for _ in seeds)
    print(header)
    print(sub)
    print("-" * len(header))
    all_met = True
    for i, (case, _, _) in enumerate(results[seeds[-1]]):
        poisoned = case.poisoned.size > 0
        ours = [results[s][i][1] for s in seeds]
        base = [results[s][i][2] for s in seeds]
        met = ours[-1].met(poisoned)
        all_met &= met
        print(
            f"{case.name:58} {'data-guard':10} " + " ".join(_cell(o) for o in ours) + f"  {'met' if met else 'MISSED'}"
        )
        print(f"{'':58} {'seed':10} " + " ".join(_cell(b) for b in base))
    print(f"\nreporting seed {seeds[-1]}: " + ("every goal met" if all_met else "some goals missed (see MISSED above)"))
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
