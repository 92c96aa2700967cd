"""registry-gate decision: every rule is an attack that must be stopped.

Requests and approvals go through real signed envelopes verified against the policy's trust
store, as the wiring does, so "who signed it" is proven, not assumed.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import BaseModel

from services.registry_gate.gate import (
    ConflictingEvent,
    GateDecision,
    RecordedRecall,
    RegistryState,
    RequestExpired,
    StageChange,
    StateError,
    UnknownRequest,
    artifact_recalls,
    closing_fact,
    dataset_recall,
    evaluate,
    key_recalls,
    recall_prefix,
    recalls,
)
from services.registry_gate.policy import (
    ML_ENGINEER,
    REVIEWER,
    RegistryPolicy,
    Stage,
    StagePolicy,
    default_stages,
    policy_for_actors,
)
from shared.envelope import new_event
from shared.errors import SignatureError
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    DatasetRecallRequested,
    DatasetRef,
    DatasetVerdict,
    Decision,
    DemotionRequested,
    PromotionRequested,
    RollbackRequested,
)
from shared.signing import SigningKey

ROOT = hashlib.sha256(b"churn model v3 manifest").hexdigest()
OTHER_ROOT = hashlib.sha256(b"tampered manifest").hexdigest()
IRIS = DatasetRef(dataset="iris", version="1", sha256=hashlib.sha256(b"iris v1 bytes").hexdigest())
T0 = 1_800_000_000.0
POISONED = hashlib.sha256(b"iris v1 bytes, poisoned").hexdigest()


class Desk:
    """A registry with actors, signing their events and handing verified ones to the state."""

    def __init__(self, roles: dict[str, tuple[str, ...]], stages: dict[str, StagePolicy] | None = None) -> None:
        self.keys = {actor: SigningKey.generate(actor) for actor in roles}
        self.policy: RegistryPolicy = policy_for_actors(
            {actor: (key.public_b64(), roles[actor]) for actor, key in self.keys.items()}, stages=stages
        )
        self.trust = self.policy.trust_store()
        self.state = RegistryState()
        #: The desk's clock (unix seconds): requests open and approvals arrive at it.
        self.now = T0

    def _verified(self, type_: str, data: BaseModel, signed_by: str) -> tuple[str, str]:
        key = self.keys[signed_by]
        env = new_event(type_, data, source=f"actor/{signed_by}").signed(key)
        return env.id, env.verify(self.trust)

    def request(
        self,
        requester: str = "alice",
        *,
        signed_by: str | None = None,
        stage: Stage = "production",
        root: str = ROOT,
    ) -> str:
        body = PromotionRequested(model="churn", version="3", stage=stage, requester=requester, root_digest=root)
        event_id, signer = self._verified("mlw.registry.promotion", body, signed_by or requester)
        self.state.record_request(event_id, body, signer, opened_at=self.now)
        return event_id

    def approve(
        self,
        request_id: str,
        approver: str,
        *,
        signed_by: str | None = None,
        stage: Stage = "production",
        version: str = "3",
    ) -> str:
        body = ApprovalGiven(request_id=request_id, model="churn", version=version, stage=stage, approver=approver)
        event_id, signer = self._verified("mlw.registry.approval", body, signed_by or approver)
        self.state.record_approval(event_id, body, signer, received_at=self.now)
        return event_id

    def demote(self, requester: str = "alice", *, version: str = "3", stage: str = "production") -> str:
        body = DemotionRequested(model="churn", version=version, stage=stage, requester=requester, reason="bad")
        event_id, signer = self._verified("mlw.registry.demotion", body, requester)
        self.state.record_request(event_id, body, signer, opened_at=self.now)
        return event_id

    def rollback(
        self, requester: str = "alice", *, version: str = "3", stage: str = "production", root: str = ROOT
    ) -> str:
        body = RollbackRequested(
            model="churn", version=version, stage=stage, requester=requester, root_digest=root, reason="v4 is bad"
        )
        event_id, signer = self._verified("mlw.registry.rollback", body, requester)
        self.state.record_request(event_id, body, signer, opened_at=self.now)
        return event_id

    def settle(self, request_id: str) -> GateDecision:
        """Decide and record the fact the decision leaves, as the wiring does."""
        decision = self.decide(request_id)
        fact = closing_fact(decision, self.state, self.now)
        if isinstance(fact, StageChange):
            self.state.record_change(fact)
        elif isinstance(fact, RequestExpired):
            self.state.record_expiry(fact)
        return decision

    def artifact(
        self,
        decision: Decision = Decision.PASS,
        *,
        root: str = ROOT,
        builder: str = "train-job-7",
        datasets: tuple[DatasetRef, ...] = (IRIS,),
        version: str = "3",
    ) -> list[str]:
        return self.state.record_artifact_verdict(
            ArtifactVerdict(
                model="churn",
                version=version,
                manifest_key=f"churn/{version}/{root[:12]}.sigstore.json",
                provenance_key=f"churn/{version}/{root[:12]}.intoto.jsonl",
                root_digest=root,
                decision=decision,
                datasets=list(datasets),
                builder=builder,
                in_reply_to="build-1",
            )
        )

    def dataset(
        self,
        decision: Decision = Decision.PASS,
        *,
        name: str = "iris",
        sha256: str = IRIS.sha256,
        label_checked: bool = True,
    ) -> list[str]:
        return self.state.record_dataset_verdict(
            DatasetVerdict(
                dataset=name,
                version="1",
                sha256=sha256,
                decision=decision,
                in_reply_to="upload-1",
                label_checked=label_checked,
            )
        )

    def decide(self, request_id: str) -> GateDecision:
        return evaluate(request_id, self.state, self.policy, now=self.now)


def stages_with(**overrides: StagePolicy) -> dict[str, StagePolicy]:
    """The default stages with some replaced or added."""
    return {**default_stages(), **overrides}


DEMO = {"alice": (ML_ENGINEER,), "bob": (REVIEWER,), "carol": (REVIEWER,), "mallory": ()}


@pytest.fixture
def desk() -> Desk:
    return Desk(dict(DEMO))


def ready(desk: Desk, requester: str = "alice") -> str:
    """A request with passing artifact and dataset verdicts, still without approvals."""
    desk.artifact()
    desk.dataset()
    return desk.request(requester)


def reasons(decision: GateDecision) -> str:
    return " | ".join(decision.reasons)


# --- the happy path ---------------------------------------------------------------------------


def test_promoted_with_two_distinct_reviewers(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "bob")
    assert desk.decide(rid).decision == "pending"
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "promoted", reasons(decision)
    assert decision.approvers == ["bob", "carol"]
    assert decision.requester == "alice"
    verdict = decision.to_verdict(in_reply_to="approval-2")
    assert verdict.decision == "promoted"
    assert verdict.request_id == rid
    assert verdict.approvers == ["bob", "carol"]


def test_pending_until_verdicts_arrive_and_record_reports_affected_requests(desk: Desk) -> None:
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    first = desk.decide(rid)
    assert first.decision == "pending"
    assert "no artifact verdict" in reasons(first)
    assert desk.artifact() == [rid]
    second = desk.decide(rid)
    assert second.decision == "pending"
    assert "no data-guard verdict for dataset iris 1" in reasons(second)
    assert desk.dataset() == [rid]
    assert desk.decide(rid).decision == "promoted"


def test_staging_needs_one_approval_and_accepts_warn_dataset(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.WARN)
    rid = desk.request(stage="staging")
    desk.approve(rid, "bob", stage="staging")
    decision = desk.decide(rid)
    assert decision.decision == "promoted", reasons(decision)
    assert "data-guard warned (accepted" in reasons(decision)


# --- the requester ----------------------------------------------------------------------------


def test_rejected_when_requester_has_no_role(desk: Desk) -> None:
    rid = ready(desk, requester="mallory")
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert "mallory may not request production" in reasons(decision)


def test_rejected_when_request_is_signed_by_another_actor(desk: Desk) -> None:
    # mallory signs with her own (valid) key a request that claims to come from alice.
    desk.artifact()
    desk.dataset()
    rid = desk.request("alice", signed_by="mallory")
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert decision.requester == "mallory"
    assert "names alice as requester but was signed by mallory" in reasons(decision)


def test_envelope_claiming_another_signer_does_not_verify(desk: Desk) -> None:
    # The other way to impersonate: set `signer: alice` but sign with mallory's key.
    body = PromotionRequested(model="churn", version="3", stage="production", requester="alice", root_digest=ROOT)
    env = new_event("mlw.registry.promotion", body, source="actor/alice").signed(desk.keys["mallory"])
    forged = env.model_copy(update={"signer": "alice"})
    with pytest.raises(SignatureError):
        forged.verify(desk.trust)


def test_unknown_signer_is_rejected() -> None:
    desk = Desk(dict(DEMO))
    desk.artifact()
    desk.dataset()
    body = PromotionRequested(model="churn", version="3", stage="production", requester="eve", root_digest=ROOT)
    desk.state.record_request("req-eve", body, "eve")
    decision = desk.decide("req-eve")
    assert decision.decision == "rejected"
    assert "eve is not an actor" in reasons(decision)


# --- approvals --------------------------------------------------------------------------------


def test_self_approval_does_not_count() -> None:
    desk = Desk({**DEMO, "alice": (ML_ENGINEER, REVIEWER)})
    rid = ready(desk)
    desk.approve(rid, "alice")
    desk.approve(rid, "bob")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == ["bob"]
    assert "alice is the requester" in reasons(decision)
    assert "1 of 2 distinct approvals" in reasons(decision)


def test_author_approval_does_not_count(desk: Desk) -> None:
    desk.artifact(builder="bob")
    desk.dataset()
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == ["carol"]
    assert "bob is the author" in reasons(decision)


def test_one_approver_approving_twice_counts_once(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "carol")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == ["carol"]
    assert "carol approved twice; counts once" in reasons(decision)


def test_redelivered_approval_event_is_recorded_once(desk: Desk) -> None:
    rid = ready(desk)
    body = ApprovalGiven(request_id=rid, model="churn", version="3", stage="production", approver="bob")
    desk.state.record_approval("appr-1", body, "bob")
    desk.state.record_approval("appr-1", body, "bob")
    assert len(desk.state.approvals(rid)) == 1
    assert "twice" not in reasons(desk.decide(rid))


def test_approver_without_reviewer_role_does_not_count(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "mallory")
    desk.approve(rid, "bob")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == ["bob"]
    assert "mallory holds no approver role" in reasons(decision)


def test_approval_signed_by_another_actor_does_not_count(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "carol", signed_by="mallory")
    desk.approve(rid, "bob")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == ["bob"]
    assert "naming carol was signed by mallory" in reasons(decision)


def test_approval_for_another_stage_or_version_does_not_count(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "bob", stage="staging")
    desk.approve(rid, "carol", version="2")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert decision.approvers == []
    assert "names churn 3 staging, not churn 3 production" in reasons(decision)


def test_approvals_of_another_request_do_not_count(desk: Desk) -> None:
    earlier = ready(desk)
    desk.approve(earlier, "bob")
    desk.approve(earlier, "carol")
    later = desk.request()
    assert desk.decide(earlier).decision == "promoted"
    assert desk.decide(later).decision == "pending"
    assert desk.decide(later).approvers == []


def test_approval_before_its_request_is_kept(desk: Desk) -> None:
    desk.artifact()
    desk.dataset()
    body = PromotionRequested(model="churn", version="3", stage="production", requester="alice", root_digest=ROOT)
    for approver in ("bob", "carol"):
        appr = ApprovalGiven(request_id="req-1", model="churn", version="3", stage="production", approver=approver)
        assert desk.state.record_approval(f"appr-{approver}", appr, approver) == []
    assert desk.state.record_request("req-1", body, "alice") == ["req-1"]
    assert desk.decide("req-1").decision == "promoted"


# --- the artifact -----------------------------------------------------------------------------


def test_rejected_when_artifact_verdict_failed(desk: Desk) -> None:
    desk.artifact(Decision.FAIL)
    desk.dataset()
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert "artifact verdict for churn 3 is fail" in reasons(decision)


def test_later_pass_does_not_launder_a_failed_artifact(desk: Desk) -> None:
    rid = ready(desk)
    desk.artifact(Decision.FAIL)
    desk.artifact(Decision.PASS)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    assert desk.decide(rid).decision == "rejected"


def test_pending_when_artifact_verdict_missing(desk: Desk) -> None:
    desk.dataset()
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "pending"
    assert "no artifact verdict for churn 3 yet" in reasons(decision)


def test_rejected_when_request_digest_differs_from_verified_artifact(desk: Desk) -> None:
    # The artifact-signer verified ROOT; the request tries to promote other (tampered) bytes.
    desk.artifact(root=ROOT)
    desk.dataset()
    rid = desk.request(root=OTHER_ROOT)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert f"root digest {OTHER_ROOT[:12]}" in reasons(decision)


# --- training datasets ------------------------------------------------------------------------


def approved(desk: Desk) -> str:
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    return rid


def test_rejected_when_training_dataset_failed(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.FAIL)
    decision = desk.decide(approved(desk))
    assert decision.decision == "rejected"
    assert "dataset iris 1: data-guard verdict is fail" in reasons(decision)


def test_production_refuses_a_warn_dataset(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.WARN)
    decision = desk.decide(approved(desk))
    assert decision.decision == "rejected"
    assert "this stage needs pass" in reasons(decision)


def test_rejected_when_trained_bytes_differ_from_checked_bytes(desk: Desk) -> None:
    # data-guard passed iris 1 at one digest; the model was trained on other (poisoned) bytes.
    desk.artifact(datasets=(DatasetRef(dataset="iris", version="1", sha256=POISONED),))
    desk.dataset(Decision.PASS, sha256=IRIS.sha256)
    decision = desk.decide(approved(desk))
    assert decision.decision == "rejected"
    assert "trained on sha256" in reasons(decision)


def test_same_bytes_failed_under_another_name_is_rejected(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.PASS)
    desk.dataset(Decision.FAIL, name="iris-copy")
    assert desk.decide(approved(desk)).decision == "rejected"


def test_production_rejects_a_dataset_whose_label_checks_did_not_run(desk: Desk) -> None:
    # A backdoored CSV uploaded without its label column passes data-guard: nothing could see it.
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    decision = desk.decide(approved(desk))
    assert decision.decision == "rejected"
    assert "dataset iris 1: data-guard's label checks did not run" in reasons(decision)


def test_label_checks_run_under_another_name_count_for_the_same_bytes(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    desk.dataset(Decision.PASS, name="iris-labelled")
    assert desk.decide(approved(desk)).decision == "promoted"


def test_staging_accepts_a_dataset_without_label_checks_by_default(desk: Desk) -> None:
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    rid = desk.request(stage="staging")
    desk.approve(rid, "bob", stage="staging")
    decision = desk.decide(rid)
    assert decision.decision == "promoted", reasons(decision)


def test_stage_policy_can_require_or_waive_label_checks() -> None:
    strict = stages_with(staging=StagePolicy(approvals=1, require_label_checks=True))
    desk = Desk(dict(DEMO), stages=strict)
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    rid = desk.request(stage="staging")
    desk.approve(rid, "bob", stage="staging")
    assert desk.decide(rid).decision == "rejected"
    lenient = stages_with(production=StagePolicy(approvals=2, require_label_checks=False))
    desk = Desk(dict(DEMO), stages=lenient)
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    assert desk.decide(approved(desk)).decision == "promoted"


def test_production_rejects_an_artifact_without_training_datasets(desk: Desk) -> None:
    # Omitting `datasets` from the build must not skip the data-guard check.
    desk.artifact(datasets=())
    decision = desk.decide(approved(desk))
    assert decision.decision == "rejected"
    assert "names no training dataset" in reasons(decision)


def test_stage_policy_can_allow_artifacts_without_datasets() -> None:
    lenient = stages_with(production=StagePolicy(approvals=2, require_datasets=False))
    desk = Desk(dict(DEMO), stages=lenient)
    desk.artifact(datasets=())
    assert desk.decide(approved(desk)).decision == "promoted"


def test_every_failing_rule_is_listed(desk: Desk) -> None:
    desk.artifact(Decision.FAIL, root=OTHER_ROOT)
    desk.dataset(Decision.FAIL)
    rid = desk.request("alice", signed_by="mallory")
    desk.approve(rid, "mallory")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    checks = [f.check for f in decision.findings]
    for check in (
        "registry.requester_signer",
        "registry.requester_role",
        "registry.artifact_verdict",
        "registry.dataset_verdict",
        "registry.approval",
        "registry.approvals_needed",
    ):
        assert check in checks
    # Blocking reasons come first.
    assert decision.findings[0].severity == "fail"


# --- state ------------------------------------------------------------------------------------


def test_state_round_trips_through_its_dict_form(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "carol")
    desk.approve(rid, "carol")
    desk.approve(rid, "bob")
    desk.artifact(Decision.FAIL)  # sticky: must survive the round trip
    desk.dataset(Decision.WARN, name="other", sha256=POISONED)
    before = desk.decide(rid)

    data = json.loads(json.dumps(desk.state.to_dict()))
    restored = RegistryState.from_dict(data)

    assert restored == desk.state
    assert restored.to_dict() == data
    assert evaluate(rid, restored, desk.policy, now=desk.now) == before
    assert before.decision == "rejected"


def test_state_from_a_foreign_dict_is_refused() -> None:
    with pytest.raises(StateError):
        RegistryState.from_dict({"format": 99, "requests": "nope"})


def test_request_id_reused_with_other_content_is_refused(desk: Desk) -> None:
    body = PromotionRequested(model="churn", version="3", stage="production", requester="alice", root_digest=ROOT)
    desk.state.record_request("req-1", body, "alice")
    assert desk.state.record_request("req-1", body, "alice") == ["req-1"]  # redelivery
    swapped = body.model_copy(update={"root_digest": OTHER_ROOT})
    with pytest.raises(ConflictingEvent):
        desk.state.record_request("req-1", swapped, "alice")
    assert desk.state.request("req-1") is not None
    assert desk.state.request("req-1").request.root_digest == ROOT  # type: ignore[union-attr]


def test_approval_id_reused_for_another_request_is_refused(desk: Desk) -> None:
    appr = ApprovalGiven(request_id="req-1", model="churn", version="3", stage="production", approver="bob")
    desk.state.record_approval("appr-1", appr, "bob")
    with pytest.raises(ConflictingEvent):
        desk.state.record_approval("appr-1", appr.model_copy(update={"request_id": "req-2"}), "bob")


def test_unknown_request_raises(desk: Desk) -> None:
    with pytest.raises(UnknownRequest) as info:
        desk.decide("nope")
    assert info.value.request_id == "nope"


# --- stages from the policy (issue 11) -------------------------------------------------------


def test_rejected_when_stage_is_not_declared(desk: Desk) -> None:
    desk.artifact()
    desk.dataset()
    rid = desk.request(stage="qa")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert "stage 'qa' is not declared" in reasons(decision)


def test_a_declared_dev_stage_applies_its_own_rules() -> None:
    desk = Desk(dict(DEMO), stages=stages_with(dev=StagePolicy(approvals=0, require_label_checks=False)))
    desk.artifact()
    desk.dataset(Decision.PASS, label_checked=False)
    rid = desk.request(stage="dev")
    decision = desk.decide(rid)
    assert decision.decision == "promoted", reasons(decision)
    assert decision.stage == "dev"


# --- expiry (issue 11) -------------------------------------------------------------------------

DAY = 24 * 3600.0


def test_pending_request_expires_after_its_stage_ttl(desk: Desk) -> None:
    rid = ready(desk)
    desk.approve(rid, "bob")
    ttl = desk.policy.stages["production"].request_ttl_s
    desk.now = T0 + ttl - 1
    assert desk.decide(rid).decision == "pending"
    desk.now = T0 + ttl
    decision = desk.decide(rid)
    assert decision.decision == "expired"
    assert decision.findings[0].check == "registry.expiry"
    assert "request expired at" in reasons(decision)
    assert decision.expires_at == T0 + ttl


def test_approval_after_expiry_does_not_count() -> None:
    desk = Desk(dict(DEMO), stages=stages_with(production=StagePolicy(request_ttl_s=60)))
    rid = ready(desk)
    desk.approve(rid, "bob")
    desk.now = T0 + 61
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "expired"
    assert decision.approvers == ["bob"]
    assert "carol's approval arrived at" in reasons(decision)


def test_approvals_in_time_promote_even_when_evaluated_later() -> None:
    desk = Desk(dict(DEMO), stages=stages_with(production=StagePolicy(request_ttl_s=60)))
    desk.artifact()
    desk.dataset()
    rid = approved(desk)
    desk.now = T0 + 3600
    assert desk.decide(rid).decision == "promoted"


def test_an_expired_request_stays_expired_when_evidence_arrives_later() -> None:
    desk = Desk(dict(DEMO), stages=stages_with(production=StagePolicy(request_ttl_s=60)))
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    desk.now = T0 + 61
    assert desk.settle(rid).decision == "expired"
    desk.artifact()
    desk.dataset()
    assert desk.decide(rid).decision == "expired"


def test_a_rejection_is_not_turned_into_an_expiry(desk: Desk) -> None:
    desk.artifact(Decision.FAIL)
    desk.dataset()
    rid = desk.request()
    desk.now = T0 + 30 * DAY
    assert desk.decide(rid).decision == "rejected"


def test_requests_recorded_before_expiry_existed_never_expire(desk: Desk) -> None:
    desk.artifact()
    desk.dataset()
    body = PromotionRequested(model="churn", version="3", stage="production", requester="alice", root_digest=ROOT)
    desk.state.record_request("old-1", body, "alice")  # no opened_at: journaled before issue 11
    desk.now = T0 + 365 * DAY
    assert desk.decide("old-1").decision == "pending"


def test_redelivered_request_keeps_its_first_opening_time(desk: Desk) -> None:
    body = PromotionRequested(model="churn", version="3", stage="production", requester="alice", root_digest=ROOT)
    desk.state.record_request("req-1", body, "alice", opened_at=T0)
    desk.state.record_request("req-1", body, "alice", opened_at=T0 + 500)  # redelivery, later
    recorded = desk.state.request("req-1")
    assert recorded is not None and recorded.opened_at == T0


# --- the verdict names exactly what to deploy (issue 11) ---------------------------------------


def test_promoted_verdict_carries_root_digest_and_signature_bundle(desk: Desk) -> None:
    desk.artifact()
    desk.dataset()
    decision = desk.decide(approved(desk))
    verdict = decision.to_verdict(in_reply_to="x")
    assert verdict.decision == "promoted"
    assert verdict.root_digest == ROOT
    assert verdict.manifest_key == f"churn/3/{ROOT[:12]}.sigstore.json"
    assert verdict.provenance_key == f"churn/3/{ROOT[:12]}.intoto.jsonl"


def test_no_bundle_named_for_a_digest_the_artifact_verdict_does_not_sign(desk: Desk) -> None:
    desk.artifact(root=OTHER_ROOT)
    desk.dataset()
    verdict = desk.decide(desk.request()).to_verdict(in_reply_to="x")
    assert verdict.root_digest == ROOT
    assert verdict.manifest_key is None and verdict.provenance_key is None


# --- current version, demotion, rollback (issue 11) --------------------------------------------


def promote(desk: Desk, version: str, root: str) -> str:
    desk.artifact(version=version, root=root)
    body = PromotionRequested(model="churn", version=version, stage="production", requester="alice", root_digest=root)
    event_id, signer = desk._verified("mlw.registry.promotion", body, "alice")
    desk.state.record_request(event_id, body, signer, opened_at=desk.now)
    desk.approve(event_id, "bob", version=version)
    desk.approve(event_id, "carol", version=version)
    assert desk.settle(event_id).decision == "promoted"
    return event_id


ROOT4 = hashlib.sha256(b"churn model v4 manifest").hexdigest()


def test_promotion_makes_the_version_current_and_a_later_one_replaces_it(desk: Desk) -> None:
    desk.dataset()
    first = promote(desk, "3", ROOT)
    current = desk.state.current("churn", "production")
    assert current is not None and (current.version, current.request_id) == ("3", first)
    promote(desk, "4", ROOT4)
    current = desk.state.current("churn", "production")
    assert current is not None and current.version == "4" and current.root_digest == ROOT4


def test_demotion_of_the_current_version_needs_the_stage_approvals(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    rid = desk.demote()
    assert desk.settle(rid).decision == "pending"
    desk.approve(rid, "alice")  # the requester cannot approve their own demotion either
    desk.approve(rid, "bob")
    assert desk.settle(rid).decision == "pending"
    desk.approve(rid, "carol")
    decision = desk.settle(rid)
    assert decision.decision == "demoted", reasons(decision)
    assert decision.root_digest == ROOT
    current = desk.state.current("churn", "production")
    assert current is not None and current.version is None and current.action == "demotion"
    # Decided once, it stays demoted (its target check is not re-run against its own effect).
    assert desk.settle(rid).decision == "demoted"


def test_demotion_of_a_version_not_current_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    promote(desk, "4", ROOT4)
    decision = desk.decide(desk.demote(version="3"))
    assert decision.decision == "rejected"
    assert "is not the current version in production (4 is)" in reasons(decision)


def test_demotion_by_someone_without_request_role_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    assert desk.decide(desk.demote("mallory")).decision == "rejected"


def test_rollback_to_a_previously_promoted_version(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    promote(desk, "4", ROOT4)
    rid = desk.rollback(version="3", root=ROOT)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.settle(rid)
    assert decision.decision == "promoted", reasons(decision)
    assert decision.action == "rollback"
    assert decision.to_verdict("x").manifest_key == f"churn/3/{ROOT[:12]}.sigstore.json"
    current = desk.state.current("churn", "production")
    assert current is not None and (current.version, current.action) == ("3", "rollback")
    assert desk.settle(rid).decision == "promoted"  # stays done once decided


def test_rollback_to_a_version_never_promoted_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "4", ROOT4)
    desk.artifact(version="3", root=ROOT)
    decision = desk.decide(desk.rollback(version="3", root=ROOT))
    assert decision.decision == "rejected"
    assert "was never promoted to production" in reasons(decision)


def test_rollback_with_other_bytes_than_were_promoted_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    promote(desk, "4", ROOT4)
    decision = desk.decide(desk.rollback(version="3", root=OTHER_ROOT))
    assert decision.decision == "rejected"
    assert "rollback names root digest" in reasons(decision)


def test_rollback_to_a_version_whose_dataset_failed_since_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    promote(desk, "4", ROOT4)
    desk.dataset(Decision.FAIL)  # a re-check found the training data bad
    rid = desk.rollback(version="3", root=ROOT)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    assert desk.decide(rid).decision == "rejected"


def test_rollback_to_the_current_version_is_rejected(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    decision = desk.decide(desk.rollback(version="3", root=ROOT))
    assert "already the current version" in reasons(decision)


def test_two_requests_for_one_stage_are_applied_in_decision_order(desk: Desk) -> None:
    desk.dataset()
    desk.artifact(version="4", root=ROOT4)
    promote(desk, "3", ROOT)
    body = PromotionRequested(model="churn", version="4", stage="production", requester="alice", root_digest=ROOT4)
    event_id, signer = desk._verified("mlw.registry.promotion", body, "alice")
    desk.state.record_request(event_id, body, signer, opened_at=desk.now)
    demotion = desk.demote(version="3")
    for approver in ("bob", "carol"):
        desk.approve(event_id, approver, version="4")
        desk.approve(demotion, approver, version="3")
    assert desk.settle(event_id).decision == "promoted"
    # v3 is no longer current: the demotion raced the promotion and lost.
    assert desk.settle(demotion).decision == "rejected"
    current = desk.state.current("churn", "production")
    assert current is not None and current.version == "4"


def test_stage_changes_and_expiries_survive_the_dict_round_trip(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    promote(desk, "4", ROOT4)
    rid = desk.rollback(version="3", root=ROOT)
    desk.now = T0 + 30 * DAY
    assert desk.settle(rid).decision == "expired"
    restored = RegistryState.from_dict(json.loads(json.dumps(desk.state.to_dict())))
    assert restored == desk.state
    restored_request = restored.request(rid)
    assert restored_request is not None and restored_request.action == "rollback"
    assert evaluate(rid, restored, desk.policy, now=desk.now).decision == "expired"
    current = restored.current("churn", "production")
    assert current is not None and current.version == "4"


# --- recall on a dataset that turned bad (issue 11) --------------------------------------------


def test_dataset_turning_fail_recalls_the_production_version_trained_on_it(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    assert recalls(desk.state, desk.policy, IRIS.sha256, now=desk.now) == []  # still pass
    desk.dataset(Decision.FAIL)  # a re-check with a new reference
    changes = recalls(desk.state, desk.policy, IRIS.sha256, now=desk.now)
    assert [(c.model, c.stage, c.version, c.replaced, c.action) for c in changes] == [
        ("churn", "production", None, "3", "recall")
    ]
    assert "iris 1" in changes[0].reason and "fail" in changes[0].reason
    desk.state.record_change(changes[0])
    current = desk.state.current("churn", "production")
    assert current is not None and current.version is None and current.current().reason == changes[0].reason
    # A redelivered verdict recalls nothing twice.
    assert recalls(desk.state, desk.policy, IRIS.sha256, now=desk.now) == []


def test_recall_leaves_stages_whose_policy_does_not_recall(desk: Desk) -> None:
    desk.dataset()
    desk.artifact()
    rid = desk.request(stage="staging")
    desk.approve(rid, "bob", stage="staging")
    assert desk.settle(rid).decision == "promoted"
    desk.dataset(Decision.FAIL)
    assert recalls(desk.state, desk.policy, IRIS.sha256, now=desk.now) == []


def test_recall_leaves_models_trained_on_other_bytes(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    desk.dataset(Decision.FAIL, name="other", sha256=POISONED)
    assert recalls(desk.state, desk.policy, POISONED, now=desk.now) == []


def test_a_recalled_version_cannot_be_rolled_back_to(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    desk.dataset(Decision.FAIL)
    for change in recalls(desk.state, desk.policy, IRIS.sha256, now=desk.now):
        desk.state.record_change(change)
    rid = desk.rollback(version="3", root=ROOT)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    assert desk.decide(rid).decision == "rejected"


def _operator_recall(desk: Desk, *, sha256: str | None = None, event_id: str = "recall-event-1") -> RecordedRecall:
    body = DatasetRecallRequested(dataset="iris", version="1", sha256=sha256, requester="olga", reason="licence")
    recorded = RecordedRecall(request_id=event_id, signer="olga", recall=body, at=desk.now)
    desk.state.record_recall(recorded)
    return recorded


def test_operator_recall_pulls_the_production_version_once_and_blocks_promotion(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    recorded = _operator_recall(desk)
    changes = dataset_recall(desk.state, desk.policy, recorded.request_id, now=desk.now)
    assert [(c.stage, c.replaced, c.action) for c in changes] == [("production", "3", "recall")]
    assert changes[0].reason == "training dataset iris 1 recalled by olga: licence"
    for change in changes:
        desk.state.record_change(change)
    assert desk.state.changes_by(recall_prefix(recorded.request_id) + "-") == changes
    # The same recall again (a redelivery) pulls nothing more.
    assert dataset_recall(desk.state, desk.policy, recorded.request_id, now=desk.now) == []
    # Nothing trained on a recalled dataset is promoted again, whatever the approvals.
    rid = desk.request()
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert any("recalled by olga: licence" in r for r in decision.reasons)


def test_operator_recall_with_a_digest_only_covers_those_bytes(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    recorded = _operator_recall(desk, sha256=POISONED)
    assert dataset_recall(desk.state, desk.policy, recorded.request_id, now=desk.now) == []


def test_operator_recall_survives_the_persisted_state(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    recorded = _operator_recall(desk)
    restored = RegistryState.from_dict(json.loads(json.dumps(desk.state.to_dict())))
    assert restored.recall(recorded.request_id) == recorded
    assert restored == desk.state


def test_operator_recall_replayed_with_other_content_is_refused(desk: Desk) -> None:
    _operator_recall(desk)
    body = DatasetRecallRequested(dataset="other", version="1", requester="olga", reason="rewritten")
    with pytest.raises(ConflictingEvent):
        desk.state.record_recall(RecordedRecall(request_id="recall-event-1", signer="olga", recall=body, at=desk.now))


@pytest.mark.parametrize(
    ("identity", "role"),
    [("carol", "approved it"), ("alice", "requested it"), ("artifact-signer", "signed the artifact verdict")],
)
def test_a_revoked_key_the_promotion_relied_on_pulls_it(desk: Desk, identity: str, role: str) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    changes = key_recalls(desk.state, desk.policy, {identity: T0 + 60}, now=desk.now)
    assert [(c.stage, c.replaced, c.action) for c in changes] == [("production", "3", "recall")]
    assert changes[0].reason.startswith(f"the signing key of {identity} (who {role}) was revoked at")
    for change in changes:
        desk.state.record_change(change)
    assert key_recalls(desk.state, desk.policy, {identity: T0 + 60}, now=desk.now) == []  # once


def test_a_revoked_key_nobody_relied_on_pulls_nothing(desk: Desk) -> None:
    desk.dataset()
    rid = promote(desk, "3", ROOT)
    desk.approve(rid, "mallory")  # came after, and never counted
    assert key_recalls(desk.state, desk.policy, {"mallory": T0 + 60, "data-guard-old": T0}, now=desk.now) == []
    assert key_recalls(desk.state, desk.policy, {}, now=desk.now) == []


def test_a_version_put_back_after_a_key_recall_can_be_pulled_again() -> None:
    desk = Desk({**DEMO, "dave": (REVIEWER,)})
    desk.dataset()
    promote(desk, "3", ROOT)
    for change in key_recalls(desk.state, desk.policy, {"carol": T0 + 60}, now=desk.now):
        desk.state.record_change(change)
    # Put back (by a request carol's key had no part in), then bob's key is revoked too.
    rid = desk.rollback(version="3", root=ROOT)
    desk.approve(rid, "bob")
    desk.approve(rid, "dave")
    assert desk.settle(rid).decision == "promoted"
    assert key_recalls(desk.state, desk.policy, {"carol": T0 + 60}, now=desk.now) == []
    again = key_recalls(desk.state, desk.policy, {"carol": T0 + 60, "bob": T0 + 90}, now=desk.now)
    assert [(c.replaced, c.stage) for c in again] == [("3", "production")]
    assert "of bob (who approved it)" in again[0].reason


@pytest.mark.parametrize("service", ["artifact-signer", "data-guard"])
def test_verdicts_signed_by_a_revoked_service_key_do_not_promote(desk: Desk, service: str) -> None:
    rid = ready(desk)
    desk.approve(rid, "bob")
    desk.approve(rid, "carol")
    desk.policy = desk.policy.model_copy(update={"revoked": frozenset({service})})
    decision = desk.decide(rid)
    assert decision.decision == "rejected"
    assert any(f"{service}'s signing key was revoked" in r for r in decision.reasons)
    assert "revoked" not in desk.policy.to_yaml()  # runtime knowledge, never written to the file


def test_artifact_verdict_turning_fail_pulls_exactly_those_bytes(desk: Desk) -> None:
    desk.dataset()
    promote(desk, "3", ROOT)
    desk.artifact(Decision.FAIL, root=OTHER_ROOT)  # a failed rebuild of other bytes: nothing
    assert artifact_recalls(desk.state, desk.policy, "churn", "3", now=desk.now) == []
    desk.artifact(Decision.FAIL)  # e.g. a locked dependency is now known vulnerable
    changes = artifact_recalls(desk.state, desk.policy, "churn", "3", now=desk.now)
    assert [(c.stage, c.replaced) for c in changes] == [("production", "3")]
    assert changes[0].reason.startswith("artifact verdict for churn 3 is now fail")
    assert artifact_recalls(desk.state, desk.policy, "churn", "4", now=desk.now) == []
