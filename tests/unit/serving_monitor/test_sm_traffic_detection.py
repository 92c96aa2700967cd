"""The default detectors on a labelled day of realistic traffic (issue 9): quiet on benign
clients (duplicate-heavy ones included), catching each attack kind. Seed 2: thresholds were
chosen on seed 1 (benchmarks/serving_traffic.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from services.serving_monitor.extraction import KIND_BOUNDARY_WALK
from services.serving_monitor.replay import fit_profile, read_traffic, replay
from services.serving_monitor.synthetic_traffic import BENIGN, MODEL, generate


@pytest.fixture(scope="module")
def judged() -> tuple[dict[str, str], dict[str, list[str]]]:
    traffic = generate(2)
    ref = traffic.reference
    report = replay(read_traffic(traffic.jsonl(), ref.features), fit_profile(ref.features, ref.train, MODEL))
    return traffic.labels, {c: [a.kind for a in r.alerts] for c, r in report.clients.items()}


def test_at_most_one_benign_client_in_40_is_alarmed(judged: tuple[dict[str, str], dict[str, list[str]]]) -> None:
    labels, alerts = judged
    alarmed = [c for c, kinds in alerts.items() if kinds and labels[c] == BENIGN]
    assert Counter(labels.values())[BENIGN] == 40
    assert len(alarmed) <= 1, alarmed


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "boundary_walk", "sybil"])
def test_attack_kind_is_caught(judged: tuple[dict[str, str], dict[str, list[str]]], kind: str) -> None:
    labels, alerts = judged
    clients = [c for c, k in labels.items() if k == kind]
    assert clients and all(alerts[c] for c in clients), {c: alerts[c] for c in clients}


def test_boundary_walk_is_named_as_such(judged: tuple[dict[str, str], dict[str, list[str]]]) -> None:
    labels, alerts = judged
    assert all(KIND_BOUNDARY_WALK in alerts[c] for c, k in labels.items() if k == "boundary_walk")
