"""The promotion decision: recorded, already-verified evidence in; promoted, rejected or pending out.

The wiring verifies every envelope before it reaches this module (people's requests and approvals
against the policy's actor keys, verdicts against the service trust store) and passes the
verified signer id alongside the event. Here nothing is taken from a plain field: the signer is
the identity, and the `requester` / `approver` fields only have to agree with it.

Requests are promotions, demotions (take the current version out of a stage) and rollbacks (put
back a version promoted to the stage before); all three follow the stage's approval rules, and a
request still pending after its stage's `request_ttl_s` expires (issue 11). What a decided request
changed is recorded as a `StageChange`, so the current version per stage is a replay of facts.

`evaluate` lists every reason as a `Finding` whose severity says what it does to the outcome:

- `fail`: a rule is broken for good (unauthorised or forged request, failed or mismatching
  verdict) -> `rejected`;
- `warn`: something is still missing (a verdict not seen yet, too few approvals) -> `pending`;
- `info`: context that blocks nothing (an approval that does not count, and why).

`evaluate` is pure: the clock comes in as `now`, so expiry is tested without waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, assert_never

from pydantic import Field, ValidationError, model_validator

from services.registry_gate.policy import AppliedPolicy, RegistryPolicy, Stage, StagePolicy
from shared.errors import MlwardenError
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    DatasetRecallRequested,
    DatasetRef,
    DatasetVerdict,
    Decision,
    DemotionRequested,
    Finding,
    Frozen,
    PromotionRequested,
    PromotionVerdict,
    RegistryAction,
    RollbackRequested,
    Severity,
    StageAction,
    StageCurrent,
)

GateOutcome = Literal["promoted", "demoted", "rejected", "pending", "expired"]
AnyRequest = PromotionRequested | DemotionRequested | RollbackRequested
_REQUEST_MODELS: dict[str, type[Frozen]] = {
    "promotion": PromotionRequested,
    "demotion": DemotionRequested,
    "rollback": RollbackRequested,
}

# Finding check names, one per rule.
CHECK_STAGE = "registry.stage"
CHECK_SIGNER = "registry.requester_signer"
CHECK_REQUEST_ROLE = "registry.requester_role"
CHECK_ARTIFACT = "registry.artifact_verdict"
CHECK_DATASET = "registry.dataset_verdict"
CHECK_APPROVAL = "registry.approval"
CHECK_APPROVALS_NEEDED = "registry.approvals_needed"
CHECK_EXPIRY = "registry.expiry"
CHECK_TARGET = "registry.target_version"

_STATE_FORMAT = 1


class UnknownRequest(MlwardenError, LookupError):
    """`evaluate` was asked about a promotion request the state has not recorded."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"unknown promotion request {request_id!r}")
        self.request_id = request_id


class ConflictingEvent(MlwardenError, ValueError):
    """An event id already recorded with different content (a replay that tries to rewrite it)."""

    def __init__(self, kind: str, event_id: str) -> None:
        super().__init__(f"{kind} {event_id!r} was already recorded with different content")
        self.kind = kind
        self.event_id = event_id


class StateError(MlwardenError, ValueError):
    """A persisted registry state that cannot be loaded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecordedRequest(Frozen):
    """A promotion, demotion or rollback request as received, with the verified signer of its envelope."""

    request_id: str = Field(description="id of the request event")
    signer: str = Field(description="actor whose key signed the envelope")
    action: RegistryAction = Field(default="promotion", description="what the request asks for")
    request: AnyRequest
    opened_at: float | None = Field(
        default=None,
        description="unix seconds the request counts from: the earlier of its signed time and its arrival"
        " (None: recorded before requests expired, issue 11; it never expires)",
    )

    @model_validator(mode="before")
    @classmethod
    def _request_by_action(cls, data: Any) -> Any:
        # A rollback and a promotion have the same fields: the action, not the shape, says which.
        if isinstance(data, dict) and isinstance(data.get("request"), dict):
            model = _REQUEST_MODELS.get(str(data.get("action", "promotion")))
            if model is not None:
                return {**data, "request": model.model_validate(data["request"])}
        return data

    def same_event(self, other: RecordedRequest) -> bool:
        """Whether `other` is this event again (a redelivery arrives later: its time differs)."""
        return (self.request_id, self.signer, self.action, self.request) == (
            other.request_id,
            other.signer,
            other.action,
            other.request,
        )


class RecordedApproval(Frozen):
    """An approval as received, with the verified signer of its envelope."""

    event_id: str = Field(description="id of the approval event (the idempotency key)")
    signer: str = Field(description="actor whose key signed the envelope")
    approval: ApprovalGiven
    received_at: float | None = Field(
        default=None,
        description="unix seconds registry-gate received it, by its own clock: an approver cannot backdate"
        " it past the request's expiry (None: recorded before expiry existed)",
    )

    def same_event(self, other: RecordedApproval) -> bool:
        """Whether `other` is this event again (a redelivery arrives later: its time differs)."""
        return (self.event_id, self.signer, self.approval) == (other.event_id, other.signer, other.approval)


class StageChange(Frozen):
    """What a decided request changed: `version` is now current in `stage` (None: nothing is)."""

    request_id: str = Field(description="the request (or recall) that made the change (one change per id)")
    action: StageAction
    model: str
    stage: str
    version: str | None = Field(description="the version now current; None after a demotion")
    root_digest: str = Field(description="root digest of the version promoted or demoted")
    at: float = Field(description="unix seconds registry-gate decided it")
    seq: int = Field(ge=0, description="order of the changes (the journal's keys are unordered)")
    reason: str = Field(default="", description="why, for a recall")
    replaced: str | None = Field(default=None, description="the version current before (demotions, recalls)")
    relied_on: list[str] = Field(
        default_factory=list,
        description="the verified actors the decision relied on: requester, then the approvers that counted"
        " (empty in changes recorded before issue 11's key recall)",
    )
    policy_version: int | None = Field(
        default=None, description="the registry policy version it was decided under (None: before versions)"
    )

    def current(self) -> StageCurrent:
        """The status form."""
        return StageCurrent(
            model=self.model,
            stage=self.stage,
            version=self.version,
            root_digest=self.root_digest,
            action=self.action,
            request_id=self.request_id,
            since=self.at,
            reason=self.reason,
            policy_version=self.policy_version,
        )


class RequestExpired(Frozen):
    """A request that was still pending at its expiry: closed for good."""

    request_id: str
    at: float = Field(description="unix seconds registry-gate decided it expired")


class RecordedRecall(Frozen):
    """An operator's dataset recall as received, with the verified signer of its envelope (issue 11)."""

    request_id: str = Field(description="id of the recall event (the idempotency key)")
    signer: str = Field(description="actor whose key signed the envelope (holds the recall-officer role)")
    recall: DatasetRecallRequested
    at: float = Field(description="unix seconds registry-gate received it")

    def covers(self, ref: DatasetRef, judged: list[str]) -> bool:
        """Whether training dataset `ref` is what this recall names: those bytes under any name
        when a digest is given, else that name and version (whatever its digest) and the bytes
        data-guard judged under it (`judged`)."""
        wanted = self.recall
        if wanted.sha256 is not None:
            return ref.sha256 == wanted.sha256
        return (ref.dataset, ref.version) == (wanted.dataset, wanted.version) or ref.sha256 in judged

    def same_event(self, other: RecordedRecall) -> bool:
        """Whether `other` is this event again (a redelivery arrives later: its time differs)."""
        return (self.request_id, self.signer, self.recall) == (other.request_id, other.signer, other.recall)


class _StateDoc(Frozen):
    # The persisted form: lists, not tuple-keyed maps, so it is plain JSON.
    format: Literal[1]
    artifact_verdicts: list[ArtifactVerdict]
    dataset_verdicts: list[DatasetVerdict]
    requests: list[RecordedRequest]
    approvals: list[RecordedApproval]
    changes: list[StageChange] = Field(default_factory=list)
    expired: list[RequestExpired] = Field(default_factory=list)
    recalls: list[RecordedRecall] = Field(default_factory=list)
    policies: list[AppliedPolicy] = Field(default_factory=list)


def _rank(decision: Decision) -> int:
    # How much a verdict weighs when two verdicts cover the same thing: the worse one stays, so a
    # later `pass` can never launder an earlier `fail` on the same bytes. `error` ("could not
    # check") says nothing about the content, so any real decision replaces it.
    match decision:
        case Decision.ERROR:
            return 0
        case Decision.PASS:
            return 1
        case Decision.WARN:
            return 2
        case Decision.FAIL:
            return 3
        case _:
            assert_never(decision)


class RegistryState:
    """Everything registry-gate has seen: verified verdicts, requests and approvals (in memory).

    Every `record_*` method is idempotent and returns the ids of the promotion requests whose
    decision may have changed, so the caller knows what to `evaluate` again.
    """

    def __init__(self) -> None:
        self._artifacts: dict[tuple[str, str], ArtifactVerdict] = {}
        self._datasets: dict[tuple[str, str, str], DatasetVerdict] = {}
        self._requests: dict[str, RecordedRequest] = {}
        self._approvals: dict[str, dict[str, RecordedApproval]] = {}
        self._changes: dict[str, StageChange] = {}
        self._expired: dict[str, RequestExpired] = {}
        self._recalls: dict[str, RecordedRecall] = {}
        self._policies: dict[int, AppliedPolicy] = {}

    # --- recording --------------------------------------------------------------------------

    def record_artifact_verdict(self, verdict: ArtifactVerdict) -> list[str]:
        """Record a verified artifact-signer verdict; the worse of two for one (model, version) stays."""
        key = (verdict.model, verdict.version)
        old = self._artifacts.get(key)
        if old is None or _rank(verdict.decision) >= _rank(old.decision):
            self._artifacts[key] = verdict
        return [rid for rid, rec in self._requests.items() if (rec.request.model, rec.request.version) == key]

    def record_dataset_verdict(self, verdict: DatasetVerdict) -> list[str]:
        """Record a verified data-guard verdict; the worse of two for the same bytes stays."""
        key = (verdict.dataset, verdict.version, verdict.sha256)
        old = self._datasets.get(key)
        if old is None or _rank(verdict.decision) >= _rank(old.decision):
            self._datasets[key] = verdict
        affected = []
        for rid, rec in self._requests.items():
            artifact = self._artifacts.get((rec.request.model, rec.request.version))
            if artifact is not None and any(
                ref.sha256 == verdict.sha256 or (ref.dataset, ref.version) == key[:2] for ref in artifact.datasets
            ):
                affected.append(rid)
        return affected

    def record_request(
        self, request_id: str, request: AnyRequest, signer: str, *, opened_at: float | None = None
    ) -> list[str]:
        """Record a request whose envelope `signer` signed (a redelivery is a no-op: the first
        arrival's `opened_at` stays)."""
        action: RegistryAction = (
            "demotion"
            if isinstance(request, DemotionRequested)
            else "rollback"
            if isinstance(request, RollbackRequested)
            else "promotion"
        )
        recorded = RecordedRequest(
            request_id=request_id, signer=signer, action=action, request=request, opened_at=opened_at
        )
        old = self._requests.setdefault(request_id, recorded)
        if not old.same_event(recorded):
            raise ConflictingEvent(f"{old.action} request", request_id)
        return [request_id]

    def record_approval(
        self, event_id: str, approval: ApprovalGiven, signer: str, *, received_at: float | None = None
    ) -> list[str]:
        """Record an approval whose envelope `signer` signed; the same event twice counts once
        (and keeps its first arrival time).

        Approvals that arrive before their request are kept until it does.
        """
        recorded = RecordedApproval(event_id=event_id, signer=signer, approval=approval, received_at=received_at)
        for approvals in self._approvals.values():
            old = approvals.get(event_id)
            if old is not None:
                if not old.same_event(recorded):
                    raise ConflictingEvent("approval", event_id)
                return [approval.request_id] if approval.request_id in self._requests else []
        self._approvals.setdefault(approval.request_id, {})[event_id] = recorded
        return [approval.request_id] if approval.request_id in self._requests else []

    def record_change(self, change: StageChange) -> list[str]:
        """Record what a decided request changed (once per request); return the open requests
        for the same model and stage, whose target checks may now read differently."""
        self._changes.setdefault(change.request_id, change)
        return [
            rid
            for rid, rec in self._requests.items()
            if (rec.request.model, rec.request.stage) == (change.model, change.stage) and not self.closed(rid)
        ]

    def record_expiry(self, fact: RequestExpired) -> list[str]:
        """Record that a request expired; it stays expired."""
        self._expired.setdefault(fact.request_id, fact)
        return [fact.request_id] if fact.request_id in self._requests else []

    def record_recall(self, recorded: RecordedRecall) -> list[str]:
        """Record an operator's verified dataset recall (once per event id); return the open
        requests whose artifact was trained on it (they can no longer be promoted)."""
        old = self._recalls.setdefault(recorded.request_id, recorded)
        if not old.same_event(recorded):
            raise ConflictingEvent("recall", recorded.request_id)
        return [rid for rid in self.trained_on(recorded) if not self.closed(rid)]

    def record_policy(self, applied: AppliedPolicy) -> list[str]:
        """Record a policy version (once per version: a version is never rewritten); return the
        open requests, which the new rules may decide differently."""
        old = self._policies.setdefault(applied.version, applied)
        if old != applied:
            raise ConflictingEvent(f"policy version {applied.version}", applied.request_id or "policy-file")
        return [rid for rid in self._requests if not self.closed(rid)]

    def policy(self) -> AppliedPolicy | None:
        """The policy version in force: the highest recorded (None before the first)."""
        return self._policies[max(self._policies)] if self._policies else None

    def policy_applied_by(self, request_id: str) -> AppliedPolicy | None:
        """The version change event `request_id` applied, if it did (a redelivery applies nothing)."""
        return next((p for p in self._policies.values() if p.request_id == request_id), None)

    def policies(self) -> list[AppliedPolicy]:
        """Every recorded policy version, oldest first."""
        return [self._policies[v] for v in sorted(self._policies)]

    def trained_on(self, recorded: RecordedRecall) -> list[str]:
        """The requests whose artifact names a training dataset `recorded` covers."""
        judged = self.dataset_digests(recorded.recall.dataset, recorded.recall.version)
        found = []
        for rid, rec in self._requests.items():
            artifact = self._artifacts.get((rec.request.model, rec.request.version))
            if artifact is not None and any(recorded.covers(ref, judged) for ref in artifact.datasets):
                found.append(rid)
        return found

    # --- reading ----------------------------------------------------------------------------

    def request(self, request_id: str) -> RecordedRequest | None:
        """The recorded request `request_id`, if any."""
        return self._requests.get(request_id)

    def request_ids(self) -> list[str]:
        """Every recorded request id, oldest first."""
        return list(self._requests)

    def artifact_verdict(self, model: str, version: str) -> ArtifactVerdict | None:
        """The artifact verdict that counts for (model, version), if one was seen."""
        return self._artifacts.get((model, version))

    def dataset_verdicts(self, sha256: str) -> list[DatasetVerdict]:
        """Every data-guard verdict on the bytes with digest `sha256`, under any name."""
        return [v for (_, _, digest), v in self._datasets.items() if digest == sha256]

    def dataset_digests(self, dataset: str, version: str) -> list[str]:
        """The digests data-guard has judged for (dataset, version)."""
        return [digest for (name, ver, digest) in self._datasets if (name, ver) == (dataset, version)]

    def approval(self, event_id: str) -> RecordedApproval | None:
        """The recorded approval event `event_id`, if any."""
        for approvals in self._approvals.values():
            if event_id in approvals:
                return approvals[event_id]
        return None

    def approvals(self, request_id: str) -> list[RecordedApproval]:
        """Every distinct approval event naming `request_id`, in arrival order."""
        return list(self._approvals.get(request_id, {}).values())

    def change_for(self, request_id: str) -> StageChange | None:
        """What request `request_id` changed, once it was decided."""
        return self._changes.get(request_id)

    def expiry(self, request_id: str) -> RequestExpired | None:
        """When request `request_id` expired, if it did."""
        return self._expired.get(request_id)

    def recall(self, request_id: str) -> RecordedRecall | None:
        """The recall event `request_id`, if it was recorded."""
        return self._recalls.get(request_id)

    def recall_of(self, ref: DatasetRef) -> RecordedRecall | None:
        """The first recorded recall that covers training dataset `ref`, if any."""
        for recorded in self._recalls.values():
            if recorded.covers(ref, self.dataset_digests(recorded.recall.dataset, recorded.recall.version)):
                return recorded
        return None

    def changes_by(self, prefix: str) -> list[StageChange]:
        """The stage changes whose id starts with `prefix` (one recall's), in order."""
        return sorted((c for c in self._changes.values() if c.request_id.startswith(prefix)), key=lambda c: c.seq)

    def closed(self, request_id: str) -> bool:
        """Whether the request is done (changed a stage) or expired."""
        return request_id in self._changes or request_id in self._expired

    def next_seq(self) -> int:
        """The sequence number of the next stage change."""
        return max((c.seq for c in self._changes.values()), default=-1) + 1

    def history(self, model: str, stage: str) -> list[StageChange]:
        """Every change of (model, stage), oldest first."""
        return sorted((c for c in self._changes.values() if (c.model, c.stage) == (model, stage)), key=lambda c: c.seq)

    def current(self, model: str, stage: str) -> StageChange | None:
        """The latest change of (model, stage): its version is the current one."""
        changes = self.history(model, stage)
        return changes[-1] if changes else None

    def currents(self) -> list[StageChange]:
        """The latest change of every (model, stage) that has one."""
        latest: dict[tuple[str, str], StageChange] = {}
        for change in sorted(self._changes.values(), key=lambda c: c.seq):
            latest[(change.model, change.stage)] = change
        return list(latest.values())

    # --- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for a key-value bucket); `from_dict` restores an equal state."""
        doc = _StateDoc(
            format=_STATE_FORMAT,
            artifact_verdicts=list(self._artifacts.values()),
            dataset_verdicts=list(self._datasets.values()),
            requests=list(self._requests.values()),
            approvals=[a for per_request in self._approvals.values() for a in per_request.values()],
            changes=sorted(self._changes.values(), key=lambda c: c.seq),
            expired=list(self._expired.values()),
            recalls=list(self._recalls.values()),
            policies=self.policies(),
        )
        return doc.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistryState:
        """Restore a state written by `to_dict`; raise StateError if it is not one."""
        try:
            doc = _StateDoc.model_validate(data)
        except ValidationError as exc:
            raise StateError(f"not a registry state (format {_STATE_FORMAT}): {exc.error_count()} errors") from exc
        state = cls()
        # Replaying through the record methods keeps one code path for the merge rules.
        for artifact in doc.artifact_verdicts:
            state.record_artifact_verdict(artifact)
        for dataset in doc.dataset_verdicts:
            state.record_dataset_verdict(dataset)
        for req in doc.requests:
            state.record_request(req.request_id, req.request, req.signer, opened_at=req.opened_at)
        for appr in doc.approvals:
            state.record_approval(appr.event_id, appr.approval, appr.signer, received_at=appr.received_at)
        for change in doc.changes:
            state.record_change(change)
        for fact in doc.expired:
            state.record_expiry(fact)
        for recorded in doc.recalls:
            state.record_recall(recorded)
        for applied in doc.policies:
            state.record_policy(applied)
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistryState):
            return NotImplemented
        return self.to_dict() == other.to_dict()


class GateDecision(Frozen):
    """registry-gate's decision on one request, with every reason."""

    request_id: str = Field(description="id of the request event")
    action: StageAction = Field(default="promotion", description="what the request asks for")
    model: str
    version: str
    stage: str
    requester: str = Field(description="the verified signer of the request")
    decision: GateOutcome
    reasons: list[str] = Field(description="one sentence per finding, blocking ones first")
    approvers: list[str] = Field(description="distinct approvers that counted, in order")
    findings: list[Finding] = Field(description="the same reasons with check name, severity, evidence")
    root_digest: str = Field(default="", description="root digest of the artifact the request is about")
    manifest_key: str | None = Field(default=None, description="its signature bundle in mlw-artifacts")
    provenance_key: str | None = Field(default=None, description="its provenance statement in mlw-artifacts")
    expires_at: float | None = Field(default=None, description="unix seconds the request expires")
    policy_version: int | None = Field(default=None, description="the registry policy version it was made under")

    def to_verdict(self, in_reply_to: str) -> PromotionVerdict:
        """The `mlw.verdict.promotion` body, answering event `in_reply_to`."""
        return PromotionVerdict(
            model=self.model,
            version=self.version,
            stage=self.stage,
            decision=self.decision,
            reasons=self.reasons,
            requester=self.requester,
            approvers=self.approvers,
            request_id=self.request_id,
            in_reply_to=in_reply_to,
            action=self.action,
            root_digest=self.root_digest,
            manifest_key=self.manifest_key,
            provenance_key=self.provenance_key,
            expires_at=self.expires_at,
            policy_version=self.policy_version,
        )


class _Findings:
    """Collects findings; the severity encodes reject (fail) / wait (warn) / note (info)."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self.expired = False

    def _add(self, severity: Severity, check: str, message: str, evidence: dict[str, str | int | bool]) -> None:
        self.items.append(Finding(check=check, severity=severity, message=message, evidence=evidence))

    def reject(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.FAIL, check, message, evidence)

    def wait(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.WARN, check, message, evidence)

    def note(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.INFO, check, message, evidence)

    def expire(self, message: str, **evidence: str | int | bool) -> None:
        self.expired = True
        self._add(Severity.FAIL, CHECK_EXPIRY, message, evidence)

    def outcome(self, action: StageAction) -> GateOutcome:
        severities = {f.severity for f in self.items}
        if self.expired:
            return "expired"
        if Severity.FAIL in severities:
            return "rejected"
        if Severity.WARN in severities:
            return "pending"
        return "demoted" if action in ("demotion", "recall") else "promoted"

    def ordered(self) -> Iterator[Finding]:
        order = {Severity.FAIL: 0, Severity.WARN: 1, Severity.INFO: 2}
        return iter(sorted(self.items, key=lambda f: order[f.severity]))


def closing_fact(decision: GateDecision, state: RegistryState, now: float) -> StageChange | RequestExpired | None:
    """The fact a final decision leaves, if it is the first one for its request: a stage change
    (promoted, rolled back, demoted) or an expiry. The caller records and journals it."""
    if state.closed(decision.request_id):
        return None
    if decision.decision in ("promoted", "demoted"):
        return StageChange(
            request_id=decision.request_id,
            action=decision.action,
            model=decision.model,
            stage=decision.stage,
            version=None if decision.action == "demotion" else decision.version,
            root_digest=decision.root_digest,
            at=now,
            seq=state.next_seq(),
            replaced=decision.version if decision.action == "demotion" else None,
            relied_on=[decision.requester, *decision.approvers],
            policy_version=decision.policy_version,
        )
    if decision.decision == "expired":
        return RequestExpired(request_id=decision.request_id, at=now)
    return None


def _pull(
    state: RegistryState,
    policy: RegistryPolicy,
    why: Callable[[StageChange, ArtifactVerdict], str | None],
    *,
    prefix: str,
    now: float,
) -> list[StageChange]:
    """The recall changes for every model version currently in a stage whose policy says
    `recall` and for which `why` (given the change that put it there and its artifact verdict)
    names a fact that turned bad. One id per (cause, placement): a redelivered cause recalls
    nothing twice, and a version put back later can be pulled again."""
    changes: list[StageChange] = []
    seq = state.next_seq()
    for current in state.currents():
        if current.version is None:
            continue
        stage = policy.stage(current.stage)
        if stage is None or not stage.recall:
            continue
        artifact = state.artifact_verdict(current.model, current.version)
        reason = why(current, artifact) if artifact is not None else None
        if reason is None:
            continue
        recall_id = f"{prefix}-{current.model}-{current.version}-{current.stage}@{current.seq}"
        if state.change_for(recall_id) is not None:
            continue
        changes.append(
            StageChange(
                request_id=recall_id,
                action="recall",
                model=current.model,
                stage=current.stage,
                version=None,
                root_digest=current.root_digest,
                at=now,
                seq=seq,
                reason=reason,
                replaced=current.version,
                policy_version=policy.version or None,
            )
        )
        seq += 1
    return changes


def recalls(state: RegistryState, policy: RegistryPolicy, sha256: str, *, now: float) -> list[StageChange]:
    """The stage changes a `fail` on the dataset bytes `sha256` calls for (issue 11, recall):
    every model version currently in a stage whose policy says `recall`, trained on those
    bytes, is taken out. Pure: the caller records, journals, publishes and alerts."""
    judged = state.dataset_verdicts(sha256)
    if not judged or max(_rank(v.decision) for v in judged) < _rank(Decision.FAIL):
        return []
    bad = next(v for v in judged if v.decision is Decision.FAIL)
    reason = f"training dataset {bad.dataset} {bad.version} (sha256 {sha256[:12]}…) is now judged fail"
    return _pull(
        state,
        policy,
        lambda _, artifact: reason if any(ref.sha256 == sha256 for ref in artifact.datasets) else None,
        prefix=f"recall-{sha256[:16]}",
        now=now,
    )


def artifact_recalls(
    state: RegistryState, policy: RegistryPolicy, model: str, version: str, *, now: float
) -> list[StageChange]:
    """The stage changes an artifact verdict that turned `fail` calls for (issue 11: e.g. a
    dependency it locks is now known vulnerable): (model, version) leaves every `recall` stage
    it holds with exactly the judged bytes. Pure, as `recalls`."""
    verdict = state.artifact_verdict(model, version)
    if verdict is None or verdict.decision is not Decision.FAIL:
        return []
    failed = [f.message for f in verdict.findings if f.severity is Severity.FAIL]
    reason = f"artifact verdict for {model} {version} is now fail: " + (
        "; ".join(failed[:3]) + (f" (+{len(failed) - 3} more)" if len(failed) > 3 else "") or "no reason given"
    )

    def why(current: StageChange, artifact: ArtifactVerdict) -> str | None:
        # Only the bytes judged: a failed rebuild under the same version pulls nothing.
        same = (current.model, current.version, current.root_digest) == (model, version, artifact.root_digest)
        return reason if same else None

    return _pull(state, policy, why, prefix="recall-artifact", now=now)


def recall_prefix(request_id: str) -> str:
    """The id prefix of the stage changes an operator's recall event `request_id` makes."""
    return f"recall-op-{request_id}"


def dataset_recall(state: RegistryState, policy: RegistryPolicy, request_id: str, *, now: float) -> list[StageChange]:
    """The stage changes an operator's recorded dataset recall `request_id` calls for: every
    model version currently in a `recall` stage trained on that dataset is taken out, with the
    operator's reason (issue 11). Pure, as `recalls`."""
    recorded = state.recall(request_id)
    if recorded is None:
        raise UnknownRequest(request_id)
    wanted = recorded.recall
    judged = state.dataset_digests(wanted.dataset, wanted.version)
    which = f"{wanted.dataset} {wanted.version}" + (f" (sha256 {wanted.sha256[:12]}…)" if wanted.sha256 else "")
    reason = f"training dataset {which} recalled by {recorded.signer}: {wanted.reason}"
    return _pull(
        state,
        policy,
        lambda _, artifact: reason if any(recorded.covers(ref, judged) for ref in artifact.datasets) else None,
        prefix=recall_prefix(request_id),
        now=now,
    )


def relied_on_keys(change: StageChange, artifact: ArtifactVerdict, state: RegistryState) -> dict[str, str]:
    """Whose signatures a placement relied on, and for what: artifact-signer (the artifact
    verdict and its bundle), data-guard (the training data's verdicts), the requester and the
    approvers that counted (`relied_on`; for changes recorded before it, every signer of the
    request and its approvals)."""
    keys = {"artifact-signer": "signed the artifact verdict"}
    if artifact.datasets:
        keys["data-guard"] = "judged the training data"
    actors = change.relied_on
    if not actors:
        recorded = state.request(change.request_id)
        actors = [recorded.signer] if recorded is not None else []
        actors += [a.signer for a in state.approvals(change.request_id)]
    for i, actor in enumerate(actors):
        keys.setdefault(actor, "requested it" if i == 0 else "approved it")
    return keys


def key_recalls(
    state: RegistryState, policy: RegistryPolicy, revoked: Mapping[str, float], *, now: float
) -> list[StageChange]:
    """The stage changes revoked signing keys call for (issue 11): every model version currently
    in a `recall` stage whose placement relied on a signature of an identity in `revoked`
    (identity -> unix seconds of its revocation) is taken out. A revoked key is taken as
    compromised: what it vouched for before its revocation is not trusted either. Pure."""
    if not revoked:
        return []

    def why(current: StageChange, artifact: ArtifactVerdict) -> str | None:
        for identity, role in relied_on_keys(current, artifact, state).items():
            at = revoked.get(identity)
            if at is not None:
                return f"the signing key of {identity} (who {role}) was revoked at {_when(at)}"
        return None

    return _pull(state, policy, why, prefix="recall-key", now=now)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate(request_id: str, state: RegistryState, policy: RegistryPolicy, *, now: float) -> GateDecision:
    """Decide request `request_id` from the recorded evidence and the policy, at unix time `now`."""
    recorded = state.request(request_id)
    if recorded is None:
        raise UnknownRequest(request_id)
    request, signer = recorded.request, recorded.signer
    out = _Findings()
    stage = policy.stage(request.stage)
    if stage is None:
        # (0) Only the stages the policy declares exist (issue 11): nothing else can be checked.
        out.reject(
            CHECK_STAGE,
            f"stage {request.stage!r} is not declared in the registry policy ({', '.join(policy.stages)})",
            stage=request.stage,
        )
        return _decision(
            recorded, out, [], root_digest=_root_of(recorded, state), artifact=None, expires_at=None, policy=policy
        )
    expires_at = recorded.opened_at + stage.request_ttl_s if recorded.opened_at is not None else None

    # (1) The identity is the key that signed the envelope, never the `requester` field.
    if signer != request.requester:
        out.reject(
            CHECK_SIGNER,
            f"request names {request.requester} as requester but was signed by {signer}",
            requester=request.requester,
            signer=signer,
        )
    # (2) RBAC: the signer must hold a role allowed to request this stage.
    if signer not in policy.actors:
        out.reject(CHECK_REQUEST_ROLE, f"{signer} is not an actor in the registry policy", actor=signer)
    elif not policy.may_request(signer, request.stage):
        out.reject(
            CHECK_REQUEST_ROLE,
            f"{signer} may not request {request.stage} (needs one of {', '.join(stage.request_roles)})",
            actor=signer,
            roles=",".join(policy.roles_of(signer)),
        )
    artifact: ArtifactVerdict | None
    match recorded.action:
        case "promotion" | "rollback":
            assert not isinstance(request, DemotionRequested)
            if recorded.action == "rollback":
                # (2b) A rollback only puts back what this stage once held, with the same bytes.
                _check_rollback_target(recorded, request, state, out)
            # (3) The artifact: artifact-signer passed exactly the bytes being promoted.
            artifact = _check_artifact(request, state, out)
            # (3b) ... with a key that is still trusted: a revoked key is taken as compromised,
            # so what it signed before its revocation does not count either (issue 11).
            _check_revoked_signers(artifact, policy, out)
            # (4) Its training data: data-guard passed every dataset, by content digest.
            if artifact is not None:
                _check_datasets(artifact, stage, request.stage, state, out)
        case "demotion":
            # (2b) Only the version currently in the stage can be taken out of it.
            _check_demotion_target(recorded, state, out)
            artifact = state.artifact_verdict(request.model, request.version)
        case _:
            assert_never(recorded.action)
    # (5) Two-person rule: enough distinct, authorised approvers, none of them the author,
    # each received before the request expired.
    approvers = _count_approvals(request_id, recorded, artifact, stage, policy, state, out, expires_at)

    # (6) Expiry (issue 11): a request still waiting at its deadline is closed for good.
    expired = state.expiry(request_id)
    if expired is not None:
        out.expire(f"request expired at {_when(expired.at)} before it was approved", expired_at=_when(expired.at))
    elif out.outcome(recorded.action) == "pending" and expires_at is not None and now >= expires_at:
        out.expire(
            f"request expired at {_when(expires_at)}: still pending after {stage.request_ttl_s:g} s",
            expired_at=_when(expires_at),
            ttl_s=int(stage.request_ttl_s),
        )
    if out.outcome(recorded.action) in ("promoted", "demoted"):
        out.note(
            CHECK_APPROVALS_NEEDED,
            f"approved by {', '.join(approvers) or 'nobody'} ({stage.approvals} needed)",
            approvals=len(approvers),
            needed=stage.approvals,
        )
    return _decision(
        recorded,
        out,
        approvers,
        root_digest=_root_of(recorded, state),
        artifact=artifact,
        expires_at=expires_at,
        policy=policy,
    )


def _root_of(recorded: RecordedRequest, state: RegistryState) -> str:
    request = recorded.request
    if not isinstance(request, DemotionRequested):
        return request.root_digest
    # A demotion names a version; the digest is the one it was promoted to the stage with.
    for change in reversed(state.history(request.model, request.stage)):
        if change.version == request.version:
            return change.root_digest
    return ""


def _decision(
    recorded: RecordedRequest,
    out: _Findings,
    approvers: list[str],
    *,
    root_digest: str,
    artifact: ArtifactVerdict | None,
    expires_at: float | None,
    policy: RegistryPolicy,
) -> GateDecision:
    findings = list(out.ordered())
    request = recorded.request
    # The bundle is named only when it signs exactly the digest decided on (issue 11: a deploy
    # bot verifies the bytes it deploys against it).
    bundle = artifact if artifact is not None and root_digest and artifact.root_digest == root_digest else None
    return GateDecision(
        request_id=recorded.request_id,
        action=recorded.action,
        model=request.model,
        version=request.version,
        stage=request.stage,
        requester=recorded.signer,
        decision=out.outcome(recorded.action),
        reasons=[f.message for f in findings],
        approvers=approvers,
        findings=findings,
        root_digest=root_digest,
        manifest_key=bundle.manifest_key if bundle is not None else None,
        provenance_key=bundle.provenance_key if bundle is not None else None,
        expires_at=expires_at,
        policy_version=policy.version or None,
    )


def _check_rollback_target(
    recorded: RecordedRequest, request: PromotionRequested | RollbackRequested, state: RegistryState, out: _Findings
) -> None:
    if state.change_for(recorded.request_id) is not None:
        return  # decided already: it is the current version because of this very request
    history = state.history(request.model, request.stage)
    before = [c for c in history if c.version == request.version and c.action != "demotion"]
    name = f"{request.model} {request.version}"
    if not before:
        out.reject(
            CHECK_TARGET,
            f"{name} was never promoted to {request.stage}: a rollback only puts back an earlier version",
            version=request.version,
        )
        return
    if all(c.root_digest != request.root_digest for c in before):
        out.reject(
            CHECK_TARGET,
            f"rollback names root digest {request.root_digest[:12]}… but {name} was promoted to {request.stage} "
            f"as {before[-1].root_digest[:12]}…",
            requested=request.root_digest,
            promoted=before[-1].root_digest,
        )
    current = history[-1]
    if current.version == request.version:
        out.reject(CHECK_TARGET, f"{name} is already the current version in {request.stage}", version=request.version)


def _check_revoked_signers(artifact: ArtifactVerdict | None, policy: RegistryPolicy, out: _Findings) -> None:
    if artifact is None:
        return
    signers = ["artifact-signer"] + (["data-guard"] if artifact.datasets else [])
    for service in signers:
        if service in policy.revoked:
            out.reject(
                CHECK_ARTIFACT if service == "artifact-signer" else CHECK_DATASET,
                f"{service}'s signing key was revoked: the verdicts it signed no longer count",
                revoked=service,
            )


def _check_demotion_target(recorded: RecordedRequest, state: RegistryState, out: _Findings) -> None:
    if state.change_for(recorded.request_id) is not None:
        return  # decided already: the version is out because of this very request
    request = recorded.request
    current = state.current(request.model, request.stage)
    if current is None or current.version != request.version:
        now_there = current.version if current is not None and current.version else "nothing"
        out.reject(
            CHECK_TARGET,
            f"{request.model} {request.version} is not the current version in {request.stage} ({now_there} is)",
            version=request.version,
            current=now_there,
        )


def _check_artifact(
    request: PromotionRequested | RollbackRequested, state: RegistryState, out: _Findings
) -> ArtifactVerdict | None:
    name = f"{request.model} {request.version}"
    verdict = state.artifact_verdict(request.model, request.version)
    if verdict is None:
        out.wait(CHECK_ARTIFACT, f"no artifact verdict for {name} yet", model=request.model, version=request.version)
        return None
    if verdict.decision is not Decision.PASS:
        # warn and error are not pass either: only a clean, signed manifest is promoted.
        out.reject(
            CHECK_ARTIFACT,
            f"artifact verdict for {name} is {verdict.decision.value}",
            decision=verdict.decision.value,
        )
    if verdict.root_digest != request.root_digest:
        out.reject(
            CHECK_ARTIFACT,
            f"request promotes root digest {request.root_digest[:12]}… but the artifact verdict for {name} "
            f"is for {verdict.root_digest[:12] or '(none)'}…",
            requested=request.root_digest,
            verified=verdict.root_digest,
        )
    return verdict


def _check_datasets(
    artifact: ArtifactVerdict, stage: StagePolicy, stage_name: Stage, state: RegistryState, out: _Findings
) -> None:
    if not artifact.datasets and stage.require_datasets:
        out.reject(
            CHECK_DATASET,
            f"artifact {artifact.model} {artifact.version} names no training dataset; "
            f"{stage_name} needs data provenance",
        )
    for ref in artifact.datasets:
        _check_dataset(ref, stage, state, out)


def _check_dataset(ref: DatasetRef, stage: StagePolicy, state: RegistryState, out: _Findings) -> None:
    name = f"dataset {ref.dataset} {ref.version}"
    # (4a) An operator recalled it (issue 11): nothing trained on it is promoted again.
    recalled = state.recall_of(ref)
    if recalled is not None:
        out.reject(
            CHECK_DATASET,
            f"{name} was recalled by {recalled.signer}: {recalled.recall.reason}",
            dataset=ref.dataset,
            recall=recalled.request_id,
        )
    # Judged by content: any verdict on these bytes counts, and the worst one wins (poison
    # found under one name is poison under every name).
    judged = state.dataset_verdicts(ref.sha256)
    if not judged:
        other = [d for d in state.dataset_digests(ref.dataset, ref.version) if d]
        if other:
            out.reject(
                CHECK_DATASET,
                f"{name} was trained on sha256 {ref.sha256[:12]}… but data-guard checked {other[0][:12]}…",
                dataset=ref.dataset,
                trained=ref.sha256,
                checked=other[0],
            )
        else:
            out.wait(CHECK_DATASET, f"no data-guard verdict for {name} yet", dataset=ref.dataset, sha256=ref.sha256)
        return
    worst = max(judged, key=lambda v: _rank(v.decision))
    # Without labels the label-noise and backdoor checks cannot run, and a pass says nothing about
    # poisoned labels (issue 8: a backdoored CSV passed with its label column simply omitted).
    # Any verdict on these bytes that ran them counts: the worst decision still governs below.
    # (Which column the model trained on is not in the verdicts; the gate cannot check that.)
    if stage.require_label_checks and worst.decision is not Decision.ERROR and not any(v.label_checked for v in judged):
        out.reject(
            CHECK_DATASET,
            f"{name}: data-guard's label checks did not run (no label column); this stage needs them",
            dataset=ref.dataset,
            sha256=ref.sha256,
        )
    match worst.decision:
        case Decision.PASS:
            return
        case Decision.WARN:
            if stage.accept_warn_datasets:
                out.note(CHECK_DATASET, f"{name}: data-guard warned (accepted for this stage)", dataset=ref.dataset)
            else:
                out.reject(CHECK_DATASET, f"{name}: data-guard warned; this stage needs pass", dataset=ref.dataset)
        case Decision.FAIL:
            out.reject(CHECK_DATASET, f"{name}: data-guard verdict is fail", dataset=ref.dataset)
        case Decision.ERROR:
            out.reject(CHECK_DATASET, f"{name}: data-guard could not check it (error)", dataset=ref.dataset)
        case _:
            assert_never(worst.decision)


def _count_approvals(
    request_id: str,
    recorded: RecordedRequest,
    artifact: ArtifactVerdict | None,
    stage: StagePolicy,
    policy: RegistryPolicy,
    state: RegistryState,
    out: _Findings,
    expires_at: float | None,
) -> list[str]:
    request = recorded.request
    # Both the claimed and the proven requester are excluded, so a forged request cannot make
    # its real author an eligible approver of it.
    requesters = {request.requester, recorded.signer}
    builder = artifact.builder if artifact is not None else ""
    counted: list[str] = []
    for rec in state.approvals(request_id):
        approval, who = rec.approval, rec.signer
        why_not: str | None = None
        if who != approval.approver:
            why_not = f"an approval naming {approval.approver} was signed by {who}"
        elif (approval.model, approval.version, approval.stage) != (request.model, request.version, request.stage):
            why_not = (
                f"{who}'s approval names {approval.model} {approval.version} {approval.stage}, "
                f"not {request.model} {request.version} {request.stage}"
            )
        elif who in requesters:
            why_not = f"{who} is the requester and cannot approve their own request"
        elif builder and who == builder:
            why_not = f"{who} is the author (built {request.model} {request.version}) and cannot approve it"
        elif not policy.may_approve(who, request.stage):
            why_not = f"{who} holds no approver role for {request.stage} ({', '.join(stage.approver_roles)})"
        elif who in counted:
            why_not = f"{who} approved twice; counts once"
        elif expires_at is not None and rec.received_at is not None and rec.received_at > expires_at:
            why_not = f"{who}'s approval arrived at {_when(rec.received_at)}, after the request expired"
        if why_not is None:
            counted.append(who)
        else:
            out.note(CHECK_APPROVAL, why_not, approval=rec.event_id, signer=who, counted=False)
    if len(counted) < stage.approvals:
        out.wait(
            CHECK_APPROVALS_NEEDED,
            f"{len(counted)} of {stage.approvals} distinct approvals for {request.stage}"
            + (f" (expires {_when(expires_at)})" if expires_at is not None else ""),
            approvals=len(counted),
            needed=stage.approvals,
        )
    return counted
