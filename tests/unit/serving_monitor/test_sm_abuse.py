"""Abuse detection over prediction logs: floods and invalid-input probing raise alerts, once."""

from __future__ import annotations

import math

import pytest

from services.serving_monitor.abuse import (
    KIND_INVALID,
    KIND_VOLUME,
    AbuseMonitor,
    ClientTally,
    tally_batch,
)
from services.serving_monitor.errors import ConfigError, ObservationError
from services.serving_monitor.validation import FeatureSchema, FeatureSpec
from shared.events import Alert, PredictionBatch, PredictionRecord, Severity


def monitor(**overrides: float) -> AbuseMonitor:
    params: dict[str, float] = {
        "volume_per_minute": 600,
        "invalid_rate": 0.2,
        "min_records": 50,
        "cooldown_s": 300,
    }
    params.update(overrides)
    return AbuseMonitor(
        volume_per_minute=params["volume_per_minute"],
        invalid_rate=params["invalid_rate"],
        min_records=int(params["min_records"]),
        cooldown_s=params["cooldown_s"],
        max_clients=int(params.get("max_clients", 100_000)),
    )


def test_clean_traffic_raises_nothing() -> None:
    m = monitor()
    alerts = []
    # An hour of a client at 300 predictions per minute (half the limit), 1 % invalid.
    for second in range(0, 3600, 10):
        alerts += m.observe("acme", "churn", records=50, invalid=1 if second % 200 == 0 else 0, now=1000.0 + second)
    assert alerts == []


def test_sustained_flood_raises_a_volume_alert() -> None:
    m = monitor()
    alerts = []
    # 1200 per minute, twice the limit, in batches of 100 every 5 s.
    for step in range(60):
        alerts += m.observe("scraper", "churn", records=100, invalid=0, now=step * 5.0)
    kinds = [a.kind for a in alerts]
    assert kinds == [KIND_VOLUME]
    alert = alerts[0]
    assert alert.client == "scraper"
    assert alert.model == "churn"
    assert alert.evidence["threshold_per_minute"] == 600
    assert float(alert.evidence["records_per_minute"]) > 600


def test_one_huge_burst_is_a_failing_volume_alert() -> None:
    alerts = monitor().observe("scraper", "churn", records=5000, invalid=0, now=0.0)
    assert [(a.kind, a.severity) for a in alerts] == [(KIND_VOLUME, Severity.FAIL)]


def test_high_invalid_rate_raises_an_invalid_inputs_alert() -> None:
    m = monitor()
    alerts = []
    # A prober: modest volume, but half of its inputs out of schema.
    for step in range(20):
        alerts += m.observe("prober", "churn", records=10, invalid=5, now=step * 6.0)
    assert [a.kind for a in alerts] == [KIND_INVALID]
    assert float(alerts[0].evidence["invalid_rate"]) == pytest.approx(0.5)
    assert alerts[0].severity is Severity.FAIL  # over twice the 20 % threshold


def test_invalid_rate_needs_min_records_of_evidence() -> None:
    m = monitor(min_records=50)
    # Three records, all invalid: a rate of 100 % on too little evidence to accuse anyone.
    assert m.observe("newbie", "churn", records=3, invalid=3, now=0.0) == []


def test_cooldown_suppresses_repeats_then_alerts_again() -> None:
    m = monitor(cooldown_s=300)
    first = m.observe("scraper", "churn", records=1000, invalid=500, now=0.0)
    assert sorted(a.kind for a in first) == [KIND_INVALID, KIND_VOLUME]
    for t in range(10, 300, 10):
        assert m.observe("scraper", "churn", records=1000, invalid=500, now=float(t)) == []
    again = m.observe("scraper", "churn", records=1000, invalid=500, now=300.0)
    assert sorted(a.kind for a in again) == [KIND_INVALID, KIND_VOLUME]


def test_one_client_does_not_mark_another() -> None:
    m = monitor()
    assert m.observe("scraper", "churn", records=5000, invalid=5000, now=0.0)
    assert m.observe("acme", "churn", records=100, invalid=0, now=1.0) == []


def test_past_burst_decays_away() -> None:
    m = monitor(cooldown_s=0)
    assert m.observe("acme", "churn", records=700, invalid=0, now=0.0)
    # Ten minutes later the burst is forgotten: normal traffic is clean again.
    assert m.observe("acme", "churn", records=10, invalid=0, now=600.0) == []


def test_clock_stepping_back_does_not_inflate_counts() -> None:
    m = monitor()
    assert m.observe("acme", "churn", records=500, invalid=0, now=100.0) == []
    assert m.observe("acme", "churn", records=50, invalid=0, now=0.0) == []


def test_client_table_is_bounded() -> None:
    m = monitor(max_clients=100)
    for i in range(5000):
        m.observe(f"client-{i}", "churn", records=1, invalid=0, now=float(i))
    assert len(m) == 100


@pytest.mark.parametrize(("records", "invalid"), [(-1, 0), (1, -1), (1, 2)])
def test_impossible_counts_are_refused(records: int, invalid: int) -> None:
    with pytest.raises(ObservationError) as caught:
        monitor().observe("acme", "churn", records=records, invalid=invalid, now=0.0)
    assert caught.value.client == "acme"


@pytest.mark.parametrize(
    "bad",
    [
        {"volume_per_minute": 0},
        {"invalid_rate": 0},
        {"invalid_rate": 1.5},
        {"min_records": 0},
        {"cooldown_s": -1},
        {"cooldown_s": math.inf},
    ],
)
def test_meaningless_configuration_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        monitor(**bad)


def _batch(rows: list[tuple[str, dict[str, float | None]]]) -> PredictionBatch:
    return PredictionBatch(
        model="churn",
        records=[PredictionRecord(client=c, features=f, prediction=1) for c, f in rows],
    )


def test_tally_batch_counts_invalid_records_per_client_against_the_schema() -> None:
    schema = FeatureSchema(model="churn", features=[FeatureSpec(name="x", min=0, max=1)])
    batch = _batch(
        [
            ("acme", {"x": 0.5}),
            ("acme", {"x": 7.0}),  # out of range
            ("evil", {"x": math.nan}),
            ("evil", {"y": 0.5}),  # unknown feature, missing x
            ("evil", {"x": 0.1}),
        ]
    )
    assert tally_batch(batch, schema) == {
        "acme": ClientTally(records=2, invalid=1),
        "evil": ClientTally(records=3, invalid=2),
    }
    # Without a schema only non-finite values are judged.
    assert tally_batch(batch, None) == {
        "acme": ClientTally(records=2, invalid=0),
        "evil": ClientTally(records=3, invalid=1),
    }


def test_observe_batch_alerts_on_a_probing_client_and_converts_to_bus_alert() -> None:
    schema = FeatureSchema(model="churn", features=[FeatureSpec(name="x", min=0, max=1)])
    rows: list[tuple[str, dict[str, float | None]]] = [("prober", {"x": 1e9})] * 60
    rows += [("acme", {"x": 0.5})] * 60
    alerts = monitor().observe_batch(_batch(rows), schema, now=0.0)
    assert [(a.kind, a.client) for a in alerts] == [(KIND_INVALID, "prober")]
    bus = alerts[0].to_alert()
    assert isinstance(bus, Alert)
    assert bus.kind == KIND_INVALID
    assert bus.client == "prober"
    assert bus.model == "churn"
