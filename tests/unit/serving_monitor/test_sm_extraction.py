"""PRADA extraction detection: synthetic extraction attacks are caught, natural traffic is not."""

from __future__ import annotations

import numpy as np
import pytest

from services.serving_monitor.errors import ConfigError
from services.serving_monitor.extraction import KIND_EXTRACTION, ExtractionMonitor, shapiro_w
from services.serving_monitor.ood import FloatArray, ReferenceProfile, fit_reference
from services.serving_monitor.queries import QueryParams
from shared.events import PredictionBatch, PredictionRecord

D = 6
FEATURES = [f"f{i}" for i in range(D)]
_MIX = np.random.default_rng(1).normal(size=(D, D)) * 0.5 + np.eye(D)


def natural(n: int, seed: int) -> FloatArray:
    """Correlated, shifted Gaussian rows: the 'training distribution'."""
    out: FloatArray = np.random.default_rng(seed).normal(size=(n, D)) @ _MIX + np.arange(D) * 10.0
    return out


TRAIN = natural(4000, 0)
PROFILE = fit_reference(TRAIN, FEATURES, "m")
LO, HI = TRAIN.min(axis=0), TRAIN.max(axis=0)


def jacobian_attack(n: int, seed: int, step: float = 0.1) -> FloatArray:
    """Papernot et al.'s Jacobian-based dataset augmentation (AsiaCCS 2017), as PRADA evaluates it:
    a few natural seeds, then each round every known point x is queried again at
    x + lambda * sign(grad of the substitute's score for its predicted class). The substitute here
    is linear (two classes), so the gradient sign is one fixed direction per class."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D)
    known = list(natural(10, 10_000 + seed))
    queries = list(known)
    lam = step * (HI - LO)
    while len(queries) < n:
        new = [x + lam * np.sign(w) * (1.0 if float(w @ (x - TRAIN.mean(axis=0))) > 0 else -1.0) for x in known]
        queries += new
        known += new
    return np.asarray(queries[:n])


def grid_attack(n: int) -> FloatArray:
    """Probe the feature box on a regular grid."""
    axes = [np.linspace(lo, hi, 4) for lo, hi in zip(LO, HI, strict=True)]
    grid: FloatArray = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, D)
    return grid[:n]


def paper_prada(cooldown_s: float = 300.0) -> ExtractionMonitor:
    """PRADA as the paper runs it: every query in D (no repeat filter), W tested after every
    query against 0.84; the service's defaults are calibrated per profile instead
    (tests/unit/serving_monitor/test_sm_traffic_detection.py)."""
    return ExtractionMonitor(
        w_threshold=0.84, params=QueryParams(test_every=1, repeat_radius=0.0), cooldown_s=cooldown_s
    )


def first_alert(queries: FloatArray, monitor: ExtractionMonitor | None = None, batch: int = 10) -> int | None:
    """Queries sent (in batches of `batch`) when the first PRADA alert fired, or None."""
    m = paper_prada() if monitor is None else monitor
    z = PROFILE.query_space(queries)
    for i in range(0, len(z), batch):
        if any(a.kind == KIND_EXTRACTION for a in m.observe("c", PROFILE, z[i : i + batch], now=float(i))):
            return i + batch
    return None


def test_grid_probing_is_caught_after_about_a_hundred_queries() -> None:
    assert first_alert(grid_attack(600)) == 120


def test_jacobian_augmentation_attacks_are_mostly_caught() -> None:
    caught = [first_alert(jacobian_attack(600, seed)) for seed in range(10)]
    detected = [q for q in caught if q is not None]
    assert len(detected) >= 8, caught
    assert max(detected) <= 200


def test_natural_clients_raise_no_alert() -> None:
    false_alerts = [first_alert(natural(600, 100 + seed)) for seed in range(40)]
    assert false_alerts == [None] * 40


def test_alert_carries_the_statistic_and_respects_the_cooldown() -> None:
    m = paper_prada(cooldown_s=300)
    z = PROFILE.query_space(grid_attack(400))
    every = [a for i in range(0, 400, 10) for a in m.observe("c", PROFILE, z[i : i + 10], now=float(i) / 10)]
    alerts = [a for a in every if a.kind == KIND_EXTRACTION]
    assert len(alerts) == 1
    alert = alerts[0].to_alert()
    assert alert.kind == KIND_EXTRACTION and alert.client == "c" and alert.model == "m"
    assert float(alert.evidence["shapiro_w"]) < 0.84


def test_memory_per_client_is_bounded() -> None:
    params = QueryParams(max_set=64, max_distances=128, min_distances=100, window=32)
    m = ExtractionMonitor(params=params)
    m.observe("c", PROFILE, PROFILE.query_space(natural(3000, 7)), now=0.0)
    state = m.state("m", "c")
    axes = PROFILE.reference.projection.shape[1]
    assert state.g.shape == (64, D) and state.d.shape == (128,) and state.p.shape == (32, axes)
    assert state.distinct > 64 and state.d_count > 128 and state.queries == 3000
    numeric = state.g.nbytes + state.g_sq.nbytes + state.d.nbytes + state.p.nbytes + state.cells.nbytes
    assert numeric <= m.bytes_per_client(D, axes)


def test_clients_are_bounded_and_separate() -> None:
    m = ExtractionMonitor(max_clients=3)
    for c in "abcd":
        m.observe(c, PROFILE, PROFILE.query_space(natural(5, 1)), now=0.0)
    assert len(m) == 3
    with pytest.raises(KeyError):
        m.state("m", "a")


def test_batches_are_split_per_client_and_bad_rows_skipped() -> None:
    m = paper_prada()
    grid = grid_attack(300)
    benign = natural(300, 3)
    records = []
    for g, b in zip(grid, benign, strict=True):
        records.append(
            PredictionRecord(client="thief", features=dict(zip(FEATURES, g.tolist(), strict=True)), prediction=1)
        )
        records.append(
            PredictionRecord(client="user", features=dict(zip(FEATURES, b.tolist(), strict=True)), prediction=0)
        )
    records.append(PredictionRecord(client="user", features={"f0": None}, prediction=0))
    alerts = m.observe_batch(PredictionBatch(model="m", records=records), PROFILE, now=0.0)
    assert {a.client for a in alerts} == {"thief"}
    assert m.state("m", "user").queries == 300


def test_constant_distances_score_zero() -> None:
    assert shapiro_w(np.full(50, 2.0)) == 0.0
    assert shapiro_w(np.random.default_rng(0).normal(10, 1, 200)) > 0.95


@pytest.mark.parametrize(
    "kwargs",
    [
        {"w_threshold": 1.0},
        {"params": QueryParams(min_distances=5)},
        {"params": QueryParams(max_distances=10)},
        {"params": QueryParams(max_set=0)},
        {"params": QueryParams(chain_reach=0.1)},
        {"max_clients": 0},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ExtractionMonitor(**kwargs)  # type: ignore[arg-type]


def test_profile_standardisation_is_what_the_detector_sees() -> None:
    p = ReferenceProfile.from_dict(PROFILE.to_dict())
    assert np.allclose(p.query_space(TRAIN[:5]), PROFILE.query_space(TRAIN[:5]))
