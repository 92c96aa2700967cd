"""The provenance's dataset decisions come from data-guard's own records, by exact bytes."""

from __future__ import annotations

import orjson

from services.artifact_signer.attest import provenance_statement
from services.artifact_signer.datasets import decision_in, record_key
from services.data_guard.app import _record_key
from shared.events import DatasetRef, Decision

REF = DatasetRef(dataset="iris", version="1", sha256="c" * 64)


def _record(**changes: str) -> bytes:
    return orjson.dumps({"dataset": "iris", "version": "1", "sha256": "c" * 64, "decision": "warn", **changes})


def test_record_key_is_data_guards() -> None:
    assert record_key("iris", "1") == _record_key("iris", "1")


def test_decision_only_for_the_bytes_the_build_names() -> None:
    assert decision_in(_record(), REF) is Decision.WARN
    assert decision_in(_record(sha256="d" * 64), REF) is None
    assert decision_in(_record(version="2"), REF) is None
    assert decision_in(_record(decision="maybe"), REF) is None
    assert decision_in(b"[1]", REF) is None and decision_in(b"{", REF) is None and decision_in(None, REF) is None


def test_provenance_records_each_datasets_decision() -> None:
    other = DatasetRef(dataset="extra", version="1", sha256="e" * 64)
    statement = provenance_statement(
        name="m",
        root_digest="0" * 64,
        model="m",
        version="1",
        builder="ci-bot",
        datasets=[REF, other],
        dataset_decisions={REF.sha256: Decision.FAIL},
    )
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["annotations"]["dataGuardDecision"] for d in deps] == ["fail", "unknown"]
