"""data-guard decides from what it judged: reference trust, immutable versions, label coverage."""

from __future__ import annotations

import hashlib

from services.data_guard.access import DatasetRecord
from services.data_guard.judged import equivocation, label_coverage, reference_problem
from services.data_guard.policy import DEFAULT_POLICY, AccessPolicy
from shared.events import DatasetUploaded, Decision, Finding, ObjectRef, Sensitivity, Severity

REF_SHA = hashlib.sha256(b"reference bytes").hexdigest()
DATA_SHA = hashlib.sha256(b"upload bytes").hexdigest()


def _upload(**kw: object) -> DatasetUploaded:
    fields: dict[str, object] = {
        "dataset": "bc",
        "version": "2",
        "location": ObjectRef(kind="object", bucket="mlw-datasets", key="bc/2"),
        "sha256": DATA_SHA,
        "format": "csv",
        "label_column": "label",
        "uploader": "pipeline",
        "reference": ObjectRef(kind="object", bucket="mlw-datasets", key="bc/1"),
        "reference_sha256": REF_SHA,
    }
    fields.update(kw)
    return DatasetUploaded.model_validate(fields)


def _record(**kw: object) -> DatasetRecord:
    fields: dict[str, object] = {
        "dataset": "bc",
        "version": "1",
        "sensitivity": Sensitivity.INTERNAL,
        "allowed_readers": (),
        "uploader": "pipeline",
        "decision": Decision.PASS,
        "sha256": REF_SHA,
        "label_checked": True,
    }
    fields.update(kw)
    return DatasetRecord(**fields)  # type: ignore[arg-type]


# --- the reference -------------------------------------------------------------------------------


def test_reference_never_judged_is_refused_and_named() -> None:
    problem = reference_problem(_upload(), [], policy=DEFAULT_POLICY)
    assert problem is not None
    assert "obj://mlw-datasets/bc/1" in problem and REF_SHA[:12] in problem and "never judged" in problem


def test_reference_judged_fail_under_any_name_is_refused() -> None:
    judged = [_record(), _record(dataset="bc-copy", decision=Decision.FAIL)]
    problem = reference_problem(_upload(), judged, policy=DEFAULT_POLICY)
    assert problem is not None and "judged it fail" in problem


def test_reference_judged_pass_is_accepted() -> None:
    assert reference_problem(_upload(), [_record()], policy=DEFAULT_POLICY) is None


def test_reference_without_label_checks_cannot_calibrate_label_checks() -> None:
    unlabelled = [_record(label_checked=False)]
    problem = reference_problem(_upload(), unlabelled, policy=DEFAULT_POLICY)
    assert problem is not None and "never checked its labels" in problem
    assert reference_problem(_upload(label_column=None), unlabelled, policy=DEFAULT_POLICY) is None


def test_reference_the_uploader_may_not_read_is_refused() -> None:
    restricted = [_record(sensitivity=Sensitivity.RESTRICTED, allowed_readers=("bob",))]
    problem = reference_problem(_upload(), restricted, policy=DEFAULT_POLICY)
    assert problem is not None and "allow-list" in problem


def test_reference_pinned_in_the_policy_is_accepted_unjudged() -> None:
    pinned = AccessPolicy.from_yaml(f"pinned_references: {{bc: [{REF_SHA}]}}\n")
    assert reference_problem(_upload(), [], policy=pinned, pinned=pinned.pinned_for("bc")) is None
    assert pinned.pinned_for("other") == frozenset()


def test_reference_needs_its_digest() -> None:
    problem = reference_problem(_upload(reference_sha256=None), [_record()], policy=DEFAULT_POLICY)
    assert problem is not None and "sha256" in problem


def test_no_reference_is_no_problem() -> None:
    assert reference_problem(_upload(reference=None, reference_sha256=None), [], policy=DEFAULT_POLICY) is None


# --- immutable versions ---------------------------------------------------------------------------


def test_retry_of_a_judged_version_is_no_equivocation() -> None:
    record = _record(version="2", sha256=DATA_SHA, allowed_readers=("bob", "alice"))
    assert equivocation(record, _upload(allowed_readers=["alice", "bob"])) == []


def test_other_bytes_level_readers_or_uploader_are_equivocation() -> None:
    record = _record(version="2", sha256=DATA_SHA, sensitivity=Sensitivity.RESTRICTED, allowed_readers=("bob",))
    changed = equivocation(record, _upload(sha256=REF_SHA, sensitivity=Sensitivity.PUBLIC, uploader="alice"))
    assert changed == ["bytes", "sensitivity", "allowed readers", "uploader"]


# --- label coverage ---------------------------------------------------------------------------------


def _f(check: str) -> Finding:
    return Finding(check=check, severity=Severity.INFO, message="")


def test_label_checks_that_ran_need_no_finding() -> None:
    ran = [_f("label_noise.confident_learning"), _f("backdoor.trigger"), _f("duplicates.conflicting_labels")]
    assert label_coverage("label", ran) == (True, None)


def test_unlabelled_upload_lists_the_checks_that_did_not_run() -> None:
    checked, finding = label_coverage(None, [_f("outliers.robust_z"), _f("duplicates.exact")])
    assert not checked and finding is not None
    assert finding.check == "checks.skipped" and finding.severity == Severity.INFO
    for name in ("label noise", "backdoor triggers", "label-conflicting duplicates"):
        assert name in finding.message
    assert "no label column" in finding.message
