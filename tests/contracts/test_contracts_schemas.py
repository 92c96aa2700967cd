"""`mlwarden schemas` prints standalone JSON Schemas (2020-12) that a third party can validate the
wire bytes against: the whole signed envelope of each stored subject (issue 10)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import BaseModel

from shared.asyncapi import JSON_SCHEMA_DIALECT, build_json_schemas
from shared.envelope import new_event
from shared.signing import SigningKey
from shared.topology import Subjects, model_for_type

_OBJ = {"kind": "object", "bucket": "mlw-datasets", "key": "iris/3"}
_SHA = "ab" * 32

#: A valid `data` body for each stored subject.
SAMPLES: dict[str, dict[str, Any]] = {
    Subjects.DATASET_UPLOADED: {
        "dataset": "iris",
        "version": "3",
        "location": _OBJ,
        "sha256": _SHA,
        "format": "csv",
        "label_column": "species",
        "uploader": "alice",
        "allowed_readers": ["bob"],
    },
    Subjects.DATASET_ACCESS: {"principal": "bob", "dataset": "iris", "version": "3", "purpose": "training"},
    Subjects.DATASET_APPROVAL: {"request_id": "r-1", "dataset": "iris", "version": "3", "approver": "carol"},
    Subjects.MODEL_BUILT: {
        "model": "iris-clf",
        "version": "1.0",
        "artifact": {"kind": "file", "path": "models/iris"},
        "datasets": [{"dataset": "iris", "version": "3", "sha256": _SHA}],
        "builder": "pipeline",
    },
    Subjects.PROMOTION_REQUESTED: {
        "model": "iris-clf",
        "version": "1.0",
        "stage": "production",
        "requester": "alice",
        "root_digest": _SHA,
    },
    Subjects.DEMOTION_REQUESTED: {
        "model": "iris-clf",
        "version": "1.0",
        "stage": "production",
        "requester": "alice",
        "reason": "accuracy regression",
    },
    Subjects.ROLLBACK_REQUESTED: {
        "model": "iris-clf",
        "version": "0.9",
        "stage": "production",
        "requester": "alice",
        "root_digest": _SHA,
        "reason": "1.0 was recalled",
    },
    Subjects.RECALL_REQUESTED: {
        "dataset": "iris",
        "version": "3",
        "requester": "olga",
        "reason": "licence withdrawn",
    },
    Subjects.POLICY_CHANGE: {
        "document": "roles: [ml-engineer, reviewer]\nstages:\n  production: {approvals: 2}\n",
        "requester": "paula",
        "reason": "production needs two reviewers",
        "expected_version": 3,
    },
    Subjects.APPROVAL_GIVEN: {
        "request_id": "r-2",
        "model": "iris-clf",
        "version": "1.0",
        "stage": "production",
        "approver": "carol",
    },
    Subjects.PREDICTION_LOGGED: {
        "model": "iris-clf",
        "records": [{"client": "c1", "features": {"petal_length": 1.4, "petal_width": None}, "prediction": "setosa"}],
    },
    Subjects.VERDICT_DATASET: {
        "dataset": "iris",
        "version": "3",
        "sha256": _SHA,
        "decision": "pass",
        "in_reply_to": "e-1",
        "findings": [
            {"check": "outliers.robust_z", "severity": "warn", "message": "a few", "evidence": {"z": 4.5, "n": 3}}
        ],
    },
    Subjects.VERDICT_ACCESS: {
        "principal": "bob",
        "dataset": "iris",
        "version": "3",
        "purpose": "training",
        "allowed": True,
        "reasons": ["reader"],
        "in_reply_to": "e-2",
    },
    Subjects.VERDICT_ARTIFACT: {
        "model": "iris-clf",
        "version": "1.0",
        "root_digest": _SHA,
        "decision": "pass",
        "in_reply_to": "e-3",
    },
    Subjects.VERDICT_PROMOTION: {
        "model": "iris-clf",
        "version": "1.0",
        "stage": "production",
        "decision": "promoted",
        "request_id": "r-2",
        "in_reply_to": "e-4",
    },
    Subjects.VERDICT_RECALL: {
        "dataset": "iris",
        "version": "3",
        "decision": "recalled",
        "requester": "olga",
        "request_id": "r-3",
        "in_reply_to": "r-3",
        "recalled": [{"model": "iris-clf", "version": "1.0", "stage": "production", "root_digest": _SHA}],
    },
    Subjects.VERDICT_POLICY: {
        "decision": "rejected",
        "version": 3,
        "sha256": _SHA,
        "problems": ["stages.production.approvals: Input should be greater than or equal to 0"],
        "requester": "paula",
        "reason": "production needs two reviewers",
        "request_id": "r-4",
        "in_reply_to": "r-4",
    },
    Subjects.VERDICT_ADMISSION: {"client": "c1", "model": "iris-clf", "decision": "allow", "reason": "ok"},
    Subjects.ALERT_PREFIX + ".<service>": {"kind": "abuse.volume", "severity": "fail", "message": "too many calls"},
    Subjects.DEADLETTER_PREFIX + ".<service>": {
        "service": "data-guard",
        "original_subject": "mlw.dataset.uploaded",
        "reason": "not valid JSON",
        "payload_b64": "bm90IGpzb24=",
        "payload_size": 8,
        "payload_sha256": _SHA,
    },
}

ENVELOPE_SUBJECTS = sorted(SAMPLES)


def _wire(subject: str, key: SigningKey) -> dict[str, Any]:
    """A signed envelope exactly as it travels, parsed back into JSON."""
    event_type = subject.replace("<service>", "data-guard")
    model = model_for_type(event_type)
    assert model is not None
    data: BaseModel = model.model_validate(SAMPLES[subject])
    wire: dict[str, Any] = orjson.loads(
        new_event(event_type, data, source="mlwarden/test", subject="iris").signed(key).to_bytes()
    )
    return wire


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return build_json_schemas()


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("data-guard")


def test_every_stored_subject_with_a_schema_has_a_sample(schemas: dict[str, Any]) -> None:
    assert sorted(s for s, v in schemas.items() if "request" not in v) == ENVELOPE_SUBJECTS


def test_every_printed_schema_declares_json_schema_2020_12_and_is_valid(schemas: dict[str, Any]) -> None:
    for subject, schema in schemas.items():
        for one in [schema["request"], schema["reply"]] if "request" in schema else [schema]:
            assert one["$schema"] == JSON_SCHEMA_DIALECT, subject
            Draft202012Validator.check_schema(one)


@pytest.mark.parametrize("subject", ENVELOPE_SUBJECTS)
def test_schema_validates_a_real_signed_envelope(subject: str, schemas: dict[str, Any], key: SigningKey) -> None:
    wire = _wire(subject, key)
    assert {"specversion", "id", "source", "type", "time", "data", "signer", "signature"} <= wire.keys()
    Draft202012Validator(schemas[subject]).validate(wire)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda w: w.pop("signature"), None),
        (lambda w: w.update(specversion="0.3"), "'1.0' was expected"),
        (lambda w: w.update(extra="x"), "Additional properties"),
        (lambda w: w["data"].pop("sha256"), "'sha256' is a required property"),
    ],
)
def test_schema_refuses_a_broken_envelope(
    change: Any, why: str | None, schemas: dict[str, Any], key: SigningKey
) -> None:
    wire = _wire(Subjects.DATASET_UPLOADED, key)
    change(wire)
    validator = Draft202012Validator(schemas[Subjects.DATASET_UPLOADED])
    if why is None:  # an unsigned envelope is well-formed; refusing it is the services' job
        validator.validate(wire)
        return
    with pytest.raises(ValidationError, match=why):
        validator.validate(wire)
