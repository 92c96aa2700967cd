"""Every event, verdict, alert and request body on the bus: one frozen pydantic model each.

These are the `data` of a CloudEvents envelope (see `shared.envelope`). No service keeps
its own copy: producers in any language follow the JSON schemas generated from here
(`mlwarden schemas`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256")]
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="an identifier: letters, digits, '.', '_', '-'",
    ),
]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("number must be finite (no NaN or infinity)")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


class Frozen(BaseModel):
    """Base of every schema: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- shared vocabulary -------------------------------------------------------------------


class Decision(StrEnum):
    """Outcome of a check: pass, warn (weaker evidence), fail, or error (could not check)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"


class Severity(StrEnum):
    """How much one finding weighs on the decision."""

    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


class Sensitivity(StrEnum):
    """Data classification levels, from least to most protected."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


class Finding(Frozen):
    """One piece of evidence behind a verdict."""

    check: str = Field(description="name of the check that produced it, e.g. 'outliers.robust_z'")
    severity: Severity = Field(description="how much it weighs on the decision")
    message: str = Field(description="one human sentence")
    rows: list[int] = Field(default_factory=list, description="0-based data rows it flags (capped)")
    count: int = Field(default=0, ge=0, description="how many items it flags in all")
    evidence: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="numbers behind the finding (rates, thresholds, names)"
    )


def decision_from(findings: Iterable[Finding]) -> Decision:
    """The verdict findings imply: fail if any fails, warn if any warns, else pass."""
    severities = {finding.severity for finding in findings}
    if Severity.FAIL in severities:
        return Decision.FAIL
    if Severity.WARN in severities:
        return Decision.WARN
    return Decision.PASS


class ObjectRef(Frozen):
    """Where bulk data lives: a key in a JetStream object store, or a local file/folder."""

    kind: Literal["object", "file"] = Field(description="'object' store or local 'file' path")
    bucket: str | None = Field(default=None, description="object store bucket (kind=object)")
    key: str | None = Field(default=None, description="object name in the bucket (kind=object)")
    path: str | None = Field(default=None, description="absolute or relative path (kind=file)")

    def describe(self) -> str:
        """A short human form: 'obj://bucket/key' or the path."""
        return f"obj://{self.bucket}/{self.key}" if self.kind == "object" else str(self.path)


class DatasetRef(Frozen):
    """A dataset version as other events cite it."""

    dataset: Name = Field(description="dataset name")
    version: str = Field(min_length=1, max_length=64, description="dataset version")
    sha256: Sha256Hex = Field(description="digest of the dataset bytes")


# --- producer events (stream MLW_EVENTS) --------------------------------------------------


class DatasetUploaded(Frozen):
    """`mlw.dataset.uploaded`: a dataset version is ready to be checked."""

    dataset: Name = Field(description="dataset name")
    version: str = Field(min_length=1, max_length=64, description="dataset version")
    location: ObjectRef = Field(description="where the bytes are")
    sha256: Sha256Hex = Field(description="digest the uploader claims; data-guard re-hashes")
    format: Literal["csv", "parquet", "npz"] = Field(description="file format")
    label_column: str | None = Field(default=None, description="column holding the label")
    sensitivity: Sensitivity = Field(default=Sensitivity.INTERNAL, description="classification")
    uploader: str = Field(min_length=1, max_length=128, description="principal who uploaded")
    allowed_readers: list[str] = Field(
        default_factory=list, description="explicit allow-list of principals who may read it"
    )
    reference: ObjectRef | None = Field(
        default=None,
        description="where the reference's bytes are; data-guard uses them only when their digest is one it judged pass"
        " or one pinned in its policy",
    )
    reference_sha256: Sha256Hex | None = Field(
        default=None, description="digest of the reference: what data-guard looks up (required with `reference`)"
    )


class ModelBuilt(Frozen):
    """`mlw.model.built`: a training job produced an artifact to hash, scan and sign."""

    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="model version")
    artifact: ObjectRef = Field(description="artifact file or folder")
    lockfile: ObjectRef | None = Field(default=None, description="dependency lock file")
    datasets: list[DatasetRef] = Field(default_factory=list, description="training datasets")
    builder: str = Field(min_length=1, max_length=128, description="who or what built it")
    source_commit: str | None = Field(default=None, max_length=64, description="VCS commit")
    builder_isolation: str | None = Field(
        default=None, max_length=128, description="how the builder was isolated (e.g. ephemeral-vm), for provenance"
    )


class PromotionRequested(Frozen):
    """`mlw.registry.promotion`: an actor asks to promote a model version; signed by the actor."""

    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="model version")
    stage: Name = Field(description="target stage: one the registry policy declares (e.g. staging, production)")
    requester: Name = Field(description="actor id; must match the signing key's owner")
    root_digest: Sha256Hex = Field(description="artifact root digest being promoted")
    reason: str = Field(default="", max_length=2000, description="free text")


class DemotionRequested(Frozen):
    """`mlw.registry.demotion`: an actor asks to take a model version out of a stage (nothing is
    current there afterwards); signed by the actor, approved like a promotion to that stage."""

    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="the version currently in the stage")
    stage: Name = Field(description="stage to take it out of")
    requester: Name = Field(description="actor id; must match the signing key's owner")
    reason: str = Field(min_length=1, max_length=2000, description="why (audited)")


class RollbackRequested(Frozen):
    """`mlw.registry.rollback`: an actor asks to put back a version that was promoted to the stage
    before; signed by the actor, approved and checked like a promotion to that stage."""

    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="the earlier version to put back")
    stage: Name = Field(description="stage to roll back")
    requester: Name = Field(description="actor id; must match the signing key's owner")
    root_digest: Sha256Hex = Field(description="root digest that version was promoted with")
    reason: str = Field(min_length=1, max_length=2000, description="why (audited)")


class DatasetRecallRequested(Frozen):
    """`mlw.registry.recall`: an operator recalls a dataset version (issue 11); signed by an actor
    holding the `recall-officer` role. registry-gate takes every model version trained on it out of
    the stages whose policy says `recall`, and refuses to promote one again."""

    dataset: Name = Field(description="dataset name, as the artifact verdicts cite it")
    version: str = Field(min_length=1, max_length=64, description="dataset version")
    sha256: Sha256Hex | None = Field(
        default=None, description="only the bytes with this digest (default: every digest of that version)"
    )
    requester: Name = Field(description="actor id; must match the signing key's owner")
    reason: str = Field(min_length=1, max_length=2000, description="why (audited, shown by `registry status`)")


class PolicyChangeRequested(Frozen):
    """`mlw.registry.policy`: an operator publishes a new registry policy (issue 11); signed by an
    actor holding the `policy-admin` role. registry-gate validates it and applies it as the next
    version, or refuses it with every problem listed (the version in force stays); it answers on
    `mlw.verdict.policy` either way."""

    document: str = Field(
        min_length=1, max_length=65536, description="the whole policy, YAML (or JSON), as in registry-policy.yaml"
    )
    requester: Name = Field(description="actor id; must match the signing key's owner")
    reason: str = Field(min_length=1, max_length=2000, description="why (audited, shown by `registry status`)")
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="apply only while this version is in force (two operators cannot overwrite each other unseen)",
    )


class ApprovalGiven(Frozen):
    """`mlw.registry.approval`: a reviewer approves a promotion, demotion or rollback request;
    signed by the reviewer."""

    request_id: str = Field(min_length=1, max_length=64, description="id of the promotion, demotion or rollback event")
    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="model version, as in the request")
    stage: Name = Field(description="stage of the request approved")
    approver: Name = Field(description="actor id; must match the signing key's owner")
    comment: str = Field(default="", max_length=2000, description="free text")


# --- verdicts and alerts (stream MLW_VERDICTS), signed by the emitting service ------------


class DatasetVerdict(Frozen):
    """`mlw.verdict.dataset`: data-guard's decision on one dataset upload."""

    dataset: Name
    version: str
    sha256: str = Field(description="digest data-guard computed (empty if unreadable)")
    decision: Decision
    findings: list[Finding] = Field(default_factory=list)
    rows: int = Field(default=0, ge=0, description="rows checked")
    flagged_rows: int = Field(default=0, ge=0, description="distinct rows flagged")
    uploader: str = Field(default="", description="principal who uploaded")
    in_reply_to: str = Field(description="id of the upload event")
    label_checked: bool = Field(
        default=False,
        description=(
            "True only when the label checks (label noise, backdoor triggers, label-conflicting"
            " duplicates) ran; False without a label column, and in verdicts from before this field"
        ),
    )


class ArtifactVerdict(Frozen):
    """`mlw.verdict.artifact`: artifact-signer's signed manifest reference and decision."""

    model: Name
    version: str
    root_digest: str = Field(description="digest over the manifest's file list (empty on error)")
    decision: Decision
    findings: list[Finding] = Field(default_factory=list)
    manifest_key: str | None = Field(default=None, description="object in mlw-artifacts")
    files: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
    datasets: list[DatasetRef] = Field(default_factory=list)
    builder: str = ""
    in_reply_to: str
    provenance_key: str | None = Field(
        default=None, description="object in mlw-artifacts: signed SLSA provenance statement (same root digest)"
    )
    checks_key: str | None = Field(
        default=None, description="object in mlw-artifacts: signed scan and dependency results (same root digest)"
    )


#: What a registry request asks for: a version into a stage, out of it, or an earlier one back.
RegistryAction = Literal["promotion", "demotion", "rollback"]
#: What changed a stage: a request, or a recall (registry-gate itself, when a fact a promotion
#: relied on turned bad, issue 11).
StageAction = Literal["promotion", "demotion", "rollback", "recall"]


class PromotionVerdict(Frozen):
    """`mlw.verdict.promotion`: registry-gate's decision on a promotion, demotion or rollback request."""

    model: Name
    version: str
    stage: str
    decision: Literal["promoted", "demoted", "rejected", "pending", "expired"] = Field(
        description="promoted (also a rollback done), demoted, rejected, pending, or expired (not approved in time)"
    )
    reasons: list[str] = Field(default_factory=list, description="every reason, also when promoted")
    requester: str = ""
    approvers: list[str] = Field(default_factory=list)
    request_id: str
    in_reply_to: str
    action: StageAction = Field(
        default="promotion", description="what the request asked for, or `recall` (registry-gate pulled it)"
    )
    root_digest: str = Field(
        default="", description="root digest of the artifact decided on: a deploy bot verifies exactly these bytes"
    )
    manifest_key: str | None = Field(
        default=None, description="object in mlw-artifacts: the signature bundle over that root digest"
    )
    provenance_key: str | None = Field(
        default=None, description="object in mlw-artifacts: the signed provenance statement (same root digest)"
    )
    expires_at: float | None = Field(
        default=None, description="unix seconds after which the request can no longer be approved"
    )
    policy_version: int | None = Field(
        default=None, description="the registry policy version the decision was made under (None: before versions)"
    )


class RecalledVersion(Frozen):
    """A model version a recall took out of one stage."""

    model: Name
    version: str
    stage: str
    root_digest: str = Field(default="", description="root digest it had been promoted with")


class RecallVerdict(Frozen):
    """`mlw.verdict.recall`: registry-gate's answer to a recall request: `recalled` (with every
    model version it took out, possibly none) or `rejected` (unsigned, forged or unauthorised)."""

    dataset: Name
    version: str
    sha256: str | None = Field(default=None, description="the digest the request was limited to, if any")
    decision: Literal["recalled", "rejected"]
    reasons: list[str] = Field(default_factory=list, description="why it was rejected, or the recall's reason")
    requester: str = Field(description="the verified signer; for a rejection, who the request claimed")
    request_id: str = Field(description="id of the recall request event")
    in_reply_to: str
    recalled: list[RecalledVersion] = Field(default_factory=list, description="what the recall took out")
    policy_version: int | None = Field(
        default=None, description="the registry policy version it was decided under (None: before versions)"
    )


class PolicyVerdict(Frozen):
    """`mlw.verdict.policy`: registry-gate's answer to a policy change: `applied` as `version`, or
    `rejected` with every problem (unsigned, forged, role-less, stale or malformed)."""

    decision: Literal["applied", "rejected"]
    version: int = Field(ge=1, description="the version in force now: the new one, or the unchanged one")
    sha256: Sha256Hex = Field(description="sha256 of the submitted document's UTF-8 bytes")
    previous_version: int | None = Field(default=None, description="the version an applied change replaced")
    problems: list[str] = Field(default_factory=list, description="every reason it was refused")
    requester: str = Field(description="the verified signer; for a refused signature, who the change claimed")
    reason: str = Field(default="", description="the change's reason")
    request_id: str = Field(description="id of the policy change event")
    in_reply_to: str


class PolicyInForce(Frozen):
    """The registry policy registry-gate applies now."""

    version: int = Field(ge=1, description="1 for the initial policy file, then +1 per applied change")
    sha256: str = Field(description="sha256 of the policy document's UTF-8 bytes")
    applied_by: str = Field(description="the actor who applied it, or `policy-file` for version 1")
    request_id: str | None = Field(default=None, description="the change event's id (None for the file)")
    reason: str = Field(default="", description="the change's reason")
    since: float = Field(description="unix seconds registry-gate applied it")


class AdmissionVerdict(Frozen):
    """`mlw.verdict.admission`: a denied serving admission (allowed ones are not published)."""

    client: str = Field(description="client id, or 'anonymous'")
    model: str
    decision: Literal["allow", "deny"]
    reason: str
    count: int = Field(default=1, ge=1, description="denials coalesced into this event")


class Alert(Frozen):
    """`mlw.alert.<service>`: something suspicious that a human should see."""

    kind: str = Field(description="e.g. 'abuse.volume', 'forged_verdict', 'extraction'")
    severity: Severity
    message: str
    client: str | None = None
    model: str | None = None
    evidence: dict[str, float | int | str | bool] = Field(default_factory=dict)


class DeadLetter(Frozen):
    """`mlw.deadletter.<service>`: a message that can never be processed, kept with the reason."""

    service: str
    original_subject: str
    reason: str
    payload_b64: str = Field(description="first bytes of the message, base64 (capped)")
    payload_size: int = Field(ge=0)
    payload_sha256: Sha256Hex
    deliveries: int = Field(default=1, ge=1)
    stream_seq: int | None = None
    count: int = Field(default=1, ge=1, description="rejections of this kind coalesced into this letter")


# --- serving traffic ---------------------------------------------------------------------


class AdmitRequest(Frozen):
    """Body of the `mlw.serving.admit` request a model server sends before running a model."""

    api_key: str = Field(min_length=1, max_length=256, description="the client's API key")
    model: Name = Field(description="model to call")
    inputs: list[dict[str, float | None]] = Field(
        min_length=1, max_length=1024, description="feature name -> value, one dict per row"
    )


class AdmitReply(Frozen):
    """Reply to `mlw.serving.admit`."""

    allowed: bool
    reason: str = Field(description="'ok' or why it was denied")
    client: str | None = None
    retry_after: float | None = Field(default=None, description="seconds, when rate limited")
    problems: list[str] = Field(default_factory=list, description="input validation problems")


class PredictionRecord(Frozen):
    """One served prediction as the model server logs it."""

    client: str = Field(min_length=1, max_length=128)
    features: dict[str, float | None]
    prediction: float | int | str
    confidence: FiniteFloat | None = Field(default=None, ge=0.0, le=1.0)
    time: float | None = Field(default=None, description="unix seconds")


class PredictionBatch(Frozen):
    """`mlw.prediction.logged`: many prediction records in one message, for throughput."""

    model: Name
    records: list[PredictionRecord] = Field(min_length=1, max_length=10_000)


# --- audit queries -----------------------------------------------------------------------


class AuditQuery(Frozen):
    """Body of `mlw.audit.query`: filters are ANDed; newest first; cursor pagination."""

    since: float | None = Field(default=None, description="unix seconds, inclusive")
    until: float | None = Field(default=None, description="unix seconds, exclusive")
    service: str | None = None
    type: str | None = Field(default=None, description="event type, e.g. mlw.verdict.dataset")
    subject: str | None = Field(default=None, description="CloudEvents subject, e.g. model:churn:3")
    actor: str | None = None
    decision: str | None = None
    client: str | None = Field(default=None, description="serving client id")
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: int | None = Field(default=None, description="return entries older than this seq")


class AuditEntry(Frozen):
    """One row of the audit trail as queries return it."""

    seq: int
    event_id: str
    type: str
    source: str
    subject: str | None
    service: str | None
    actor: str | None
    decision: str | None
    time: float
    recorded_at: float
    entry_hash: str
    trace_id: str | None = Field(
        default=None,
        description=(
            "W3C trace id of the event (from its signed traceparent, else derived from its id):"
            " an upload, its verdict and their audit rows share one"
        ),
    )
    event: dict[str, Any]


class AuditPage(Frozen):
    """Reply to `mlw.audit.query`."""

    entries: list[AuditEntry]
    next_cursor: int | None = None


class HealthReply(Frozen):
    """Reply to `mlw.health.<service>`: the service's event loop is alive and connected."""

    service: str = Field(description="the service that answered")
    uptime_s: float = Field(ge=0, description="seconds since this instance started")
    processed: int = Field(ge=0, description="messages this instance processed and acked")
    dead_letters: int = Field(ge=0, description="messages this instance dead-lettered")


class ErrorReply(Frozen):
    """Reply to any request that was refused."""

    error: str
    detail: str = ""


class RegistryStatusRequest(Frozen):
    """Body of `mlw.registry.status`: where does a model version stand?"""

    model: Name | None = Field(default=None, description="every model when omitted")
    version: str | None = Field(default=None, description="all versions when omitted")


class StageCurrent(Frozen):
    """The version of one model currently in one stage, and how it got there."""

    model: Name
    stage: str
    version: str | None = Field(description="None once demoted and nothing replaced it")
    root_digest: str = Field(default="", description="root digest it was promoted with")
    action: StageAction = Field(description="the request that put it there (or took it out), or a recall")
    request_id: str = Field(description="that request's event id")
    since: float = Field(description="unix seconds when registry-gate decided it")
    reason: str = Field(default="", description="why, for a recall (the fact that turned bad)")
    policy_version: int | None = Field(
        default=None, description="the registry policy version it was decided under (None: before versions)"
    )


class RegistryStatus(Frozen):
    """Reply to `mlw.registry.status`: the latest decision on each request, the current version per
    stage, and the requests still pending."""

    promotions: list[PromotionVerdict] = Field(description="latest decision on every matching request")
    current: list[StageCurrent] = Field(default_factory=list, description="current version per (model, stage)")
    pending: list[PromotionVerdict] = Field(default_factory=list, description="requests still open")
    policy: PolicyInForce | None = Field(default=None, description="the registry policy version in force")


class ArtifactVerifyRequest(Frozen):
    """Body of `mlw.artifact.verify`: re-hash an artifact and check it against its signed manifest."""

    model: Name
    version: str = Field(min_length=1, max_length=64)
    path: str | None = Field(default=None, description="where the artifact is now (default: as built)")


class ArtifactVerifyReply(Frozen):
    """Reply to `mlw.artifact.verify`."""

    ok: bool
    root_digest: str = ""
    signer: str = ""
    problems: list[str] = Field(default_factory=list, description="each changed/added/removed file")


class SchemaRegistration(Frozen):
    """`mlw.serving.schema` request body: register a model's input feature schema (operator)."""

    model: Name
    features: list[dict[str, Any]] = Field(description="{name, min, max, required} per feature")


# --- audit-log proofs and checkpoints (issue 3; format in docs/audit-proofs.md) ----------


class AuditCheckpoint(Frozen):
    """audit-log's signed statement that its first `tree_size` entries have RFC 9162 root `root_hash`."""

    origin: str = Field(min_length=1, max_length=256, description="which log: `mlwarden/audit-log` by default")
    tree_size: int = Field(ge=0, description="number of entries covered (leaf indices 0 .. tree_size-1)")
    root_hash: Sha256Hex = Field(description="RFC 9162 Merkle tree head of those entries, hex")
    timestamp_ms: int = Field(ge=0, description="when it was signed, unix milliseconds")
    key_id: str = Field(min_length=1, max_length=128, description="signer id in the trust store (audit-log)")
    signature: str = Field(description="base64 Ed25519 signature over the checkpoint note (docs/audit-proofs.md)")


class AuditProofRequest(Frozen):
    """Body of `mlw.audit.proof`: an inclusion proof for one entry, by event id or leaf index."""

    event_id: str | None = Field(default=None, max_length=256)
    leaf_index: int | None = Field(default=None, ge=0)


class AuditInclusionProof(Frozen):
    """Reply to `mlw.audit.proof`: everything a third party needs to check one entry offline."""

    format: Literal["mlwarden-audit-inclusion/v1"] = "mlwarden-audit-inclusion/v1"
    event_id: str
    leaf_index: int = Field(ge=0, description="seq - 1")
    tree_size: int = Field(ge=1, description="the checkpoint's tree size")
    leaf_input: str = Field(description="base64 of the exact leaf bytes (canonical JSON of the entry)")
    inclusion_path: list[Sha256Hex] = Field(description="RFC 9162 PATH(leaf_index, D[tree_size]), leaf upwards")
    checkpoint: AuditCheckpoint


class AuditEquivocation(Frozen):
    """`mlw.audit.equivocation` (an entry audit-log writes itself, never published): an event id
    that arrived again with different content. The first copy stays where it is; this entry
    keeps the second as evidence (issue 8)."""

    event_id: str = Field(description="the envelope id both copies claim")
    first_seq: int = Field(ge=1, description="seq of the entry holding the first copy")
    first_sha256: Sha256Hex = Field(description="SHA-256 of the first copy's body as received")
    second_sha256: Sha256Hex = Field(description="SHA-256 of the second copy's body as received")
    differs_in: list[str] = Field(description="top-level envelope members whose values differ")
    second_body: str = Field(description="the second copy's body exactly as received")


class AuditCheckpointRequest(Frozen):
    """Body of `mlw.audit.checkpoint`: the latest checkpoint, optionally proven consistent with an older size."""

    from_size: int | None = Field(default=None, ge=0, description="also return PROOF(from_size, latest)")
    fresh: bool = Field(default=False, description="sign a new checkpoint covering every stored entry first")


class AuditCheckpointReply(Frozen):
    """Reply to `mlw.audit.checkpoint`."""

    checkpoint: AuditCheckpoint
    consistency_path: list[Sha256Hex] = Field(default_factory=list, description="RFC 9162 consistency proof")


# --- dataset access (data-guard) ----------------------------------------------------------


class DataAccessRequested(Frozen):
    """`mlw.dataset.access`: a principal asks to read a dataset version, for a purpose; signed by
    the principal. Approvals and MFA are separate signed events (`DataAccessApproved`): nothing
    the requester writes here grants anything."""

    principal: str = Field(min_length=1, max_length=128, description="who wants to read; must be the signer")
    dataset: Name = Field(description="dataset name")
    version: str = Field(min_length=1, max_length=64, description="dataset version")
    purpose: str = Field(min_length=1, max_length=500, description="why, in a few words (audited)")
    bytes_requested: int = Field(default=0, ge=0, description="read volume, for exfiltration monitoring")


class DataAccessApproved(Frozen):
    """`mlw.dataset.approval`: an actor approves one access request (`kind=approval`, a data
    steward) or asserts that its requester passed multi-factor authentication (`kind=mfa`, the
    identity provider); signed by that actor and bound to the request's event id."""

    request_id: str = Field(min_length=1, max_length=64, description="id of the access request event")
    dataset: Name = Field(description="dataset name, as in the request")
    version: str = Field(min_length=1, max_length=64, description="dataset version, as in the request")
    approver: Name = Field(description="actor id; must be the signer")
    kind: Literal["approval", "mfa"] = Field(default="approval", description="an approval or an MFA assertion")
    comment: str = Field(default="", max_length=2000, description="free text")


class AccessVerdict(Frozen):
    """`mlw.verdict.access`: data-guard's decision on one access request."""

    principal: str
    dataset: Name
    version: str
    purpose: str
    allowed: bool
    reasons: list[str] = Field(default_factory=list, description="every reason, also when allowed")
    sensitivity: Sensitivity | None = Field(default=None, description="level of the dataset, when known")
    in_reply_to: str = Field(description="id of the access request event")
