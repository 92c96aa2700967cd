"""data-guard benchmark: detection quality against the seed method, scale, and bus latency.

    uv run python benchmarks/data_guard.py            # quality table + 1M x 20 scale + bus
    uv run python benchmarks/data_guard.py --quick    # quality table only

Cases are built from scikit-learn's bundled datasets and `make_classification`; each upload is
judged against a trusted reference (the other half of a stratified split) unless the case says
"no ref". Printed per case and per method: decision, rows flagged, precision and recall against
the rows that were poisoned, time. Goals (issue 4): every poisoned case `fail` with precision
and recall >= 0.8; clean data not `fail` with <= 1 % of rows flagged. The seed method is
implemented here as the baseline: |z| > 3.5 per feature, a 5-NN label vote, fail above 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Thread counts are set before numpy loads (BLAS reads them at import), then pinned per call
# with threadpoolctl inside analyze(); two cores on the reference machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine, make_classification
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.data_guard.detect import DetectorSettings, analyze
from services.data_guard.loader import Table

THREADS = 2


@dataclass(frozen=True)
class Case:
    """One upload to judge, its reference and the rows that were poisoned."""

    name: str
    upload: Table
    reference: Table | None
    poisoned: np.ndarray


def _table(X: np.ndarray, y: np.ndarray) -> Table:
    return Table(X=np.asarray(X, dtype=float), y=y, feature_names=[f"f{i}" for i in range(X.shape[1])], label_name="y")


def _data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    mc = make_classification(
        n_samples=20_000, n_features=20, n_informative=8, n_redundant=6, class_sep=1.5, flip_y=0, random_state=0
    )
    return {
        "iris": load_iris(return_X_y=True),
        "wine": load_wine(return_X_y=True),
        "breast_cancer": load_breast_cancer(return_X_y=True),
        "digits": load_digits(return_X_y=True),
        "make_classification": mc,
    }


def _split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    Xr, Xu, yr, yu = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    return Xu.astype(float), yu.copy(), Xr.astype(float), yr


def _pick(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=max(5, round(rate * n)), replace=False))


def flip(
    X: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of `rate` of the rows changed to another class."""
    rows = _pick(y.size, rate, rng)
    classes = np.unique(y)
    y = y.copy()
    for i in rows:
        y[i] = rng.choice(classes[classes != y[i]])
    return X, y, rows


def blatant(
    X: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One feature of each poisoned row set 20x beyond the feature's largest magnitude."""
    rows = _pick(y.size, rate, rng)
    X = X.copy()
    cols = rng.integers(0, X.shape[1], rows.size)
    X[rows, cols] = np.abs(X).max(axis=0)[cols] * 20 + 1
    return X, y, rows


def correlation_breaking(
    X: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each feature of a poisoned row drawn from a different clean row: every value in range."""
    rows = _pick(y.size, rate, rng)
    X = X.copy()
    for j in range(X.shape[1]):
        X[rows, j] = X[rng.integers(0, X.shape[0], rows.size), j]
    return X, y, rows


def backdoor(
    X: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two features set to in-range constants (between their 30th and 70th percentiles); label 0."""
    rows = _pick(y.size, rate, rng)
    X, y = X.copy(), y.copy()
    for j in (1, 3):
        lo, hi = np.quantile(X[:, j], [0.3, 0.7])
        X[rows, j] = lo + 0.37 * (hi - lo) + 1e-3
    y[rows] = np.unique(y)[0]
    return X, y, rows


def conflicting_duplicates(
    X: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of `rate` of the rows appended with another label; the copies are the poison."""
    src = _pick(y.size, rate, rng)
    classes = np.unique(y)
    labels = np.array([rng.choice(classes[classes != y[i]]) for i in src])
    n = y.size
    return np.vstack([X, X[src]]), np.concatenate([y, labels]), np.arange(n, n + src.size)


def cases() -> list[Case]:
    """Every benchmark case, built deterministically."""
    data = _data()
    rng = np.random.default_rng(42)
    out: list[Case] = []
    for name, (X, y) in data.items():
        Xu, yu, Xr, yr = _split(X, y)
        out.append(Case(f"{name} clean", _table(Xu, yu), _table(Xr, yr), np.zeros(0, dtype=np.int64)))
    out.append(Case("breast_cancer clean (no ref)", _table(*data["breast_cancer"]), None, np.zeros(0, dtype=np.int64)))
    attacks: list[tuple[str, Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]], float, list[str]]] = [
        ("flip 5%", flip, 0.05, ["breast_cancer", "wine", "digits", "make_classification"]),
        ("flip 10%", flip, 0.10, ["breast_cancer", "wine", "digits", "make_classification"]),
        ("blatant outliers 5%", blatant, 0.05, ["breast_cancer", "make_classification"]),
        ("correlation-breaking 5%", correlation_breaking, 0.05, ["breast_cancer", "make_classification"]),
        ("two-feature backdoor 3%", backdoor, 0.03, ["breast_cancer", "wine", "make_classification"]),
        ("conflicting duplicates 3%", conflicting_duplicates, 0.03, ["breast_cancer", "make_classification"]),
    ]
    for attack, fn, rate, names in attacks:
        for name in names:
            Xu, yu, Xr, yr = _split(*data[name])
            Xp, yp, rows = fn(Xu, yu, rate, rng)
            out.append(Case(f"{name} {attack}", _table(Xp, yp), _table(Xr, yr), rows))
    Xp, yp, rows = flip(*data["make_classification"], 0.10, rng)
    out.append(Case("make_classification flip 10% (no ref)", _table(Xp, yp), None, rows))
    return out


# --- the seed method (baseline) ---------------------------------------------------------------


def seed_method(table: Table) -> tuple[str, np.ndarray]:
    """|z| > 3.5 on any feature, or the 5 nearest neighbours' majority label differs; fail > 5 %."""
    X = np.nan_to_num(table.X)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    z = (X - X.mean(axis=0)) / std
    flagged = np.abs(z).max(axis=1) > 3.5
    if table.y is not None:
        _, codes = np.unique(table.y, return_inverse=True)
        _, idx = NearestNeighbors(n_neighbors=6).fit(z).kneighbors(z)
        votes = codes[idx[:, 1:]]
        counts = np.apply_along_axis(np.bincount, 1, votes, minlength=int(codes.max()) + 1)
        flagged |= counts.argmax(axis=1) != codes
    rows = np.flatnonzero(flagged)
    return ("fail" if rows.size > 0.05 * table.rows else "pass"), rows


def _scores(flagged: np.ndarray, truth: np.ndarray, n: int) -> tuple[float, float, float]:
    tp = np.intersect1d(flagged, truth).size
    precision = tp / flagged.size if flagged.size else (1.0 if truth.size == 0 else 0.0)
    recall = tp / truth.size if truth.size else 1.0
    return precision, recall, flagged.size / n


# Why a case may sit below the goal whatever the detector does (printed under a MISSED line).
_NOTES = {
    "breast_cancer correlation-breaking 5%": "the 284 reference rows cannot vouch for a Mahalanobis "
    "threshold below their largest held-out score (rate floor 1/285); clean breast_cancer rows reach "
    "that far (heavy multivariate tails), and the poisoned rows score between the clean 99th percentile "
    "and that maximum: flagging them costs ~1.5 % of clean rows, above the 1 % clean-flag goal",
    "breast_cancer conflicting duplicates 3%": "a copy and its original have identical features, so only "
    "the model's label probability can pick the poisoned one; where the original itself looks like the "
    "other class the copy wins (unidentifiable), and near-ties flag the whole pair",
    "breast_cancer clean (no ref)": "without a reference the thresholds are extrapolated from the upload's "
    "own bulk; breast_cancer has a few naturally extreme rows (|robust z| > 9) that no self-fitted "
    "rule can tell from outliers",
}


def _limit(case: Case, decision: str, settings: DetectorSettings) -> str | None:
    """The theoretical limit of a missed case, when a count-test argument bounds it."""
    if case.reference is None or not case.poisoned.size or decision == "fail":
        return _NOTES.get(case.name)
    from scipy import stats as sps

    # A calibrated row test cannot certify a clean rate below 1 / (calibration rows + 1); even if it
    # flagged exactly the poisoned rows, the count test needs p <= fail_p_value at that rate.
    floor = max(settings.label_rate, 1.0 / (case.reference.rows + 1))
    m, n = case.poisoned.size, case.upload.rows
    best_p = float(sps.binom.sf(m - 1, n, floor))
    if best_p > settings.fail_p_value:
        return (
            f"below the detectable limit: flagging exactly the {m} poisoned of {n} rows against the lowest "
            f"clean rate {case.reference.rows} reference rows can calibrate ({floor:.2%}) "
            f"gives p = {best_p:.1e} > {settings.fail_p_value:g} (fail threshold); a 'fail' needs "
            f"{int(sps.binom.isf(settings.fail_p_value, n, floor)) + 1} rows or a larger reference"
        )
    return _NOTES.get(case.name)


def quality() -> bool:
    """Print the quality table; True when every goal is met."""
    settings = DetectorSettings(threads=THREADS)
    header = f"{'case':44} {'method':10} {'decision':8} {'flagged':>8} {'prec':>5} {'recall':>6} {'time s':>7}  goal"
    print(header)
    print("-" * len(header))
    all_met = True
    for case in cases():
        start = time.perf_counter()
        report = analyze(case.upload, case.reference, settings)
        elapsed = time.perf_counter() - start
        ours = np.asarray(report.flagged_rows, dtype=np.int64)
        p, r, share = _scores(ours, case.poisoned, case.upload.rows)
        if case.poisoned.size:
            met = report.decision.value == "fail" and p >= 0.8 and r >= 0.8
        else:
            met = report.decision.value != "fail" and share <= 0.01
        all_met &= met
        print(
            f"{case.name:44} {'data-guard':10} {report.decision.value:8} {share:8.2%} {p:5.2f} {r:6.2f} "
            f"{elapsed:7.2f}  {'met' if met else 'MISSED'}"
        )
        note = None if met else _limit(case, report.decision.value, settings)
        if note:
            print(f"{'':44} limit: {note}")
        start = time.perf_counter()
        with threadpool_limits(limits=THREADS):
            decision, rows = seed_method(case.upload)
        elapsed = time.perf_counter() - start
        p, r, share = _scores(rows, case.poisoned, case.upload.rows)
        print(f"{'':44} {'seed':10} {decision:8} {share:8.2%} {p:5.2f} {r:6.2f} {elapsed:7.2f}")
    return all_met


# --- scale: 1,000,000 x 20 in a child process (its own peak RSS) ------------------------------


def scale_child() -> None:
    """Judge 1,000,000 x 20 against a 100,000-row reference; print seconds and peak RSS."""
    X, y = make_classification(
        n_samples=1_100_000, n_features=20, n_informative=8, n_redundant=6, class_sep=1.5, flip_y=0, random_state=1
    )
    X, y = X.astype(np.float64), y
    rng = np.random.default_rng(5)
    Xu, yu, rows = flip(X[:1_000_000], y[:1_000_000], 0.05, rng)
    upload, reference = _table(Xu, yu), _table(X[1_000_000:], y[1_000_000:])
    del X
    start = time.perf_counter()
    report = analyze(upload, reference, DetectorSettings(threads=THREADS))
    elapsed = time.perf_counter() - start
    p, r, _ = _scores(np.asarray(report.flagged_rows), rows, upload.rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{elapsed:.1f} {peak_mb:.0f} {report.decision.value} {p:.2f} {r:.2f}")


def scale() -> bool:
    """Run the scale case in a child process and print its figures against the goals."""
    out = subprocess.run(
        [sys.executable, __file__, "--scale-child"], capture_output=True, text=True, check=True
    ).stdout.split()
    seconds, peak_mb, decision, p, r = float(out[0]), float(out[1]), out[2], out[3], out[4]
    met = seconds <= 60 and peak_mb <= 3 * 1024
    print(
        f"\nscale: 1,000,000 x 20 upload (5% flipped) vs 100,000-row reference: {seconds:.1f} s "
        f"(goal 60 s, ratio {seconds / 60:.2f}), peak RSS {peak_mb:.0f} MB (goal 3072 MB, ratio "
        f"{peak_mb / 3072:.2f}), {THREADS} threads; decision {decision}, precision {p}, recall {r}"
    )
    return met


# --- end to end through the bus -----------------------------------------------------------------


async def _bus_latency(uploads: int = 3) -> list[float]:
    from mlwarden.bootstrap import bootstrap
    from mlwarden.services import factory
    from shared.bus import connect
    from shared.client import Client
    from shared.embedded import EmbeddedNats
    from shared.settings import Settings
    from shared.topology import Subjects

    X, y = make_classification(n_samples=20_000, n_features=20, n_informative=8, flip_y=0, random_state=3)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = EmbeddedNats(root / "nats").start()
        try:
            settings = Settings(data_dir=root / "data", nats_url=server.url)
            nc = await connect(settings)
            await bootstrap(nc.jetstream(), settings)
            await nc.drain()
            svc = factory("data-guard")(settings)
            await svc.start()
            try:
                async with Client.connect(settings, source="benchmark") as client, client.watch() as watcher:
                    for i in range(uploads):
                        path = root / f"up{i}.csv"
                        rows = slice(10_000 * (i % 2), 10_000 * (i % 2 + 1))
                        header = ",".join([f"f{j}" for j in range(20)] + ["label"])
                        body = "\n".join(
                            ",".join(f"{v:.6g}" for v in r) + f",{lab}" for r, lab in zip(X[rows], y[rows], strict=True)
                        )
                        path.write_text(header + "\n" + body + "\n")
                        start = time.perf_counter()
                        event = await client.upload_dataset(
                            path, dataset="bench", version=str(i), label="label", uploader="pipeline"
                        )
                        verdict = await watcher.wait(
                            lambda e, eid=event.id: e.type == Subjects.VERDICT_DATASET and e.data.in_reply_to == eid, 30
                        )
                        if verdict is None:
                            raise RuntimeError("no verdict within 30 s")
                        latencies.append(time.perf_counter() - start)
            finally:
                await svc.stop()
        finally:
            server.stop()
    return latencies


def bus() -> bool:
    """Print upload-to-verdict latency of 10,000-row uploads through a real nats-server."""
    latencies = asyncio.run(_bus_latency())
    worst = max(latencies)
    print(
        "bus: 10,000-row CSV upload (object store put + event) to signed verdict, data-guard in-process: "
        + ", ".join(f"{t:.2f} s" for t in latencies)
        + f" (goal 1 s, worst ratio {worst:.2f})"
    )
    return worst <= 1.0


def main() -> int:
    """Run the benchmark; exit 0 when every goal is met."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quality table only")
    parser.add_argument("--scale-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child()
        return 0
    met = quality()
    if not args.quick:
        met &= scale()
        met &= bus()
    print("\nall goals met" if met else "\nsome goals missed (see MISSED above)")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
