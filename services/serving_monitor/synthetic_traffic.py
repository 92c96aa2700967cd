"""A labelled day of serving traffic, seeded, for choosing and checking the detectors (issue 9).

The reference is a real dataset split in two: the first part is the model's training data (the
trusted reference a profile is fitted on), the second the pool benign customers query from. Benign
clients behave as customers do: rows of the training distribution, many of them repeated (a
customer scores the same account again), a small natural jitter on continuous features (never on
integer-valued ones), per-client volumes spread over orders of magnitude, sessions during the day.

Attacks, each a client (or an owner's keys) labelled with its kind:

- ``uniform``: extraction by uniform probing of the reference's feature box;
- ``gaussian``: extraction by independent Gaussian draws with the reference's mean and spread;
- ``boundary_walk``: HopSkipJump-style walks: many small steps from a real point toward a real
  point of the other class, then small probes around where the walk ended;
- ``sybil``: Gaussian extraction split over 6 keys of one owner (`mallory.k1` ... `mallory.k6`),
  each key too quiet to be judged alone;
- ``corr_break``: bursts of adversarial rows whose every feature is a real value but whose
  features come from different rows (marginals kept, correlations broken).

This module is pure numpy/scikit-learn: the benchmark and the tests share it. Client ids follow the
API-key naming rule; the owner of a key is its client id up to the first ``.`` (`detectors.owner_of`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import orjson

FloatArray = npt.NDArray[np.float64]
Dataset = Literal["breast_cancer", "mixed"]
ATTACK_KINDS = ("uniform", "gaussian", "boundary_walk", "sybil", "corr_break")
BENIGN = "benign"
DAY_S = 86_400.0
MODEL = "churn"


@dataclass(frozen=True)
class Reference:
    """The training data (reference) and the pool benign clients draw from."""

    features: list[str]
    train: FloatArray
    train_labels: npt.NDArray[np.int64]
    pool: FloatArray
    pool_labels: npt.NDArray[np.int64]
    integer: npt.NDArray[np.bool_]


@dataclass
class Traffic:
    """Records in time order and who sent them."""

    reference: Reference
    clients: list[str]
    ts: FloatArray
    x: FloatArray
    labels: dict[str, str] = field(default_factory=dict)

    def jsonl(self) -> Iterator[bytes]:
        """The records as `check traffic` reads them, one JSON line each."""
        names = self.reference.features
        for client, ts, row in zip(self.clients, self.ts.tolist(), self.x, strict=True):
            features = dict(zip(names, row.tolist(), strict=True))
            yield orjson.dumps({"client": client, "ts": ts, "model": MODEL, "features": features}) + b"\n"


def load_reference(dataset: Dataset = "breast_cancer", *, seed: int = 0) -> Reference:
    """Split a dataset into training reference (60%) and benign query pool (40%)."""
    rng = np.random.default_rng(seed)
    if dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        x = np.asarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target, dtype=np.int64)
        names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    else:
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=4000, n_features=12, n_informative=6, random_state=seed)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        # Heavy tails (log-normal amounts) and integer counts, as real tabular inputs have.
        x[:, :4] = np.exp(1.5 * x[:, :4])
        x[:, 4:8] = np.floor(np.exp(0.8 * x[:, 4:8]))
        names = [f"f{i}" for i in range(x.shape[1])]
    order = rng.permutation(len(x))
    cut = int(0.6 * len(x))
    tr, po = order[:cut], order[cut:]
    integer = np.all(x == np.round(x), axis=0)
    return Reference(names, x[tr], y[tr], x[po], y[po], integer)


def _jitter(rows: FloatArray, ref: Reference, rng: np.random.Generator, rel: float = 0.01) -> FloatArray:
    """Small multiplicative noise on continuous features; integer features stay as they are."""
    noisy = rows * (1.0 + rel * rng.normal(size=rows.shape))
    out: FloatArray = np.where(ref.integer, rows, noisy)
    return out


def _session_times(n: int, rng: np.random.Generator, start: float = 0.0, span: float = DAY_S) -> FloatArray:
    """`n` times in a few sessions: sessions start uniformly, queries in one are seconds apart."""
    sessions = max(1, min(n, int(rng.integers(1, 8))))
    starts = np.sort(rng.uniform(start, start + span * 0.95, size=sessions))
    which = rng.integers(0, sessions, size=n)
    out = np.empty(n)
    for s in range(sessions):
        k = int(np.sum(which == s))
        out[which == s] = starts[s] + np.cumsum(rng.exponential(2.0, size=k))
    return np.sort(out)


def _benign(ref: Reference, rng: np.random.Generator, duplicate_heavy: bool) -> FloatArray:
    n = int(np.clip(rng.lognormal(np.log(300), 1.0), 20, 5000))
    if duplicate_heavy:
        # A customer base of a few accounts scored again and again, mostly unchanged.
        accounts = ref.pool[rng.choice(len(ref.pool), size=int(rng.integers(3, 15)), replace=False)]
        rows = accounts[rng.zipf(1.6, size=n) % len(accounts)]
        changed = rng.random(n) < 0.3
        rows = np.where(changed[:, None], _jitter(rows, ref, rng), rows)
    else:
        picks = rng.choice(len(ref.pool), size=n, replace=True)
        rows = _jitter(ref.pool[picks], ref, rng)
    out: FloatArray = rows
    return out


def _uniform(ref: Reference, rng: np.random.Generator, n: int) -> FloatArray:
    lo, hi = ref.train.min(axis=0), ref.train.max(axis=0)
    return _round_integers(rng.uniform(lo, hi, size=(n, len(lo))), ref)


def _gaussian(ref: Reference, rng: np.random.Generator, n: int) -> FloatArray:
    mu, sd = ref.train.mean(axis=0), ref.train.std(axis=0)
    return _round_integers(mu + sd * rng.normal(size=(n, len(mu))), ref)


def _round_integers(rows: FloatArray, ref: Reference) -> FloatArray:
    out: FloatArray = np.where(ref.integer, np.round(rows), rows)
    return out


def _boundary_walk(ref: Reference, rng: np.random.Generator, walks: int, steps: int) -> FloatArray:
    """HopSkipJump-like: small steps along the segment from a real point to one of the other class,
    then probes of shrinking radius around where the walk stopped."""
    sd = ref.train.std(axis=0)
    out: list[FloatArray] = []
    for _ in range(walks):
        a = int(rng.integers(len(ref.train)))
        others = np.flatnonzero(ref.train_labels != ref.train_labels[a])
        b = int(rng.choice(others))
        x0, x1 = ref.train[a], ref.train[b]
        t = np.linspace(0.0, 1.0, steps)[:, None]
        out.append(x0 + t * (x1 - x0) + 0.002 * sd * rng.normal(size=(steps, len(sd))))
        mid = x0 + 0.5 * (x1 - x0)
        radius = np.geomspace(0.05, 0.001, steps // 2)[:, None]
        out.append(mid + radius * sd * rng.normal(size=(steps // 2, len(sd))))
    return np.vstack(out)


def _corr_break(ref: Reference, rng: np.random.Generator, n: int) -> FloatArray:
    cols = [ref.pool[rng.integers(0, len(ref.pool), size=n), j] for j in range(ref.pool.shape[1])]
    return np.stack(cols, axis=1)


def generate(
    seed: int,
    *,
    dataset: Dataset = "breast_cancer",
    benign_clients: int = 40,
    duplicate_heavy_share: float = 0.3,
    reference_seed: int = 0,
) -> Traffic:
    """One day of labelled traffic. The reference split depends on `reference_seed` only, so
    traffic of several seeds is judged against the same profile."""
    ref = load_reference(dataset, seed=reference_seed)
    rng = np.random.default_rng(seed)
    parts: list[tuple[str, FloatArray, FloatArray]] = []
    for i in range(benign_clients):
        name = f"shop-{i:02d}"
        rows = _benign(ref, rng, duplicate_heavy=rng.random() < duplicate_heavy_share)
        parts.append((name, rows, _session_times(len(rows), rng)))
    labels = {name: BENIGN for name, _, _ in parts}

    def attack(name: str, kind: str, rows: FloatArray, times: FloatArray) -> None:
        parts.append((name, rows, times))
        labels[name] = kind

    for k in range(2):
        n = int(rng.integers(1500, 3000))
        attack(f"probe-u{k}", "uniform", _uniform(ref, rng, n), _session_times(n, rng))
        n = int(rng.integers(1500, 3000))
        attack(f"probe-g{k}", "gaussian", _gaussian(ref, rng, n), _session_times(n, rng))
        rows = _boundary_walk(ref, rng, walks=4, steps=int(rng.integers(60, 150)))
        attack(f"walker-{k}", "boundary_walk", rows, _session_times(len(rows), rng))
        rows = np.vstack([_corr_break(ref, rng, 40) for _ in range(3)])
        attack(f"burst-{k}", "corr_break", rows, _session_times(len(rows), rng))
    # One campaign over 6 keys, round-robin: each key stays under the per-client minimum
    # counts; together they are one extraction.
    n = int(rng.integers(120, 170))
    rows, times = _gaussian(ref, rng, n), _session_times(n, rng)
    for k in range(6):
        attack(f"mallory.k{k + 1}", "sybil", rows[k::6], times[k::6])

    clients = [name for name, rows, _ in parts for _ in range(len(rows))]
    ts = np.concatenate([t for _, _, t in parts])
    rows_all = np.vstack([r for _, r, _ in parts])
    order = np.argsort(ts, kind="stable")
    return Traffic(ref, [clients[i] for i in order], ts[order], rows_all[order], labels)


def reference_csv(ref: Reference, label: str = "label") -> bytes:
    """The training reference as CSV, with its label column last (for `--label`)."""
    lines = [",".join([*ref.features, label])]
    for row, y in zip(ref.train, ref.train_labels, strict=True):
        lines.append(",".join([*(repr(float(v)) for v in row), str(int(y))]))
    return ("\n".join(lines) + "\n").encode()
