"""Access requests: the policy stops each unauthorised read; read volume anomalies are caught."""

from __future__ import annotations

import pytest

from services.data_guard.access import AccessEvidence, DatasetRecord, ReadVolumeMonitor, decide_access
from services.data_guard.policy import DEFAULT_POLICY
from shared.events import DataAccessRequested, Decision, Sensitivity


def _record(level: Sensitivity, readers: tuple[str, ...] = (), decision: Decision = Decision.PASS) -> DatasetRecord:
    return DatasetRecord("ds", "1", level, readers, "alice", decision, "0" * 64, 1000)


def _request(principal: str, **kw: object) -> DataAccessRequested:
    return DataAccessRequested(principal=principal, dataset="ds", version="1", purpose="training", **kw)  # type: ignore[arg-type]


POLICY = DEFAULT_POLICY.with_roles(
    {"dana": frozenset({"data-steward"}), "idp": frozenset({"identity-provider"}), "bob": frozenset({"data-steward"})}
)
APPROVED = AccessEvidence(approvers=frozenset({"dana"}), mfa_asserted_by=frozenset({"idp"}))


def test_restricted_read_needs_role_allow_list_signed_approval_and_asserted_mfa() -> None:
    record = _record(Sensitivity.RESTRICTED, ("bob",))
    assert decide_access(_request("bob"), record, POLICY, APPROVED).allowed
    no_mfa = decide_access(_request("bob"), record, POLICY, AccessEvidence(approvers=frozenset({"dana"})))
    assert not no_mfa.allowed and any("multi-factor" in r for r in no_mfa.reasons)
    no_approval = decide_access(_request("bob"), record, POLICY, AccessEvidence(mfa_asserted_by=frozenset({"idp"})))
    assert not no_approval.allowed and any("approval" in r for r in no_approval.reasons)
    # bob holds the steward role, but nobody approves their own read
    self_approved = AccessEvidence(approvers=frozenset({"bob"}), mfa_asserted_by=frozenset({"idp"}))
    assert not decide_access(_request("bob"), record, POLICY, self_approved).allowed
    not_listed = decide_access(_request("alice"), record, POLICY, APPROVED)
    assert not not_listed.allowed and any("allow-list" in r for r in not_listed.reasons)
    auditor = decide_access(_request("dave"), _record(Sensitivity.RESTRICTED, ("dave",)), POLICY, APPROVED)
    assert not auditor.allowed  # the auditor role is never cleared for restricted data


def test_approvals_and_mfa_count_only_from_the_roles_that_grant_them() -> None:
    record = _record(Sensitivity.RESTRICTED, ("bob",))
    # carol approving and mallory "asserting MFA" grant nothing: neither holds the role
    wrong_roles = AccessEvidence(approvers=frozenset({"carol"}), mfa_asserted_by=frozenset({"mallory"}))
    outcome = decide_access(_request("bob"), record, POLICY, wrong_roles)
    assert not outcome.allowed
    assert any("approval" in r for r in outcome.reasons) and any("multi-factor" in r for r in outcome.reasons)
    # and without evidence, nothing the request says can help (it has no approval or MFA fields)
    assert not decide_access(_request("bob"), record, POLICY).allowed


def test_public_read_needs_only_a_cleared_role_and_unknown_principals_are_denied() -> None:
    assert decide_access(_request("carol"), _record(Sensitivity.PUBLIC), DEFAULT_POLICY).allowed
    assert not decide_access(_request("mallory"), _record(Sensitivity.PUBLIC), DEFAULT_POLICY).allowed


def test_unknown_and_quarantined_datasets_are_not_readable() -> None:
    assert not decide_access(_request("carol"), None, DEFAULT_POLICY).allowed
    failed = decide_access(_request("carol"), _record(Sensitivity.PUBLIC, decision=Decision.FAIL), DEFAULT_POLICY)
    assert not failed.allowed and any("quarantined" in r for r in failed.reasons)


def test_read_volume_far_above_the_principals_own_history_is_an_anomaly() -> None:
    monitor = ReadVolumeMonitor()
    for size in (1_000_000, 1_200_000, 900_000, 1_100_000, 1_000_000, 950_000):
        assert monitor.observe("bob", size) is None
    assert monitor.observe("bob", 3_000_000) is None  # 3x: within a normal spread
    anomaly = monitor.observe("bob", 500_000_000)
    assert anomaly is not None and anomaly.principal == "bob" and anomaly.z > 4
    # another principal whose normal reads are that big is not alarmed by them
    for _ in range(6):
        assert monitor.observe("etl", 500_000_000) is None


def test_anomalous_reads_do_not_teach_the_baseline_and_state_is_constant() -> None:
    monitor = ReadVolumeMonitor()
    for _ in range(1_000):
        monitor.observe("bob", 1_000)
    state = monitor.states["bob"]
    assert set(vars(state)) == {"reads", "mean", "var"}
    for _ in range(5):
        assert monitor.observe("bob", 10**9) is not None  # repeated exfiltration keeps alarming


def test_monitor_refuses_a_meaningless_smoothing_factor() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ReadVolumeMonitor(alpha=1.5)
