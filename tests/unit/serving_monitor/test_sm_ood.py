"""OOD scoring against an offline reference: shifted or adversarial clients alert, clean ones do not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from services.serving_monitor.errors import ConfigError
from services.serving_monitor.ood import KIND_OOD, FloatArray, OodMonitor, ReferenceProfile, fit_reference
from shared.events import PredictionBatch, PredictionRecord

D = 5
FEATURES = [f"f{i}" for i in range(D)]
_MIX = np.random.default_rng(1).normal(size=(D, D)) * 0.5 + np.eye(D)


def natural(n: int, seed: int) -> FloatArray:
    out: FloatArray = np.random.default_rng(seed).normal(size=(n, D)) @ _MIX + np.arange(D) * 10.0
    return out


TRAIN = natural(5000, 0)
PROFILE = fit_reference(TRAIN, FEATURES, "m", false_flag_rate=0.01)


def rows(x: FloatArray) -> list[dict[str, float | None]]:
    return [dict(zip(FEATURES, r.tolist(), strict=True)) for r in x]


def batch(client: str, x: FloatArray) -> PredictionBatch:
    return PredictionBatch(
        model="m", records=[PredictionRecord(client=client, features=f, prediction=0) for f in rows(x)]
    )


def test_false_flag_rate_holds_on_fresh_clean_data() -> None:
    flagged = PROFILE.is_ood(rows(natural(20_000, 42))).mean()
    assert PROFILE.calibrated_rate <= 0.01
    assert 0.003 < flagged < 0.02


def test_correlation_breaking_inputs_inside_the_box_are_flagged() -> None:
    # Each feature alone stays in its training range (a range check passes), but the joint
    # structure is broken: features drawn independently from their marginals.
    rng = np.random.default_rng(5)
    x = np.stack([rng.choice(TRAIN[:, j], 2000) for j in range(D)], axis=1)
    assert ((x >= TRAIN.min(axis=0)) & (x <= TRAIN.max(axis=0))).all()
    assert PROFILE.is_ood(rows(x)).mean() > 0.2


def test_missing_and_non_finite_features_score_infinite() -> None:
    scores = PROFILE.scores(
        [{"f0": 1.0}, {**rows(TRAIN[:1])[0], "f1": float("nan")}, {**rows(TRAIN[:1])[0], "f2": None}]
    )
    assert np.isinf(scores).all()


def test_profile_round_trips_through_json() -> None:
    data = json.loads(json.dumps(PROFILE.to_dict()))
    again = ReferenceProfile.from_dict(data)
    assert again.to_dict() == PROFILE.to_dict()
    assert np.allclose(again.scores(rows(TRAIN[:50])), PROFILE.scores(rows(TRAIN[:50])))


def test_malformed_profiles_are_refused() -> None:
    data = PROFILE.to_dict()
    with pytest.raises(ValidationError):
        ReferenceProfile.from_dict({**data, "precision": data["precision"][:-1]})
    with pytest.raises(ValidationError):
        ReferenceProfile.from_dict({**data, "scale": [0.0] * D})
    with pytest.raises(ValidationError):
        ReferenceProfile.from_dict({**data, "threshold": float("inf")})


def test_fit_refuses_too_little_or_bad_data() -> None:
    with pytest.raises(ConfigError):
        fit_reference(TRAIN[:50], FEATURES, "m", false_flag_rate=0.01)
    with pytest.raises(ConfigError):
        fit_reference(TRAIN[:, :3], FEATURES, "m")
    bad = TRAIN.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError):
        fit_reference(bad, FEATURES, "m")


def stream(monitor: OodMonitor, client: str, x: FloatArray, size: int = 10) -> int | None:
    """Records sent when the first alert fired, or None."""
    for i in range(0, len(x), size):
        if monitor.observe_batch(batch(client, x[i : i + size]), PROFILE, now=float(i) / 10):
            return i + size
    return None


def test_adversarial_client_is_caught_quickly() -> None:
    # Half of this client's inputs are perturbed off the data manifold (FGSM-like sign steps of
    # 1.5 robust sigmas on every feature), half are natural.
    rng = np.random.default_rng(9)
    x = natural(400, 11)
    x[::2] += 1.5 * np.asarray(PROFILE.scale) * np.sign(rng.normal(size=(200, D)))
    caught = stream(OodMonitor(), "adv", x)
    assert caught is not None and caught <= 40  # min_records is 30 (decayed)


def test_distribution_shifted_client_is_caught() -> None:
    x = natural(400, 12) + 2.5 * np.asarray(PROFILE.scale)
    caught = stream(OodMonitor(), "shift", x)
    assert caught is not None and caught <= 40


def test_clean_clients_raise_nothing() -> None:
    m = OodMonitor()
    assert all(stream(m, f"c{seed}", natural(1000, 200 + seed)) is None for seed in range(20))


def test_alert_content_and_cooldown() -> None:
    m = OodMonitor(cooldown_s=60)
    x = natural(300, 13) + 3 * np.asarray(PROFILE.scale)
    alerts = [
        a for i in range(0, 300, 10) for a in m.observe_batch(batch("s", x[i : i + 10]), PROFILE, now=float(i) / 10)
    ]
    assert len(alerts) == 1
    alert = alerts[0].to_alert()
    assert alert.kind == KIND_OOD and alert.client == "s" and alert.model == "m"
    assert float(alert.evidence["p_value"]) < 1e-4 and float(alert.evidence["ood_rate"]) > 0.5


def test_a_few_ood_records_below_the_floor_do_not_alert() -> None:
    m = OodMonitor(rate_floor=0.1)
    # 5% OOD: significantly above 1% given enough records, but under the 10% floor.
    assert m.observe("c", PROFILE, 2000, 100, now=0.0) == []
    assert m.observe("d", PROFILE, 2000, 400, now=0.0) != []


def test_state_is_constant_per_client_and_bounded() -> None:
    m = OodMonitor(max_clients=2)
    for c in "abc":
        m.observe(c, PROFILE, 10, 0, now=0.0)
    assert len(m) == 2
    m.forget_model("m")
    assert len(m) == 0


def test_reference_is_not_updated_by_the_traffic() -> None:
    before = PROFILE.to_dict()
    m = OodMonitor()
    stream(m, "x", natural(300, 14) + 5 * np.asarray(PROFILE.scale))
    assert PROFILE.to_dict() == before


@pytest.mark.parametrize("kwargs", [{"rate_floor": 0.0}, {"alpha": 1.0}, {"min_records": 0}, {"window_s": 0.0}])
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        OodMonitor(**kwargs)  # type: ignore[arg-type]


def test_a_profile_of_an_older_format_is_refused_with_how_to_refit() -> None:
    old = PROFILE.to_dict() | {"format": 1}
    del old["queries"]
    with pytest.raises(ValueError, match="refit it with `mlwarden serving fit-profile"):
        ReferenceProfile.from_dict(old)
