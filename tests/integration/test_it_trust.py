"""Trust boundaries on a real bus (issue 8): identity comes from the verified signature, the trust
store holds only root-signed entries, and revocation or rotation takes effect in running services.

Each test performs the attack a producer holding only its own credentials (and, on the dev bus,
write access to every bucket) would try, and sees it refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlwarden.bootstrap import actor_key, bootstrap, load_root_key
from shared.bus import load_trust, publish_event, revoke_key
from shared.envelope import new_event
from shared.events import (
    ArtifactVerdict,
    AuditQuery,
    DatasetRef,
    DatasetVerdict,
    Decision,
    ModelBuilt,
    ObjectRef,
    PredictionBatch,
    PredictionRecord,
    Sensitivity,
)
from shared.signing import SigningKey
from shared.topology import TRUST_BUCKET, Subjects
from shared.trust import load_root_public
from tests._poll import until

DIGEST = "ab" * 32
DATA_SHA = "cd" * 32


def _csv(path: Path) -> Path:
    rows = "\n".join(f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(60))
    path.write_text("a,b,label\n" + rows + "\n")
    return path


def _answers(event_id: str, subject: str) -> Any:
    return lambda e: e.type == subject and getattr(e.data, "in_reply_to", None) == event_id


async def test_upload_claiming_another_uploader_is_refused_and_changes_nothing(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    async with client.watch() as watcher:
        honest = await client.upload_dataset(
            _csv(tmp_path / "d.csv"), dataset="sales", version="1", label="label", uploader="pipeline"
        )
        first = await watcher.wait(_answers(honest.id, Subjects.VERDICT_DATASET), 30)
        assert first is not None and first.data.decision != "fail", first.data.findings
        # mallory re-announces the same version as "pipeline", public and readable by herself
        claim = honest.data.model_copy(update={"sensitivity": Sensitivity.PUBLIC, "allowed_readers": ["mallory"]})
        unsigned = await client.publish(Subjects.DATASET_UPLOADED, claim)
        forged = await client.publish(Subjects.DATASET_UPLOADED, claim, key=client.actor("mallory"))
        refused = [await watcher.wait(_answers(e.id, Subjects.VERDICT_DATASET), 20) for e in (unsigned, forged)]
        alert = await watcher.wait(
            lambda e: (
                e.type == "mlw.alert.data-guard" and e.data.kind == "forged_identity" and "mallory" in e.data.message
            ),
            20,
        )
    for verdict in refused:
        assert verdict is not None and verdict.signer == "data-guard" and verdict.data.decision == "fail"
        assert verdict.data.findings[0].check == "identity.uploader"
    assert alert is not None
    # the record data-guard keeps for access decisions is still the honest one
    guard = running.apps["data-guard"].state["guard"]
    record = await guard.record("sales", "1")
    assert record is not None and record.uploader == "pipeline" and record.allowed_readers == ()


async def test_build_claiming_another_builder_is_refused_before_anything_is_read(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "artifact-signer")
    client = running.client
    build = ModelBuilt(
        model="churn",
        version="1",
        artifact=ObjectRef(kind="file", path=str(tmp_path)),
        builder="ci-bot",
        datasets=[DatasetRef(dataset="sales", version="1", sha256=DATA_SHA)],
    )
    async with client.watch() as watcher:
        event = await client.publish(Subjects.MODEL_BUILT, build, key=client.actor("mallory"))
        verdict = await watcher.wait(_answers(event.id, Subjects.VERDICT_ARTIFACT), 20)
    assert verdict is not None and verdict.data.decision == "fail"
    assert verdict.data.findings[0].check == "identity.builder"
    assert "signed by 'mallory'" in verdict.data.findings[0].message


async def test_prediction_logs_need_a_model_server_signature(bus: Any) -> None:
    running = await bus("audit-log", "serving-monitor")
    client = running.client
    batch = PredictionBatch(
        model="churn", records=[PredictionRecord(client="victim", features={"a": 1.0}, prediction=1)]
    )
    async with client.watch() as watcher:
        await client.publish(Subjects.PREDICTION_LOGGED, batch)  # unsigned
        await client.publish(Subjects.PREDICTION_LOGGED, batch, key=client.actor("mallory"))  # no role
        unsigned = await watcher.wait(
            lambda e: e.type == "mlw.alert.serving-monitor" and "not signed" in e.data.message, 20
        )
        no_role = await watcher.wait(
            lambda e: e.type == "mlw.alert.serving-monitor" and "model-server" in e.data.message, 20
        )
    assert unsigned is not None and unsigned.data.kind == "forged_identity"
    assert no_role is not None and no_role.data.kind == "forged_identity"


async def test_a_key_registered_without_the_root_signature_is_never_trusted(bus: Any) -> None:
    """The dev-mode TOFU attack: write your own key for artifact-signer into the trust bucket
    (before or after the service starts), then publish a `pass` verdict signed with it."""
    running = await bus("audit-log", "registry-gate")
    client = running.client
    attacker = SigningKey.generate("artifact-signer")
    kv = await client.js.key_value(TRUST_BUCKET)
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    guard = SigningKey.from_pem("data-guard", (running.settings.keys_dir / "data-guard.pem").read_bytes())
    dataset = DatasetVerdict(
        dataset="train", version="1", sha256=DATA_SHA, decision=Decision.PASS, in_reply_to="x", uploader="pipeline"
    )
    artifact = ArtifactVerdict(
        model="churn",
        version="1",
        root_digest=DIGEST,
        decision=Decision.PASS,
        datasets=[DatasetRef(dataset="train", version="1", sha256=DATA_SHA)],
        builder="ci-bot",
        in_reply_to="y",
    )
    async with client.watch() as watcher:
        await kv.put("artifact-signer", attacker.public_b64().encode())
        untrusted = await watcher.wait(
            lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "untrusted_key", 20
        )
        await publish_event(
            client.js,
            Subjects.VERDICT_DATASET,
            new_event(Subjects.VERDICT_DATASET, dataset, source="mlwarden/data-guard").signed(guard),
        )
        await publish_event(
            client.js,
            Subjects.VERDICT_ARTIFACT,
            new_event(Subjects.VERDICT_ARTIFACT, artifact, source="mlwarden/artifact-signer").signed(attacker),
        )
        forged = await watcher.wait(
            lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_verdict", 20
        )
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=DIGEST
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model="churn", version="1", stage="production")
        last = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_PROMOTION
                and e.data.request_id == request.id
                and sorted(e.data.approvers) == ["bob", "carol"]
            ),
            20,
        )
    assert untrusted is not None and "root" in untrusted.data.message
    assert forged is not None
    assert last is not None and last.data.decision != "promoted"
    assert any("artifact" in r for r in last.data.reasons)
    # The operator's `keys init` repairs the entry for readers that only get the latest value.
    root = load_root_public(None, running.settings.keys_dir)
    assert "artifact-signer" not in await load_trust(client.js, root, ["artifact-signer"])
    await bootstrap(client.js, running.settings)
    assert "artifact-signer" in await load_trust(client.js, root, ["artifact-signer"])


async def test_revoking_an_actor_stops_its_approvals_in_a_running_gate(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    root = load_root_key(running.settings)
    await revoke_key(client.js, root, "carol", "laptop stolen")
    gate = running.apps["registry-gate"].state["gate"]
    await until(lambda: "carol" not in gate.policy_now().actors, what="registry-gate sees carol's revocation")
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=DIGEST
        )
        await client.approve(carol, request_id=request.id, model="churn", version="1", stage="production")
        alert = await watcher.wait(
            lambda e: (
                e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_identity" and "revoked" in e.data.message
            ),
            20,
        )
        await client.approve(bob, request_id=request.id, model="churn", version="1", stage="production")
        verdict = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.request_id == request.id and e.data.approvers,
            20,
        )
    assert alert is not None
    assert verdict is not None and verdict.data.approvers == ["bob"] and verdict.data.decision != "promoted"


async def test_audit_trail_labels_entries_by_verified_signers_only(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    honest = await client.upload_dataset(
        _csv(tmp_path / "d.csv"), dataset="sales", version="1", label="label", uploader="pipeline"
    )
    claim = honest.data.model_copy(update={"version": "2"})
    forged = await client.publish(Subjects.DATASET_UPLOADED, claim, key=client.actor("mallory"))
    unsigned = await client.publish(Subjects.DATASET_UPLOADED, claim.model_copy(update={"version": "3"}))

    async def entries() -> dict[str, Any] | None:
        page = await client.audit_query(AuditQuery(type=Subjects.DATASET_UPLOADED, limit=10))
        found = {e.event_id: e for e in page.entries}
        return found if len(found) == 3 else None

    found = await until(entries, what="three uploads in the trail")
    assert found[honest.id].actor == "pipeline"
    assert found[forged.id].actor == "mallory"  # the signer, not the `uploader` it claims
    assert found[unsigned.id].actor is None and found[unsigned.id].service is None
    by_pipeline = await client.audit_query(AuditQuery(actor="pipeline", type=Subjects.DATASET_UPLOADED))
    assert [e.event_id for e in by_pipeline.entries] == [honest.id]


async def test_subscribers_see_forged_verdicts_as_unverified(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    root = load_root_public(None, running.settings.keys_dir)
    forged = DatasetVerdict(
        dataset="sales", version="9", sha256=DATA_SHA, decision=Decision.PASS, in_reply_to="x", uploader="pipeline"
    )
    async with client.watch(verify_with=root) as watcher:
        honest = await client.upload_dataset(
            _csv(tmp_path / "d.csv"), dataset="sales", version="1", label="label", uploader="pipeline"
        )
        genuine = await watcher.wait(_answers(honest.id, Subjects.VERDICT_DATASET), 30)
        fake = new_event(Subjects.VERDICT_DATASET, forged, source="mlwarden/data-guard").signed(
            SigningKey.generate("data-guard")
        )
        await publish_event(client.js, Subjects.VERDICT_DATASET, fake)
        seen = await watcher.wait(lambda e: e.id == fake.id, 20)
    assert genuine is not None and genuine.id not in watcher.unverified
    assert seen is not None and "signature does not verify" in watcher.unverified[fake.id]
