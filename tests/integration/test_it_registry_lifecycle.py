"""registry-gate's lifecycle on a real bus (issue 11): expiry, demotion, rollback, the current
version per stage in `mlw.registry.status`, and all of it across a restart (the journal replays)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from mlwarden.bootstrap import actor_key, load_root_key
from mlwarden.cli import main
from mlwarden.registry_cli import registry_status
from services.registry_gate.policy import RegistryPolicy
from shared.bus import current_entry, revoke_key
from shared.events import (
    ArtifactVerdict,
    AuditQuery,
    DatasetRecallRequested,
    DatasetRef,
    DatasetVerdict,
    Decision,
    DemotionRequested,
    PromotionVerdict,
    RegistryStatus,
    RegistryStatusRequest,
    RollbackRequested,
)
from shared.service import reply_or_error
from shared.signing import SigningKey
from shared.topology import TRUST_BUCKET, Subjects
from shared.trust import load_root_public, revoked_entry, sign_entry
from tests._poll import until

DATA_SHA = "cd" * 32
ROOTS = {"1": "a1" * 32, "2": "a2" * 32}


def _with_stage_rules(running_settings: Any, **production: Any) -> None:
    """Rewrite the bootstrapped policy file's production rules before registry-gate starts."""
    path = running_settings.registry_policy_path
    data = RegistryPolicy.from_yaml(path.read_text()).model_dump(mode="json")
    data["stages"]["production"].update(production)
    path.write_text(RegistryPolicy.from_dict(data).to_yaml())


async def _verdicts(running: Any, versions: tuple[str, ...] = ("1", "2")) -> None:
    keys = running.settings.keys_dir
    guard = SigningKey.from_pem("data-guard", (keys / "data-guard.pem").read_bytes())
    signer = SigningKey.from_pem("artifact-signer", (keys / "artifact-signer.pem").read_bytes())
    client = running.client
    dataset = DatasetVerdict(
        dataset="train", version="1", sha256=DATA_SHA, decision=Decision.PASS, in_reply_to="x", label_checked=True
    )
    await client.publish(Subjects.VERDICT_DATASET, dataset, key=guard)
    for version in versions:
        artifact = ArtifactVerdict(
            model="churn",
            version=version,
            root_digest=ROOTS[version],
            decision=Decision.PASS,
            datasets=[DatasetRef(dataset="train", version="1", sha256=DATA_SHA)],
            builder="ci-bot",
            in_reply_to=f"build-{version}",
            manifest_key=f"churn/{version}/manifest.sig",
            provenance_key=f"churn/{version}/provenance.sig",
        )
        await client.publish(Subjects.VERDICT_ARTIFACT, artifact, key=signer)


def _about(request_id: str, decision: str | None = None) -> Any:
    return lambda e: (
        e.type == Subjects.VERDICT_PROMOTION
        and e.data.request_id == request_id
        and (decision is None or e.data.decision == decision)
    )


async def _status(running: Any, model: str | None = "churn") -> RegistryStatus:
    raw = await running.client.request(
        Subjects.REGISTRY_STATUS, orjson.dumps(RegistryStatusRequest(model=model).model_dump(mode="json"))
    )
    reply = reply_or_error(raw, RegistryStatus)
    assert isinstance(reply, RegistryStatus), reply
    return reply


async def _current(running: Any) -> dict[str, str | None]:
    return {c.stage: c.version for c in (await _status(running)).current}


async def _promote(running: Any, watcher: Any, version: str) -> Any:
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    request = await client.request_promotion(
        alice, model="churn", version=version, stage="production", root_digest=ROOTS[version]
    )
    for approver in (bob, carol):
        await client.approve(approver, request_id=request.id, model="churn", version=version, stage="production")
    done = await watcher.wait(_about(request.id, "promoted"), 20)
    assert done is not None
    return done


async def test_pending_request_expires_and_a_late_approval_does_not_count_across_a_restart(
    bus: Any, settings: Any
) -> None:
    _with_stage_rules(settings, request_ttl_s=1.5)
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _verdicts(running)
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=ROOTS["1"]
        )
        await client.approve(bob, request_id=request.id, model="churn", version="1", stage="production")
        # No event arrives: the periodic tick publishes the expiry.
        expired = await watcher.wait(_about(request.id, "expired"), 20)
        assert expired is not None
        assert any("request expired at" in r for r in expired.data.reasons)
        # A restart replays the expiry from the journal: the late approval still does not count.
        await running.stop("registry-gate")
        await running.start("registry-gate")
        await client.approve(carol, request_id=request.id, model="churn", version="1", stage="production")
        status: PromotionVerdict = await until(
            lambda: _late_refused(running, request.id),
            what="status shows the request expired with carol's approval not counted",
        )
        assert status.decision == "expired" and status.approvers == ["bob"]
    assert await _current(running) == {}


async def _late_refused(running: Any, request_id: str) -> PromotionVerdict | None:
    for verdict in (await _status(running)).promotions:
        if verdict.request_id == request_id and any("after the request expired" in r for r in verdict.reasons):
            return verdict
    return None


async def test_promotion_demotion_and_rollback_across_a_restart(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _verdicts(running)
        first = await _promote(running, watcher, "1")
        # The deploy bot learns exactly which bytes and which bundle.
        assert first.data.root_digest == ROOTS["1"]
        assert first.data.manifest_key == "churn/1/manifest.sig"
        assert first.data.provenance_key == "churn/1/provenance.sig"
        await _promote(running, watcher, "2")
        assert await _current(running) == {"production": "2"}
        # What `mlwarden registry status --model churn` asks and shows.
        shown = await registry_status(running.settings, "churn")
        assert [(c.stage, c.version, c.root_digest) for c in shown.current] == [("production", "2", ROOTS["2"])]

        rollback = await client.publish(
            Subjects.ROLLBACK_REQUESTED,
            RollbackRequested(
                model="churn",
                version="1",
                stage="production",
                requester="alice",
                root_digest=ROOTS["1"],
                reason="v2 misbehaves",
            ),
            about="model:churn:1",
            key=alice,
        )
        await client.approve(bob, request_id=rollback.id, model="churn", version="1", stage="production")
        assert await watcher.wait(lambda e: _about(rollback.id)(e) and e.data.approvers == ["bob"], 20)

        # Restart in the middle: the request, bob's approval and both promotions replay.
        await running.stop("registry-gate")
        await running.start("registry-gate")
        assert await _current(running) == {"production": "2"}
        pending = (await _status(running)).pending
        assert [p.request_id for p in pending] == [rollback.id]

        await client.approve(carol, request_id=rollback.id, model="churn", version="1", stage="production")
        done = await watcher.wait(_about(rollback.id, "promoted"), 20)
        assert done is not None and done.data.action == "rollback"
        assert done.data.manifest_key == "churn/1/manifest.sig"
        assert await _current(running) == {"production": "1"}

        demotion = await client.publish(
            Subjects.DEMOTION_REQUESTED,
            DemotionRequested(model="churn", version="1", stage="production", requester="alice", reason="recall"),
            about="model:churn:1",
            key=alice,
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=demotion.id, model="churn", version="1", stage="production")
        demoted = await watcher.wait(_about(demotion.id, "demoted"), 20)
        assert demoted is not None and demoted.signer == "registry-gate"
    await running.stop("registry-gate")
    await running.start("registry-gate")
    assert await _current(running) == {"production": None}
    assert (await _status(running, model=None)).pending == []


async def test_rollback_to_a_version_never_promoted_is_rejected(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice = actor_key(running.settings, "alice")
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "2")
        rollback = await client.publish(
            Subjects.ROLLBACK_REQUESTED,
            RollbackRequested(
                model="churn", version="1", stage="production", requester="alice", root_digest=ROOTS["1"], reason="r"
            ),
            key=alice,
        )
        verdict = await watcher.wait(_about(rollback.id), 20)
        assert verdict is not None and verdict.data.decision == "rejected"
        assert any("never promoted" in r for r in verdict.data.reasons)


async def test_request_for_an_undeclared_stage_is_rejected(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice = actor_key(running.settings, "alice")
    async with client.watch() as watcher:
        await _verdicts(running)
        request = await client.request_promotion(alice, model="churn", version="1", stage="qa", root_digest=ROOTS["1"])
        verdict = await watcher.wait(_about(request.id), 20)
        assert verdict is not None and verdict.data.decision == "rejected"
        assert any("not declared" in r for r in verdict.data.reasons)


async def test_dataset_turning_fail_recalls_production_after_a_restart(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    guard = SigningKey.from_pem("data-guard", (running.settings.keys_dir / "data-guard.pem").read_bytes())
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        await running.stop("registry-gate")
        await running.start("registry-gate")  # the promotion replays from the journal
        # A re-check with a new reference: the same bytes are now judged fail.
        bad = DatasetVerdict(
            dataset="train", version="1", sha256=DATA_SHA, decision=Decision.FAIL, in_reply_to="recheck"
        )
        await client.publish(Subjects.VERDICT_DATASET, bad, key=guard)
        recalled = await watcher.wait(lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.action == "recall", 20)
        assert recalled is not None
        assert (recalled.data.decision, recalled.data.version, recalled.data.stage) == ("demoted", "1", "production")
        assert recalled.data.root_digest == ROOTS["1"]
        alert = await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "recall", 20)
        assert alert is not None and alert.data.evidence["dataset_sha256"] == DATA_SHA
    status = await _status(running)
    assert [(c.version, c.action) for c in status.current] == [(None, "recall")]
    assert "now judged fail" in status.current[0].reason


def _recall_verdict(request_id: str) -> Any:
    return lambda e: e.type == Subjects.VERDICT_RECALL and e.data.request_id == request_id


async def test_operator_recall_pulls_production_not_staging_across_restarts(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob = (actor_key(running.settings, n) for n in ("alice", "bob"))
    olga_pem = running.settings.actors_dir / "olga.pem"
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        staged = await client.request_promotion(
            alice, model="churn", version="2", stage="staging", root_digest=ROOTS["2"]
        )
        await client.approve(bob, request_id=staged.id, model="churn", version="2", stage="staging")
        assert await watcher.wait(_about(staged.id, "promoted"), 20)
        await running.stop("registry-gate")
        await running.start("registry-gate")

        # What `mlwarden recall dataset train:1 --reason ... --key olga.pem` publishes.
        argv = ["recall", "dataset", "train:1", "--reason", "licence withdrawn", "--key", str(olga_pem)]
        argv += ["--nats", running.settings.nats_url, "--data-dir", str(running.settings.data_dir)]
        assert await asyncio.to_thread(main, argv) == 0
        answer = await watcher.wait(lambda e: e.type == Subjects.VERDICT_RECALL, 20)
        assert answer is not None and answer.signer == "registry-gate"
        assert answer.data.decision == "recalled" and answer.data.requester == "olga"
        assert answer.data.policy_version == 1  # decided under the policy file, version 1
        # The policy says recall for production only (staging's default is recall: false).
        assert [(r.model, r.version, r.stage) for r in answer.data.recalled] == [("churn", "1", "production")]
        pulled = await watcher.wait(lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.action == "recall", 20)
        assert pulled is not None and (pulled.data.version, pulled.data.decision) == ("1", "demoted")
        assert pulled.data.policy_version == 1
        alert = await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "recall", 20)
        assert alert is not None and alert.data.evidence["dataset"] == "train"

    # After another restart the recall replays: status shows why, and v2 cannot enter production.
    await running.stop("registry-gate")
    await running.start("registry-gate")
    current = {c.stage: c for c in (await _status(running)).current}
    assert (current["production"].version, current["production"].action) == (None, "recall")
    assert "recalled by olga: licence withdrawn" in current["production"].reason
    assert current["staging"].version == "2"
    async with client.watch() as watcher:
        again = await client.request_promotion(
            alice, model="churn", version="2", stage="production", root_digest=ROOTS["2"]
        )
        refused = await watcher.wait(_about(again.id, "rejected"), 20)
        assert refused is not None
        assert any("was recalled by olga" in r for r in refused.data.reasons)


async def test_recall_unsigned_forged_or_without_the_role_is_refused(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, mallory = (actor_key(running.settings, n) for n in ("alice", "mallory"))
    recall = DatasetRecallRequested(dataset="train", version="1", requester="olga", reason="trust me")
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        attempts = {
            "unsigned": await client.publish(Subjects.RECALL_REQUESTED, recall, about="dataset:train:1"),
            # mallory signs a request naming olga: the identity is the key, not the field.
            "forged": await client.publish(Subjects.RECALL_REQUESTED, recall, about="dataset:train:1", key=mallory),
            # alice signs as herself but holds no recall-officer role.
            "role": await client.recall_dataset(alice, dataset="train", version="1", reason="mine"),
        }
        reasons: dict[str, list[str]] = {}
        for how, event in attempts.items():
            refused = await watcher.wait(_recall_verdict(event.id), 20)
            assert refused is not None and refused.signer == "registry-gate", how
            assert refused.data.decision == "rejected" and refused.data.recalled == [], how
            reasons[how] = refused.data.reasons
            alert = await watcher.wait(
                lambda e, i=event.id: (
                    e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_identity" and i in e.data.message
                ),
                20,
            )
            assert alert is not None, how
        assert any("not signed" in r for r in reasons["unsigned"])
        assert any("signed by 'mallory'" in r for r in reasons["forged"])
        assert any("recall-officer" in r for r in reasons["role"])
    await until(running.settled, what="registry-gate consumed every recall attempt")
    assert await _current(running) == {"production": "1"}

    async def audited() -> bool:
        page = await client.audit_query(AuditQuery(type=Subjects.VERDICT_RECALL, service="registry-gate"))
        return {e.event["data"]["request_id"] for e in page.entries} == {e.id for e in attempts.values()}

    await until(audited, what="audit-log holds the three signed rejections")


async def test_one_recall_pulling_two_versions_alerts_for_each(bus: Any, settings: Any) -> None:
    # staging recalls too here: one dataset fail pulls churn 1 from production and churn 2 from
    # staging, and each pull gets its own alert (one derived id per pull, not per cause).
    path = settings.registry_policy_path
    data = RegistryPolicy.from_yaml(path.read_text()).model_dump(mode="json")
    data["stages"]["staging"]["recall"] = True
    path.write_text(RegistryPolicy.from_dict(data).to_yaml())
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob = (actor_key(running.settings, n) for n in ("alice", "bob"))
    guard = SigningKey.from_pem("data-guard", (running.settings.keys_dir / "data-guard.pem").read_bytes())
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        staged = await client.request_promotion(
            alice, model="churn", version="2", stage="staging", root_digest=ROOTS["2"]
        )
        await client.approve(bob, request_id=staged.id, model="churn", version="2", stage="staging")
        assert await watcher.wait(_about(staged.id, "promoted"), 20)
        bad = DatasetVerdict(
            dataset="train", version="1", sha256=DATA_SHA, decision=Decision.FAIL, in_reply_to="recheck"
        )
        await client.publish(Subjects.VERDICT_DATASET, bad, key=guard)

        assert await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "recall", 20)

    async def stored() -> set[tuple[str, str]]:
        # The stored record, not the live feed: a core subscriber also sees a publish that
        # JetStream then drops as a duplicate id.
        page = await client.audit_query(AuditQuery(type="mlw.alert.registry-gate", service="registry-gate"))
        evidence = [e.event["data"]["evidence"] for e in page.entries if e.event["data"]["kind"] == "recall"]
        return {(str(v["version"]), str(v["stage"])) for v in evidence}

    await until(running.settled, what="registry-gate consumed the fail verdict")
    await until(lambda: _is(stored(), {("1", "production"), ("2", "staging")}), what="one stored recall alert per pull")
    assert await _current(running) == {"production": None, "staging": None}


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)


def _pulled(version: str) -> Any:
    return lambda e: (
        e.type == Subjects.VERDICT_PROMOTION
        and e.data.action == "recall"
        and e.data.version == version
        and e.data.decision == "demoted"
    )


async def test_key_revoked_while_registry_gate_was_down_pulls_what_it_approved(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")  # approved by bob and carol
        await running.stop("registry-gate")
        await revoke_key(client.js, load_root_key(running.settings), "carol", "laptop stolen")
        await running.start("registry-gate")  # the journal replays; the trust store says revoked
        pulled = await watcher.wait(_pulled("1"), 20)
        assert pulled is not None and pulled.signer == "registry-gate"
        assert any("signing key of carol (who approved it) was revoked" in r for r in pulled.data.reasons)
        alert = await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "recall", 20)
        assert alert is not None and alert.data.evidence["revoked"] == "carol"
    status = await _status(running)
    (current,) = status.current
    assert (current.version, current.action) == (None, "recall") and "carol" in current.reason
    # The promotion carol approved now lacks an approval, but it was decided: it is not pending.
    assert status.pending == []


async def test_revoking_the_artifact_signers_key_pulls_in_a_running_gate(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        await revoke_key(client.js, load_root_key(running.settings), "artifact-signer", "key leaked")
        pulled = await watcher.wait(_pulled("1"), 20)
        assert pulled is not None
        assert any("signing key of artifact-signer (who signed the artifact verdict)" in r for r in pulled.data.reasons)
        # The attack a recall alone leaves open: promote another version on a verdict the
        # compromised key signed before its revocation. It is refused.
        alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
        request = await client.request_promotion(
            alice, model="churn", version="2", stage="production", root_digest=ROOTS["2"]
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model="churn", version="2", stage="production")
        refused = await watcher.wait(lambda e: _about(request.id, "rejected")(e) and len(e.data.approvers) == 2, 20)
        assert refused is not None
        assert any("artifact-signer's signing key was revoked" in r for r in refused.data.reasons)
    assert await _current(running) == {"production": None}


async def test_a_revocation_not_signed_by_the_root_pulls_nothing(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    root = load_root_public(None, running.settings.keys_dir)
    async with client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        # An attacker with write access to the bucket "revokes" carol with their own root key.
        entry = await current_entry(client.js, root, "carol")
        assert entry is not None
        kv = await client.js.key_value(TRUST_BUCKET)
        await kv.put("carol", sign_entry(SigningKey.generate("root"), revoked_entry(entry, "forged")))
        untrusted = await watcher.wait(
            lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "untrusted_key", 20
        )
        assert untrusted is not None
    await until(running.settled, what="registry-gate settled")
    assert await _current(running) == {"production": "1"}
    assert not any(_pulled("1")(e) for e in watcher.events)


async def _cli(running: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run `mlwarden ARGV --format json` in-process against the test's bus; its JSON output."""
    common = ["--nats", running.settings.nats_url, "--data-dir", str(running.settings.data_dir), "--format", "json"]
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, *common])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return orjson.loads(printed)


async def test_demotion_and_rollback_through_the_cli(bus: Any, capsys: pytest.CaptureFixture[str]) -> None:
    running = await bus("audit-log", "registry-gate")
    async with running.client.watch() as watcher:
        await _verdicts(running)
        await _promote(running, watcher, "1")
        await _promote(running, watcher, "2")

        # `mlwarden publish demotion` signed by alice, approved by bob and carol through the CLI.
        where = ("--model", "churn", "--stage", "production")
        demotion = await _cli(
            running, capsys, "publish", "demotion", *where, "--version", "2", "--reason", "drift", "--actor", "alice"
        )
        assert demotion["type"] == Subjects.DEMOTION_REQUESTED and demotion["request_id"] == demotion["id"]
        for reviewer in ("bob", "carol"):
            approval = await _cli(
                running, capsys, "publish", "approval", *where, "--version", "2", "--request-id", demotion["id"],
                "--actor", reviewer,
            )  # fmt: skip
            assert approval["request_id"] == demotion["id"] and approval["type"] == Subjects.APPROVAL_GIVEN
        demoted = await watcher.wait(_about(demotion["id"], "demoted"), 20)
        assert demoted is not None and demoted.data.requester == "alice"
        assert sorted(demoted.data.approvers) == ["bob", "carol"]

        # `mlwarden publish rollback` to version 1, by the root digest it was promoted with.
        rollback = await _cli(
            running, capsys, "publish", "rollback", *where, "--version", "1", "--root-digest", ROOTS["1"],
            "--reason", "v2 drifted", "--actor", "alice",
        )  # fmt: skip
        assert rollback["type"] == Subjects.ROLLBACK_REQUESTED and rollback["request_id"] == rollback["id"]
        for reviewer in ("bob", "carol"):
            await _cli(
                running, capsys, "publish", "approval", *where, "--version", "1", "--request-id", rollback["id"],
                "--actor", reviewer,
            )  # fmt: skip
        done = await watcher.wait(_about(rollback["id"], "promoted"), 20)
        assert done is not None and done.data.action == "rollback" and done.data.root_digest == ROOTS["1"]

    status = RegistryStatus.model_validate(await _cli(running, capsys, "registry", "status", "--model", "churn"))
    (current,) = status.current
    assert (current.stage, current.version, current.action, current.request_id) == (
        "production",
        "1",
        "rollback",
        rollback["id"],
    )
    assert current.root_digest == ROOTS["1"] and status.pending == []
    decided = {p.request_id: (p.action, p.decision) for p in status.promotions}
    assert decided[demotion["id"]] == ("demotion", "demoted")
    assert decided[rollback["id"]] == ("rollback", "promoted")
