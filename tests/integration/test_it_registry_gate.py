"""registry-gate on a real bus: signed requests and approvals, verified verdicts, forgeries."""

from __future__ import annotations

from typing import Any

from mlwarden.bootstrap import actor_key
from shared.bus import publish_event
from shared.envelope import new_event
from shared.events import ArtifactVerdict, DatasetRef, DatasetVerdict, Decision
from shared.signing import SigningKey
from shared.topology import Subjects

DIGEST = "ab" * 32
DATA_SHA = "cd" * 32


async def _publish_verdicts(running: Any, *, artifact_key: SigningKey | None = None, model: str = "churn") -> None:
    keys = running.settings.keys_dir
    guard = SigningKey.from_pem("data-guard", (keys / "data-guard.pem").read_bytes())
    signer = artifact_key or SigningKey.from_pem("artifact-signer", (keys / "artifact-signer.pem").read_bytes())
    dataset = DatasetVerdict(
        dataset="train",
        version="1",
        sha256=DATA_SHA,
        decision=Decision.PASS,
        in_reply_to="x",
        uploader="alice",
        label_checked=True,
    )
    artifact = ArtifactVerdict(
        model=model,
        version="1",
        root_digest=DIGEST,
        decision=Decision.PASS,
        datasets=[DatasetRef(dataset="train", version="1", sha256=DATA_SHA)],
        builder="ci-bot",
        in_reply_to="y",
    )
    js = running.client.js
    await publish_event(
        js,
        Subjects.VERDICT_DATASET,
        new_event(Subjects.VERDICT_DATASET, dataset, source="mlwarden/data-guard").signed(guard),
    )
    await publish_event(
        js,
        Subjects.VERDICT_ARTIFACT,
        new_event(Subjects.VERDICT_ARTIFACT, artifact, source="mlwarden/artifact-signer").signed(signer),
    )


def _promotion_for(request_id: str) -> Any:
    return lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.request_id == request_id


async def test_promotion_needs_two_distinct_reviewers_and_ignores_self_approval(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _publish_verdicts(running)
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=DIGEST
        )
        first = await watcher.wait(_promotion_for(request.id), 10)
        assert first is not None and first.data.decision == "pending"

        for approver in (alice, bob):
            await client.approve(approver, request_id=request.id, model="churn", version="1", stage="production")
        after_bob = await watcher.wait(lambda e: _promotion_for(request.id)(e) and e.data.approvers == ["bob"], 10)
        assert after_bob is not None and after_bob.data.decision == "pending"
        assert any("alice" in r for r in after_bob.data.reasons)

        await client.approve(carol, request_id=request.id, model="churn", version="1", stage="production")
        done = await watcher.wait(lambda e: _promotion_for(request.id)(e) and e.data.decision == "promoted", 10)
        assert done is not None
        assert sorted(done.data.approvers) == ["bob", "carol"]
        # The verdict is signed by registry-gate and verifies against the trust store.
        assert done.signer == "registry-gate"


async def test_forged_artifact_verdict_changes_nothing_and_raises_an_alert(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    impostor = SigningKey.generate("artifact-signer")  # claims the name, lacks the key
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _publish_verdicts(running, artifact_key=impostor, model="fraud")
        alert = await watcher.wait(
            lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_verdict", 10
        )
        assert alert is not None
        request = await client.request_promotion(
            alice, model="fraud", version="1", stage="production", root_digest=DIGEST
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model="fraud", version="1", stage="production")
        verdict = await watcher.wait(lambda e: _promotion_for(request.id)(e) and len(e.data.approvers) == 2, 10)
        assert verdict is not None
        assert verdict.data.decision != "promoted"


async def test_request_signed_by_someone_else_is_rejected(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    mallory = actor_key(running.settings, "mallory")
    claims_alice = SigningKey("alice", mallory.private)  # mallory's key, alice's name
    async with client.watch() as watcher:
        await _publish_verdicts(running)
        request = await client.request_promotion(
            claims_alice, model="churn", version="1", stage="production", root_digest=DIGEST
        )
        verdict = await watcher.wait(_promotion_for(request.id), 10)
        assert verdict is not None and verdict.data.decision == "rejected"
        assert await watcher.wait(
            lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_identity", 10
        )


async def test_state_survives_a_restart(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _publish_verdicts(running)
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=DIGEST
        )
        await client.approve(bob, request_id=request.id, model="churn", version="1", stage="production")
        assert await watcher.wait(lambda e: _promotion_for(request.id)(e) and e.data.approvers == ["bob"], 10)
        await running.stop("registry-gate")
        await running.start("registry-gate")
        await client.approve(carol, request_id=request.id, model="churn", version="1", stage="production")
        done = await watcher.wait(lambda e: _promotion_for(request.id)(e) and e.data.decision == "promoted", 10)
    assert done is not None
    assert sorted(done.data.approvers) == ["bob", "carol"]
