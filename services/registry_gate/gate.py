"""The promotion decision: recorded, already-verified evidence in; promoted, rejected or pending out.

The wiring verifies every envelope before it reaches this module (people's requests and approvals
against the policy's actor keys, verdicts against the service trust store) and passes the
verified signer id alongside the event. Here nothing is taken from a plain field: the signer is
the identity, and the `requester` / `approver` fields only have to agree with it.

`evaluate` lists every reason as a `Finding` whose severity says what it does to the outcome:

- `fail`: a rule is broken for good (unauthorised or forged request, failed or mismatching
  verdict) -> `rejected`;
- `warn`: something is still missing (a verdict not seen yet, too few approvals) -> `pending`;
- `info`: context that blocks nothing (an approval that does not count, and why).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, assert_never

from pydantic import Field, ValidationError

from services.registry_gate.policy import RegistryPolicy, Stage, StagePolicy
from shared.errors import MlwardenError
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    DatasetRef,
    DatasetVerdict,
    Decision,
    Finding,
    Frozen,
    PromotionRequested,
    PromotionVerdict,
    Severity,
)

GateOutcome = Literal["promoted", "rejected", "pending"]

# Finding check names, one per rule.
CHECK_STAGE = "registry.stage"
CHECK_SIGNER = "registry.requester_signer"
CHECK_REQUEST_ROLE = "registry.requester_role"
CHECK_ARTIFACT = "registry.artifact_verdict"
CHECK_DATASET = "registry.dataset_verdict"
CHECK_APPROVAL = "registry.approval"
CHECK_APPROVALS_NEEDED = "registry.approvals_needed"

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
    """A promotion request as received, with the verified signer of its envelope."""

    request_id: str = Field(description="id of the promotion event")
    signer: str = Field(description="actor whose key signed the envelope")
    request: PromotionRequested


class RecordedApproval(Frozen):
    """An approval as received, with the verified signer of its envelope."""

    event_id: str = Field(description="id of the approval event (the idempotency key)")
    signer: str = Field(description="actor whose key signed the envelope")
    approval: ApprovalGiven


class _StateDoc(Frozen):
    # The persisted form: lists, not tuple-keyed maps, so it is plain JSON.
    format: Literal[1]
    artifact_verdicts: list[ArtifactVerdict]
    dataset_verdicts: list[DatasetVerdict]
    requests: list[RecordedRequest]
    approvals: list[RecordedApproval]


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

    def record_request(self, request_id: str, request: PromotionRequested, signer: str) -> list[str]:
        """Record a promotion request whose envelope `signer` signed (a redelivery is a no-op)."""
        recorded = RecordedRequest(request_id=request_id, signer=signer, request=request)
        old = self._requests.setdefault(request_id, recorded)
        if old != recorded:
            raise ConflictingEvent("promotion request", request_id)
        return [request_id]

    def record_approval(self, event_id: str, approval: ApprovalGiven, signer: str) -> list[str]:
        """Record an approval whose envelope `signer` signed; the same event twice counts once.

        Approvals that arrive before their request are kept until it does.
        """
        recorded = RecordedApproval(event_id=event_id, signer=signer, approval=approval)
        for approvals in self._approvals.values():
            old = approvals.get(event_id)
            if old is not None and old != recorded:
                raise ConflictingEvent("approval", event_id)
        self._approvals.setdefault(approval.request_id, {})[event_id] = recorded
        return [approval.request_id] if approval.request_id in self._requests else []

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

    def approvals(self, request_id: str) -> list[RecordedApproval]:
        """Every distinct approval event naming `request_id`, in arrival order."""
        return list(self._approvals.get(request_id, {}).values())

    # --- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for a key-value bucket); `from_dict` restores an equal state."""
        doc = _StateDoc(
            format=_STATE_FORMAT,
            artifact_verdicts=list(self._artifacts.values()),
            dataset_verdicts=list(self._datasets.values()),
            requests=list(self._requests.values()),
            approvals=[a for per_request in self._approvals.values() for a in per_request.values()],
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
            state.record_request(req.request_id, req.request, req.signer)
        for appr in doc.approvals:
            state.record_approval(appr.event_id, appr.approval, appr.signer)
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistryState):
            return NotImplemented
        return self.to_dict() == other.to_dict()


class GateDecision(Frozen):
    """registry-gate's decision on one promotion request, with every reason."""

    request_id: str = Field(description="id of the promotion event")
    model: str
    version: str
    stage: Stage
    requester: str = Field(description="the verified signer of the request")
    decision: GateOutcome
    reasons: list[str] = Field(description="one sentence per finding, blocking ones first")
    approvers: list[str] = Field(description="distinct approvers that counted, in order")
    findings: list[Finding] = Field(description="the same reasons with check name, severity, evidence")

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
        )


class _Findings:
    """Collects findings; the severity encodes reject (fail) / wait (warn) / note (info)."""

    def __init__(self) -> None:
        self.items: list[Finding] = []

    def _add(self, severity: Severity, check: str, message: str, evidence: dict[str, str | int | bool]) -> None:
        self.items.append(Finding(check=check, severity=severity, message=message, evidence=evidence))

    def reject(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.FAIL, check, message, evidence)

    def wait(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.WARN, check, message, evidence)

    def note(self, check: str, message: str, **evidence: str | int | bool) -> None:
        self._add(Severity.INFO, check, message, evidence)

    def outcome(self) -> GateOutcome:
        severities = {f.severity for f in self.items}
        if Severity.FAIL in severities:
            return "rejected"
        if Severity.WARN in severities:
            return "pending"
        return "promoted"

    def ordered(self) -> Iterator[Finding]:
        order = {Severity.FAIL: 0, Severity.WARN: 1, Severity.INFO: 2}
        return iter(sorted(self.items, key=lambda f: order[f.severity]))


def evaluate(request_id: str, state: RegistryState, policy: RegistryPolicy) -> GateDecision:
    """Decide promotion request `request_id` from the recorded evidence and the policy."""
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
        return _decision(request_id, recorded, out, [])

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
    # (3) The artifact: artifact-signer passed exactly the bytes being promoted.
    artifact = _check_artifact(request, state, out)
    # (4) Its training data: data-guard passed every dataset, by content digest.
    if artifact is not None:
        _check_datasets(artifact, stage, request.stage, state, out)
    # (5) Two-person rule: enough distinct, authorised approvers, none of them the author.
    approvers = _count_approvals(request_id, recorded, artifact, stage, policy, state, out)

    outcome = out.outcome()
    if outcome == "promoted":
        out.note(
            CHECK_APPROVALS_NEEDED,
            f"approved by {', '.join(approvers) or 'nobody'} ({stage.approvals} needed)",
            approvals=len(approvers),
            needed=stage.approvals,
        )
    return _decision(request_id, recorded, out, approvers)


def _decision(request_id: str, recorded: RecordedRequest, out: _Findings, approvers: list[str]) -> GateDecision:
    findings = list(out.ordered())
    request = recorded.request
    return GateDecision(
        request_id=request_id,
        model=request.model,
        version=request.version,
        stage=request.stage,
        requester=recorded.signer,
        decision=out.outcome(),
        reasons=[f.message for f in findings],
        approvers=approvers,
        findings=findings,
    )


def _check_artifact(request: PromotionRequested, state: RegistryState, out: _Findings) -> ArtifactVerdict | None:
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
        if why_not is None:
            counted.append(who)
        else:
            out.note(CHECK_APPROVAL, why_not, approval=rec.event_id, signer=who, counted=False)
    if len(counted) < stage.approvals:
        out.wait(
            CHECK_APPROVALS_NEEDED,
            f"{len(counted)} of {stage.approvals} distinct approvals for {request.stage}",
            approvals=len(counted),
            needed=stage.approvals,
        )
    return counted
