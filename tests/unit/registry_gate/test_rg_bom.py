"""`registry bom`'s domain: a CycloneDX 1.6 ML-BOM from verified facts only (issue 11).

The facts are audit entries holding real signed envelopes, checked against a trust store as the
CLI checks them: each forgery below is an attack that must leave the BOM without the fact.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from pydantic import BaseModel

from services.artifact_signer.attest import checks_statement
from services.artifact_signer.dependencies import check_dependencies
from services.artifact_signer.oms import sign_statement
from services.registry_gate.bom import BomError, BomFacts, NeverPromoted, bom_json, facts_from_trail
from shared.envelope import new_event
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    AuditEntry,
    DatasetRef,
    DatasetVerdict,
    Decision,
    Finding,
    PromotionVerdict,
    Severity,
)
from shared.signing import SigningKey, TrustStore
from shared.topology import Subjects

ROOT = hashlib.sha256(b"churn 3 manifest").hexdigest()
TRAIN = DatasetRef(dataset="train", version="1", sha256=hashlib.sha256(b"train v1").hexdigest())
CHECKS_KEY = "bundles/churn/3/checks.sigstore.json"
LOCK = (
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'numpy wheel').hexdigest()}"
    f" --hash=sha256:{hashlib.sha256(b'numpy sdist').hexdigest()}\n"
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'sklearn wheel').hexdigest()}\n"
).encode()
T0 = 1_800_000_000.0
NAMES = ("registry-gate", "artifact-signer", "data-guard", "alice", "bob", "carol", "mallory")


class Trail:
    """Signed events as audit-log stores them, and the trust store that verifies them."""

    def __init__(self) -> None:
        self.keys = {name: SigningKey.generate(name) for name in NAMES}
        self.trust = TrustStore({name: key.public_b64() for name, key in self.keys.items()})
        self.model: list[AuditEntry] = []
        self.datasets: list[AuditEntry] = []

    def add(self, subject: str, data: BaseModel, signer: str | None, *, about: str = "model:churn:3") -> AuditEntry:
        event = new_event(subject, data, source="tests", subject=about)
        if signer is not None:
            event = event.signed(self.keys[signer])
        seq = len(self.model) + len(self.datasets) + 1
        entry = AuditEntry(
            seq=seq,
            event_id=event.id,
            type=subject,
            source="tests",
            subject=about,
            service=None,
            actor=None,
            decision=None,
            time=T0 + seq,
            recorded_at=T0 + seq,
            entry_hash="0" * 64,
            event=orjson.loads(event.to_bytes()),
        )
        (self.datasets if about.startswith("dataset:") else self.model).append(entry)
        return entry

    def checks_bundle(self, signer: str = "artifact-signer", root: str = ROOT) -> dict[str, bytes]:
        deps = check_dependencies(LOCK, "requirements.txt")
        statement = checks_statement(
            name="churn", root_digest=root, decision=Decision.PASS, scan={}, dependencies=deps.model_dump(mode="json")
        )
        return {CHECKS_KEY: sign_statement(statement, self.keys[signer].private)}

    def facts(self, bundles: dict[str, bytes] | None = None) -> BomFacts:
        chosen = self.checks_bundle() if bundles is None else bundles
        return facts_from_trail("churn", "3", self.model, self.datasets, self.trust, chosen)


def _artifact(**changes: Any) -> ArtifactVerdict:
    base: dict[str, Any] = {
        "model": "churn",
        "version": "3",
        "root_digest": ROOT,
        "decision": Decision.PASS,
        "datasets": [TRAIN],
        "builder": "ci-bot",
        "in_reply_to": "build-3",
        "manifest_key": "bundles/churn/3/model.sigstore.json",
        "provenance_key": "bundles/churn/3/provenance.sigstore.json",
        "checks_key": CHECKS_KEY,
    }
    return ArtifactVerdict(**{**base, **changes})


def _promoted(request_id: str = "req-1", **changes: Any) -> PromotionVerdict:
    base: dict[str, Any] = {
        "model": "churn",
        "version": "3",
        "stage": "production",
        "decision": "promoted",
        "requester": "alice",
        "approvers": ["bob", "carol"],
        "request_id": request_id,
        "in_reply_to": "x",
        "root_digest": ROOT,
        "manifest_key": "bundles/churn/3/model.sigstore.json",
    }
    return PromotionVerdict(**{**base, **changes})


def _approval(approver: str, request_id: str = "req-1") -> ApprovalGiven:
    return ApprovalGiven(request_id=request_id, model="churn", version="3", stage="production", approver=approver)


@pytest.fixture
def trail() -> Trail:
    """A promoted churn 3: artifact and dataset verdicts, two approvals, the promotion."""
    t = Trail()
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(), "artifact-signer")
    verdict = DatasetVerdict(
        dataset="train", version="1", sha256=TRAIN.sha256, decision=Decision.PASS, in_reply_to="u", label_checked=True
    )
    t.add(Subjects.VERDICT_DATASET, verdict, "data-guard", about="dataset:train:1")
    t.add(Subjects.APPROVAL_GIVEN, _approval("bob"), "bob")
    t.add(Subjects.APPROVAL_GIVEN, _approval("carol"), "carol")
    t.add(Subjects.VERDICT_PROMOTION, _promoted(), "registry-gate")
    return t


def _bom(facts: BomFacts) -> dict[str, Any]:
    document = bom_json(facts)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document)
    assert errors is None, errors
    parsed: dict[str, Any] = orjson.loads(document)
    return parsed


def _props(component: dict[str, Any], name: str) -> list[str]:
    return [p["value"] for p in component.get("properties", []) if p["name"] == name]


def test_bom_of_a_promoted_version_is_valid_cyclonedx_1_6_with_every_fact(trail: Trail) -> None:
    bom = _bom(trail.facts())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    model = bom["metadata"]["component"]
    assert (model["type"], model["name"], model["version"]) == ("machine-learning-model", "churn", "3")
    assert model["hashes"] == [{"alg": "SHA-256", "content": ROOT}]
    assert "nats-object://mlw-artifacts/bundles/churn/3/model.sigstore.json" in [
        r["url"] for r in model["externalReferences"]
    ]
    assert _props(model, "mlwarden:signature-bundle") == ["mlw-artifacts/bundles/churn/3/model.sigstore.json"]
    approvals = _props(model, "mlwarden:approval")
    assert [a.split(";")[1].strip() for a in approvals] == ["approver=bob", "approver=carol"]
    assert all("request=req-1" in a for a in approvals)
    assert "requester=alice" in _props(model, "mlwarden:promotion")[0]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for component in bom["components"]:
        by_type.setdefault(component["type"], []).append(component)
    (data,) = by_type["data"]
    assert data["hashes"] == [{"alg": "SHA-256", "content": TRAIN.sha256}]
    assert _props(data, "mlwarden:data-guard:decision") == ["pass"]
    libraries = {c["purl"]: c for c in by_type["library"]}
    assert set(libraries) == {"pkg:pypi/numpy@2.4.6", "pkg:pypi/scikit-learn@1.9.1"}
    assert len(libraries["pkg:pypi/numpy@2.4.6"]["hashes"]) == 2
    (deps,) = [d for d in bom["dependencies"] if d["ref"] == model["bom-ref"]]
    assert len(deps["dependsOn"]) == 3


def test_version_never_promoted_has_no_bom() -> None:
    t = Trail()
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(), "artifact-signer")
    t.add(Subjects.VERDICT_PROMOTION, _promoted(decision="pending", approvers=["bob"]), "registry-gate")
    with pytest.raises(NeverPromoted, match=r"churn:3: was never promoted"):
        t.facts()


@pytest.mark.parametrize("signer", ["artifact-signer", "alice", None])
def test_promotion_verdict_not_signed_by_registry_gate_makes_no_bom(signer: str | None) -> None:
    t = Trail()
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(), "artifact-signer")
    t.add(Subjects.VERDICT_PROMOTION, _promoted(), signer)
    with pytest.raises(NeverPromoted):
        t.facts()


def test_promotion_verdict_edited_after_signing_makes_no_bom() -> None:
    t = Trail()
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(), "artifact-signer")
    entry = t.add(Subjects.VERDICT_PROMOTION, _promoted(decision="pending"), "registry-gate")
    entry.event["data"]["decision"] = "promoted"  # a tampered reply or a rewritten row
    with pytest.raises(NeverPromoted):
        t.facts()


def test_forged_and_uncounted_approvals_are_left_out(trail: Trail) -> None:
    # mallory signs an approval naming bob; dave's key is unknown; neither counted.
    trail.add(Subjects.APPROVAL_GIVEN, _approval("bob").model_copy(update={"comment": "forged"}), "mallory")
    trail.add(Subjects.APPROVAL_GIVEN, _approval("mallory"), "mallory")
    facts = trail.facts()
    (promotion,) = facts.promotions
    assert [(a.approver, a.event_id) for a in promotion.approvals] == [
        ("bob", trail.model[1].event_id),
        ("carol", trail.model[2].event_id),
    ]


def test_dataset_verdict_not_signed_by_data_guard_is_not_a_decision(trail: Trail) -> None:
    forged = DatasetVerdict(dataset="train", version="1", sha256=TRAIN.sha256, decision=Decision.FAIL, in_reply_to="u")
    trail.add(Subjects.VERDICT_DATASET, forged, "artifact-signer", about="dataset:train:1")
    (dataset,) = trail.facts().datasets
    assert dataset.decisions == [Decision.PASS]


def test_artifact_verdict_forged_or_for_other_bytes_makes_no_bom() -> None:
    t = Trail()
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(), "data-guard")  # not artifact-signer's word
    t.add(Subjects.VERDICT_ARTIFACT, _artifact(root_digest="e" * 64), "artifact-signer")  # other bytes
    t.add(Subjects.VERDICT_PROMOTION, _promoted(), "registry-gate")
    with pytest.raises(BomError, match="no verified passing artifact-signer verdict"):
        t.facts()


def test_checks_statement_signed_by_another_key_or_about_other_bytes_is_refused(trail: Trail) -> None:
    with pytest.raises(BomError, match="checks statement does not verify"):
        trail.facts(trail.checks_bundle(signer="mallory"))
    with pytest.raises(BomError, match="another model"):
        trail.facts(trail.checks_bundle(root="f" * 64))
    with pytest.raises(BomError, match="is missing"):
        trail.facts({})


def _vulnerable(root: str = ROOT) -> ArtifactVerdict:
    finding = Finding(
        check="dependencies.vulnerable",
        severity=Severity.FAIL,
        message="numpy==2.4.6: GHSA-new, fixed in 2.4.7",
        evidence={"package": "numpy", "version": "2.4.6", "id": "GHSA-new", "aliases": "CVE-1", "fixed": "2.4.7"},
    )
    return _artifact(decision=Decision.FAIL, findings=[finding], root_digest=root, in_reply_to="osv-recheck")


def test_recall_and_vulnerabilities_since_are_in_the_bom_from_their_signers_only(trail: Trail) -> None:
    recall = _promoted(
        "recall-x", decision="demoted", action="recall", approvers=[], reasons=["recalled from production: GHSA-new"]
    )
    trail.add(Subjects.VERDICT_PROMOTION, recall, "registry-gate")
    trail.add(Subjects.VERDICT_ARTIFACT, _vulnerable(), "artifact-signer")
    forged = _vulnerable().model_copy(update={"in_reply_to": "forged"})
    trail.add(Subjects.VERDICT_ARTIFACT, forged, "data-guard")  # not artifact-signer's word
    trail.add(Subjects.VERDICT_PROMOTION, recall.model_copy(update={"request_id": "forged"}), "alice")
    bom = _bom(trail.facts())
    model = bom["metadata"]["component"]
    (change,) = _props(model, "mlwarden:stage-change")
    assert change.startswith("stage=production; action=recall;") and "GHSA-new" in change
    (vuln,) = bom["vulnerabilities"]
    assert vuln["id"] == "GHSA-new" and vuln["affects"] == [{"ref": "pkg:pypi/numpy@2.4.6"}]
    assert vuln["recommendation"] == "upgrade numpy to 2.4.7"
    # The promotion still counts: the BOM describes the version as it was promoted, and since.
    assert len(_props(model, "mlwarden:promotion")) == 1
