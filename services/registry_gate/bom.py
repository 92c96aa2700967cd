"""A CycloneDX 1.6 ML-BOM for a promoted model version, from verified facts only (issue 11).

Two halves, both pure (no NATS):

1. `facts_from_trail` picks the facts out of audit-trail entries and the artifact's signed checks
   statement, and keeps only what verifies: each envelope's signature is checked again here
   against the root-signed trust store (`services.audit_log.provenance`, the rule audit-log labels
   by), so a forged verdict or approval in the trail, or a reply that was tampered with on the way,
   adds nothing. A version with no verified `promoted` verdict has no BOM (`NeverPromoted`).
2. `build_bom` / `bom_json` turn those facts into the BOM with `cyclonedx-python-lib`:

   - the model is `metadata.component`, type `machine-learning-model`, its OMS root digest as its
     SHA-256 hash (the digest the promotion verdict names), the signature bundle and provenance
     statement as `attestation` external references;
   - each training dataset is a `data` component with its sha256 and data-guard's decisions;
   - each locked dependency is a `library` component with a `pkg:pypi` purl and its sha256 digests,
     from artifact-signer's signed checks statement (the lock file as it was built, not a file on
     disk today);
   - each promotion and each counted approval (who, when, request id), and each later demotion or
     recall (with its reason), is a `mlwarden:*` property of the model (the library has no
     annotations yet);
   - each vulnerability a signed artifact verdict on these bytes names (e.g. after artifact-signer
     re-checked the lock against an updated OSV database) is a `vulnerabilities` entry that
     affects its `pkg:pypi` component.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.model.vulnerability import BomTarget, Vulnerability, VulnerabilitySource
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from pydantic import Field, ValidationError

from services.artifact_signer.attest import CHECKS_PREDICATE, verify_companion
from services.artifact_signer.lockfile import LockedPackage
from services.artifact_signer.oms import BundleError
from services.audit_log.provenance import provenance
from shared.errors import MlwardenError
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    AuditEntry,
    DatasetRef,
    DatasetVerdict,
    Decision,
    Frozen,
    PromotionVerdict,
)
from shared.signing import TrustStore
from shared.topology import ARTIFACTS_BUCKET, Subjects

BOM_FORMAT: Final = "cyclonedx-json"


class BomError(MlwardenError, ValueError):
    """No trustworthy BOM can be written for this model version."""

    def __init__(self, reason: str, *, name: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason
        self.name = name


class NeverPromoted(BomError):
    """The audit trail holds no verified `promoted` verdict for the model version."""


class BomApproval(Frozen):
    """An approval registry-gate counted, as its approver signed it."""

    approver: str = Field(description="the verified signer of the approval")
    at: datetime = Field(description="when the approver signed it (the envelope's time)")
    request_id: str = Field(description="the request it approves")
    event_id: str = Field(description="id of the approval event")


class BomPromotion(Frozen):
    """One `promoted` verdict signed by registry-gate (a promotion or a rollback)."""

    stage: str
    request_id: str
    action: str = Field(description="promotion or rollback")
    requester: str = Field(description="the request's verified signer, as registry-gate recorded it")
    decided_at: datetime = Field(description="when registry-gate signed the verdict")
    root_digest: str = Field(description="the artifact root digest the verdict promoted")
    verdict_id: str = Field(description="id of the verdict event")
    approvals: list[BomApproval] = Field(default_factory=list)


class BomStageChange(Frozen):
    """A later `demoted` verdict signed by registry-gate: a demotion or a recall of this version."""

    stage: str
    action: str = Field(description="demotion or recall")
    at: datetime = Field(description="when registry-gate signed the verdict")
    reason: str
    verdict_id: str


class BomVulnerability(Frozen):
    """A vulnerability artifact-signer's signed verdict on these bytes names in a locked package."""

    id: str = Field(description="OSV id")
    aliases: list[str] = Field(default_factory=list)
    package: str
    version: str
    fixed: list[str] = Field(default_factory=list)
    verdict_id: str = Field(description="id of the artifact verdict that names it")


class BomDataset(Frozen):
    """A training dataset, by content digest, with data-guard's verified decisions on those bytes."""

    ref: DatasetRef
    decisions: list[Decision] = Field(default_factory=list, description="every verified verdict's decision")


class BomFacts(Frozen):
    """Everything a model version's BOM says, each fact verified."""

    model: str
    version: str
    root_digest: str
    builder: str
    manifest_key: str | None
    provenance_key: str | None
    checks_key: str | None
    promotions: list[BomPromotion]
    datasets: list[BomDataset]
    lockfile_sha256: str | None = None
    packages: list[LockedPackage] = Field(default_factory=list)
    changes: list[BomStageChange] = Field(default_factory=list, description="demotions and recalls since")
    vulnerabilities: list[BomVulnerability] = Field(default_factory=list)


def _verified(entry: AuditEntry, trust: TrustStore) -> str | None:
    """The signer of `entry`'s envelope if its signature holds now for that kind of event, else None."""
    return provenance(entry.event, entry.type, trust, entry.recorded_at).signer


def _data(entry: AuditEntry, model: type[Any]) -> Any:
    try:
        return model.model_validate(entry.event.get("data"))
    except ValidationError:
        return None


def _time(entry: AuditEntry) -> datetime:
    return datetime.fromtimestamp(entry.time, UTC)


def promotions_of(entries: Iterable[AuditEntry], trust: TrustStore, model: str, version: str) -> list[BomPromotion]:
    """The verified `promoted` verdicts on (model, version), with the approvals each counted.

    (1) A verdict counts only when registry-gate's signature verifies; (2) an approval counts only
    when its approver's signature verifies, it names the verdict's request, and the verdict lists
    its signer among the approvers that counted.
    """
    entries = list(entries)
    approvals: dict[str, list[BomApproval]] = {}
    for entry in entries:
        if entry.type != Subjects.APPROVAL_GIVEN:
            continue
        signer = _verified(entry, trust)
        approval = _data(entry, ApprovalGiven)
        if signer is None or approval is None or approval.approver != signer:
            continue
        if (approval.model, approval.version) != (model, version):
            continue
        approvals.setdefault(approval.request_id, []).append(
            BomApproval(approver=signer, at=_time(entry), request_id=approval.request_id, event_id=entry.event_id)
        )
    found: dict[str, BomPromotion] = {}
    for entry in entries:
        if entry.type != Subjects.VERDICT_PROMOTION or _verified(entry, trust) is None:
            continue
        verdict = _data(entry, PromotionVerdict)
        if verdict is None or verdict.decision != "promoted" or (verdict.model, verdict.version) != (model, version):
            continue
        if verdict.request_id in found:
            continue  # the same decision published again (a status change of another request)
        counted: dict[str, BomApproval] = {}
        for approval in approvals.get(verdict.request_id, []):
            if approval.approver in verdict.approvers and approval.approver not in counted:
                counted[approval.approver] = approval
        found[verdict.request_id] = BomPromotion(
            stage=verdict.stage,
            request_id=verdict.request_id,
            action=verdict.action,
            requester=verdict.requester,
            decided_at=_time(entry),
            root_digest=verdict.root_digest,
            verdict_id=entry.event_id,
            approvals=[counted[a] for a in verdict.approvers if a in counted],
        )
    return sorted(found.values(), key=lambda p: p.decided_at)


def facts_from_trail(
    model: str,
    version: str,
    model_entries: Sequence[AuditEntry],
    dataset_entries: Sequence[AuditEntry],
    trust: TrustStore,
    bundles: Mapping[str, bytes],
) -> BomFacts:
    """The verified facts of a promoted model version (raise `BomError` when they do not hold).

    `model_entries` are the trail's entries about `model:<model>:<version>`, `dataset_entries`
    those about its training datasets, `bundles` objects of `mlw-artifacts` by key (the signed checks
    statement among them).
    """
    name = f"{model}:{version}"
    # (1) Promoted: at least one `promoted` verdict signed by registry-gate.
    promotions = promotions_of(model_entries, trust, model, version)
    if not promotions:
        raise NeverPromoted(
            "was never promoted (no verified registry-gate promotion verdict in the audit trail)", name=name
        )
    digests = {p.root_digest for p in promotions}
    if len(digests) != 1:
        raise BomError(f"its promotion verdicts name {len(digests)} different root digests", name=name)
    root_digest = digests.pop()
    # (2) The artifact: artifact-signer's verified verdict on exactly the promoted bytes.
    found = _artifact_verdict(model_entries, trust, model, version, root_digest)
    if found is None:
        raise BomError(
            f"no verified passing artifact-signer verdict on root digest {root_digest[:12]}… in the audit trail",
            name=name,
        )
    artifact, signed_at = found
    # (3) The training data: data-guard's verified verdicts on each dataset's bytes.
    datasets = [_dataset(ref, dataset_entries, trust) for ref in artifact.datasets]
    # (4) The locked dependencies: the checks statement, signed by artifact-signer, about these bytes.
    lock_sha, packages = _dependencies(bundles, trust, artifact, signed_at, name)
    # (5) What happened since, from the same signers: demotions and recalls (registry-gate),
    # vulnerabilities found in its locked packages (artifact-signer, e.g. after an OSV update).
    changes = _stage_changes(model_entries, trust, model, version, root_digest)
    vulnerabilities = _vulnerabilities(model_entries, trust, model, version, root_digest)
    return BomFacts(
        changes=changes,
        vulnerabilities=vulnerabilities,
        model=model,
        version=version,
        root_digest=root_digest,
        builder=artifact.builder,
        manifest_key=artifact.manifest_key,
        provenance_key=artifact.provenance_key,
        checks_key=artifact.checks_key,
        promotions=promotions,
        datasets=datasets,
        lockfile_sha256=lock_sha,
        packages=packages,
    )


def _artifact_verdict(
    entries: Sequence[AuditEntry], trust: TrustStore, model: str, version: str, root_digest: str
) -> tuple[ArtifactVerdict, float] | None:
    """artifact-signer's verified passing verdict on the promoted bytes, and when audit-log received it."""
    for entry in entries:
        if entry.type != Subjects.VERDICT_ARTIFACT or _verified(entry, trust) is None:
            continue
        verdict = _data(entry, ArtifactVerdict)
        if (
            verdict is not None
            and (verdict.model, verdict.version, verdict.root_digest) == (model, version, root_digest)
            and verdict.decision is Decision.PASS
        ):
            return verdict, entry.recorded_at
    return None


def _stage_changes(
    entries: Sequence[AuditEntry], trust: TrustStore, model: str, version: str, root_digest: str
) -> list[BomStageChange]:
    found: dict[str, BomStageChange] = {}
    for entry in entries:
        if entry.type != Subjects.VERDICT_PROMOTION or _verified(entry, trust) is None:
            continue
        verdict = _data(entry, PromotionVerdict)
        if verdict is None or verdict.decision != "demoted" or verdict.request_id in found:
            continue
        if (verdict.model, verdict.version, verdict.root_digest) != (model, version, root_digest):
            continue
        found[verdict.request_id] = BomStageChange(
            stage=verdict.stage,
            action=verdict.action,
            at=_time(entry),
            reason="; ".join(verdict.reasons),
            verdict_id=entry.event_id,
        )
    return sorted(found.values(), key=lambda c: c.at)


def _vulnerabilities(
    entries: Sequence[AuditEntry], trust: TrustStore, model: str, version: str, root_digest: str
) -> list[BomVulnerability]:
    found: dict[tuple[str, str, str], BomVulnerability] = {}
    for entry in entries:
        if entry.type != Subjects.VERDICT_ARTIFACT or _verified(entry, trust) is None:
            continue
        verdict = _data(entry, ArtifactVerdict)
        if verdict is None or (verdict.model, verdict.version, verdict.root_digest) != (model, version, root_digest):
            continue
        for finding in verdict.findings:
            ev = finding.evidence
            if finding.check != "dependencies.vulnerable" or not all(k in ev for k in ("id", "package", "version")):
                continue
            key = (str(ev["id"]), str(ev["package"]), str(ev["version"]))
            found.setdefault(
                key,
                BomVulnerability(
                    id=key[0],
                    package=key[1],
                    version=key[2],
                    aliases=[a for a in str(ev.get("aliases", "")).split(",") if a],
                    fixed=[f for f in str(ev.get("fixed", "")).split(",") if f],
                    verdict_id=entry.event_id,
                ),
            )
    return sorted(found.values(), key=lambda v: (v.package, v.id))


def _dataset(ref: DatasetRef, entries: Sequence[AuditEntry], trust: TrustStore) -> BomDataset:
    decisions = []
    for entry in entries:
        if entry.type != Subjects.VERDICT_DATASET or _verified(entry, trust) is None:
            continue
        verdict = _data(entry, DatasetVerdict)
        # Judged by content, as registry-gate judges it: any verdict on these bytes counts.
        if verdict is not None and verdict.sha256 == ref.sha256:
            decisions.append(verdict.decision)
    return BomDataset(ref=ref, decisions=decisions)


def _dependencies(
    bundles: Mapping[str, bytes], trust: TrustStore, artifact: ArtifactVerdict, at: float, name: str
) -> tuple[str | None, list[LockedPackage]]:
    """The lock file's digest and packages from the checks statement, verified with the
    artifact-signer key that was current when its verdict was recorded (rotation keeps it valid)."""
    if artifact.checks_key is None:
        return None, []  # built before the checks statement existed: the BOM lists no dependency
    bundle = bundles.get(artifact.checks_key)
    if bundle is None:
        raise BomError(f"the signed checks statement {artifact.checks_key} is missing", name=name)
    identity = trust.identity("artifact-signer")
    problems: list[str] = []
    if identity is not None and (identity.revoked_at is None or at < identity.revoked_at):
        for period in identity.keys:
            if period.since <= at and (period.until is None or at < period.until):
                try:
                    predicate = verify_companion(
                        bundle, period.public, root_digest=artifact.root_digest, predicate_type=CHECKS_PREDICATE
                    )
                except BundleError as exc:
                    problems.append(exc.reason)
                    continue
                return _packages(predicate)
    why = "; ".join(problems) or "no artifact-signer key valid when it was signed"
    raise BomError(f"the checks statement does not verify ({why})", name=name)


def _packages(predicate: dict[str, Any]) -> tuple[str | None, list[LockedPackage]]:
    deps = predicate.get("dependencies")
    if not isinstance(deps, dict):
        return None, []
    lock = deps.get("lock")
    if not isinstance(lock, dict):
        return None, []
    packages = [LockedPackage.model_validate(p) for p in lock.get("packages", []) if isinstance(p, dict)]
    sha = lock.get("sha256")
    return (sha if isinstance(sha, str) else None), packages


# --- the document ---------------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _object_uri(key: str) -> XsUri:
    return XsUri(f"nats-object://{ARTIFACTS_BUCKET}/{key}")


def _worst(decisions: Sequence[Decision]) -> str:
    order = [Decision.ERROR, Decision.FAIL, Decision.WARN, Decision.PASS]
    return next((d.value for d in order if d in decisions), "unknown")


def build_bom(facts: BomFacts, *, now: datetime | None = None) -> Bom:
    """The CycloneDX ML-BOM of `facts` (the model is `metadata.component`)."""
    references = [
        ExternalReference(
            type=ExternalReferenceType.ATTESTATION, url=_object_uri(key), comment=f"{what}, signed by artifact-signer"
        )
        for key, what in (
            (facts.manifest_key, "OMS signature bundle over the root digest"),
            (facts.provenance_key, "SLSA provenance statement"),
            (facts.checks_key, "scan and dependency checks statement"),
        )
        if key
    ]
    properties = [Property(name="mlwarden:builder", value=facts.builder)] if facts.builder else []
    if facts.manifest_key:
        properties.append(Property(name="mlwarden:signature-bundle", value=f"{ARTIFACTS_BUCKET}/{facts.manifest_key}"))
    for p in facts.promotions:
        properties.append(
            Property(
                name="mlwarden:promotion",
                value=f"stage={p.stage}; action={p.action}; request={p.request_id}; requester={p.requester}; "
                f"at={_iso(p.decided_at)}; verdict={p.verdict_id}",
            )
        )
        properties += [
            Property(
                name="mlwarden:approval",
                value=f"stage={p.stage}; approver={a.approver}; at={_iso(a.at)}; request={a.request_id}; "
                f"event={a.event_id}",
            )
            for a in p.approvals
        ]
    properties += [
        Property(
            name="mlwarden:stage-change",
            value=f"stage={c.stage}; action={c.action}; at={_iso(c.at)}; verdict={c.verdict_id}; reason={c.reason}",
        )
        for c in facts.changes
    ]
    if facts.lockfile_sha256:
        properties.append(Property(name="mlwarden:lockfile-sha256", value=facts.lockfile_sha256))
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=facts.model,
        version=facts.version,
        bom_ref=f"model:{facts.model}@{facts.version}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=facts.root_digest)],
        external_references=references,
        properties=properties,
    )
    datasets = [
        Component(
            type=ComponentType.DATA,
            name=d.ref.dataset,
            version=d.ref.version,
            bom_ref=f"dataset:{d.ref.dataset}@{d.ref.version}:{d.ref.sha256[:16]}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=d.ref.sha256)],
            properties=[
                Property(name="mlwarden:data-guard:decision", value=_worst(d.decisions)),
                *(Property(name="mlwarden:data-guard:verdict", value=v.value) for v in d.decisions),
            ],
        )
        for d in facts.datasets
    ]
    libraries = [
        Component(
            type=ComponentType.LIBRARY,
            name=p.name,
            version=p.version,
            bom_ref=f"pkg:pypi/{p.name}@{p.version}" if p.version else f"pkg:pypi/{p.name}",
            purl=PackageURL(type="pypi", name=p.name, version=p.version),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in p.sha256],
        )
        for p in facts.packages
    ]
    refs = {(p.name, p.version): f"pkg:pypi/{p.name}@{p.version}" for p in facts.packages if p.version}
    vulnerabilities = [
        Vulnerability(
            bom_ref=f"vuln:{v.id}:{v.package}@{v.version}",
            id=v.id,
            source=VulnerabilitySource(name="OSV", url=XsUri(f"https://osv.dev/vulnerability/{v.id}")),
            recommendation=f"upgrade {v.package} to {' or '.join(v.fixed)}" if v.fixed else "no fixed version known",
            affects=[BomTarget(ref=refs[(v.package, v.version)])] if (v.package, v.version) in refs else None,
            properties=[
                Property(name="mlwarden:artifact-verdict", value=v.verdict_id),
                *(Property(name="mlwarden:alias", value=a) for a in v.aliases),
            ],
        )
        for v in facts.vulnerabilities
    ]
    bom = Bom(
        vulnerabilities=vulnerabilities,
        metadata=BomMetaData(
            timestamp=now or datetime.now(UTC),
            component=model,
            tools=ToolRepository(components=[Component(type=ComponentType.APPLICATION, name="mlwarden")]),
        ),
        components=[*datasets, *libraries],
    )
    bom.register_dependency(model, [*datasets, *libraries])
    return bom


def bom_json(facts: BomFacts, *, now: datetime | None = None) -> str:
    """The BOM as CycloneDX 1.6 JSON."""
    return JsonV1Dot6(build_bom(facts, now=now)).output_as_string(indent=2)
