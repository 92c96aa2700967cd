"""Access policy: default deny, allow-lists, clearance per level."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.data_guard.policy import (
    DEFAULT_POLICY,
    AccessPolicy,
    PolicyError,
    check_read,
    check_upload,
)
from shared.events import DatasetUploaded, ObjectRef, Sensitivity, Severity


def _upload(uploader: str, level: Sensitivity, readers: list[str] | None = None) -> DatasetUploaded:
    return DatasetUploaded(
        dataset="churn",
        version="1",
        location=ObjectRef(kind="file", path="/tmp/x.csv"),
        sha256="0" * 64,
        format="csv",
        label_column="y",
        sensitivity=level,
        uploader=uploader,
        allowed_readers=readers or [],
    )


def _checks(upload: DatasetUploaded) -> dict[str, Severity]:
    return {f.check: f.severity for f in check_upload(upload, DEFAULT_POLICY)}


def test_compliant_upload_gets_one_info_finding() -> None:
    assert _checks(_upload("alice", Sensitivity.INTERNAL)) == {"policy.access": Severity.INFO}
    assert _checks(_upload("alice", Sensitivity.RESTRICTED, ["bob"])) == {"policy.access": Severity.INFO}


def test_uploader_without_upload_role_is_refused() -> None:
    assert _checks(_upload("bob", Sensitivity.PUBLIC))["policy.uploader"] == Severity.FAIL
    # an unknown principal has no roles: default deny
    assert _checks(_upload("mallory", Sensitivity.PUBLIC))["policy.uploader"] == Severity.FAIL


@pytest.mark.parametrize("level", [Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED])
def test_confidential_and_restricted_need_an_allow_list(level: Sensitivity) -> None:
    assert _checks(_upload("alice", level))["policy.allow_list"] == Severity.FAIL


def test_readers_not_cleared_for_the_level_are_named() -> None:
    findings = check_upload(_upload("alice", Sensitivity.RESTRICTED, ["bob", "carol", "dave"]), DEFAULT_POLICY)
    readers = next(f for f in findings if f.check == "policy.readers")
    assert readers.severity == Severity.FAIL
    assert readers.evidence["readers"] == "carol,dave"
    assert readers.count == 2


def test_check_read_default_deny_and_allow_list() -> None:
    assert check_read("carol", Sensitivity.INTERNAL, [], DEFAULT_POLICY).allowed
    assert not check_read("mallory", Sensitivity.PUBLIC, [], DEFAULT_POLICY).allowed
    # analyst not cleared for confidential, even when listed
    assert not check_read("carol", Sensitivity.CONFIDENTIAL, ["carol"], DEFAULT_POLICY).allowed
    # cleared role but no allow-list on restricted data: nobody reads it
    decision = check_read("bob", Sensitivity.RESTRICTED, [], DEFAULT_POLICY)
    assert not decision.allowed
    assert "allow-list" in decision.reason
    assert check_read("bob", Sensitivity.RESTRICTED, ["bob"], DEFAULT_POLICY).allowed
    # an allow-list restricts any level, and cleared roles off the list are refused
    assert not check_read("bob", Sensitivity.CONFIDENTIAL, ["dave"], DEFAULT_POLICY).allowed
    assert not check_read("carol", Sensitivity.INTERNAL, ["alice"], DEFAULT_POLICY).allowed


def test_level_missing_from_policy_grants_nothing() -> None:
    policy = AccessPolicy.from_dict(
        {"levels": {"public": {"upload": ["x"], "read": ["x"]}}, "principals": {"p": ["x"]}}
    )
    assert policy.may_upload("p", Sensitivity.PUBLIC)
    assert not policy.may_upload("p", Sensitivity.INTERNAL)
    assert not check_read("p", Sensitivity.INTERNAL, [], policy).allowed


def test_policy_from_yaml_file_and_bad_documents(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("levels:\n  internal: {upload: [ops], read: [ops]}\nprincipals:\n  eve: [ops]\n")
    policy = AccessPolicy.from_file(path)
    assert policy.may_upload("eve", Sensitivity.INTERNAL)
    for bad in ("levels: {secret: {read: [x]}}", "- a list", "levels: [", "levelz: {}"):
        with pytest.raises(PolicyError):
            AccessPolicy.from_yaml(bad)
    with pytest.raises(PolicyError):
        AccessPolicy.from_yaml("!!python/object/apply:os.system ['true']")  # safe loader only
    with pytest.raises(PolicyError):
        AccessPolicy.from_file(tmp_path / "missing.yaml")
