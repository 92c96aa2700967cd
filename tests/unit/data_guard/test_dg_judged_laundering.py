"""The bytes data-guard judged keep their protection under every name (`judged.laundering`)."""

from __future__ import annotations

from services.data_guard.access import DatasetRecord
from services.data_guard.judged import laundering
from services.data_guard.policy import DEFAULT_POLICY
from shared.events import DatasetUploaded, Decision, ObjectRef, Sensitivity

SHA = "ab" * 32
RESTRICTED = DatasetRecord("patients", "1", Sensitivity.RESTRICTED, ("bob",), "pipeline", Decision.PASS, SHA)


def _upload(**kw: object) -> DatasetUploaded:
    fields: dict[str, object] = {
        "dataset": "open-data",
        "version": "1",
        "location": ObjectRef(kind="object", bucket="mlw-datasets", key="patients/1"),
        "sha256": SHA,
        "format": "csv",
        "uploader": "alice",
        "sensitivity": Sensitivity.RESTRICTED,
        "allowed_readers": ["bob"],
    }
    fields.update(kw)
    return DatasetUploaded.model_validate(fields)


def test_a_weaker_classification_or_new_readers_are_refused() -> None:
    assert "restricted" in (
        laundering(_upload(sensitivity=Sensitivity.PUBLIC), [RESTRICTED], policy=DEFAULT_POLICY) or ""
    )
    # alice (not on the allow-list) may not re-announce bytes she cannot read, even as restricted
    assert "'alice'" in (laundering(_upload(), [RESTRICTED], policy=DEFAULT_POLICY) or "")
    added = laundering(
        _upload(uploader="pipeline", allowed_readers=["bob", "carol"]), [RESTRICTED], policy=DEFAULT_POLICY
    )
    assert added is not None and "'carol'" in added


def test_the_owner_may_publish_the_same_bytes_again_with_the_same_protection() -> None:
    again = _upload(dataset="patients", version="2", uploader="pipeline")
    assert laundering(again, [RESTRICTED], policy=DEFAULT_POLICY) is None
    assert laundering(_upload(dataset="patients", version="1"), [RESTRICTED], policy=DEFAULT_POLICY) is None  # itself
