"""Registry policy changes on a real bus (issue 11): a signed change by a policy-admin becomes the
next version, decisions name the version they were made under, a restart keeps it, and a forged,
unsigned, role-less, stale or malformed change is refused with a signed verdict (every problem
listed), an alert and its audit entries, while the version in force stays."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from mlwarden.bootstrap import actor_key
from mlwarden.cli import main
from shared.events import AuditQuery, PolicyChangeRequested, RegistryStatus
from shared.topology import Subjects
from tests._poll import until
from tests.integration.test_it_registry_lifecycle import ROOTS, _about, _status, _verdicts

ALERT = "mlw.alert.registry-gate"


def _policy_verdict(request_id: str) -> Any:
    return lambda e: e.type == Subjects.VERDICT_POLICY and e.data.request_id == request_id


def _edited(running: Any, **production: Any) -> str:
    data = yaml.safe_load(running.settings.registry_policy_path.read_text())
    data["stages"]["production"].update(production)
    return str(yaml.safe_dump(data, sort_keys=False))


async def _cli(running: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    common = ["--nats", running.settings.nats_url, "--data-dir", str(running.settings.data_dir), "--format", "json"]
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, *common])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return orjson.loads(printed)


async def _audited(running: Any, type_: str, request_ids: set[str]) -> bool:
    page = await running.client.audit_query(AuditQuery(type=type_, subject="policy:registry"))
    return request_ids <= {e.event["data"].get("request_id") or e.event_id for e in page.entries}


async def test_a_signed_change_is_the_next_version_and_survives_a_restart(
    bus: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob = (actor_key(running.settings, n) for n in ("alice", "bob"))
    file_sha = hashlib.sha256(running.settings.registry_policy_path.read_bytes()).hexdigest()
    first = (await _status(running)).policy
    assert first is not None and (first.version, first.applied_by, first.sha256) == (1, "policy-file", file_sha)
    async with client.watch() as watcher:
        await _verdicts(running)
        waiting = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=ROOTS["1"]
        )
        await client.approve(bob, request_id=waiting.id, model="churn", version="1", stage="production")
        pending = await watcher.wait(lambda e: _about(waiting.id, "pending")(e) and e.data.approvers == ["bob"], 20)
        assert pending is not None and pending.data.policy_version == 1

        # paula (policy-admin) publishes production with one approval through the CLI.
        document = _edited(running, approvals=1)
        path = tmp_path / "policy-v2.yaml"
        path.write_text(document)
        published = await _cli(
            running, capsys, "registry", "policy", "apply", str(path), "--reason", "one reviewer is enough",
            "--expected-version", "1", "--actor", "paula",
        )  # fmt: skip
        assert published["type"] == Subjects.POLICY_CHANGE
        assert published["sha256"] == hashlib.sha256(document.encode()).hexdigest()
        applied = await watcher.wait(_policy_verdict(published["request_id"]), 20)
        assert applied is not None and applied.signer == "registry-gate"
        assert (applied.data.decision, applied.data.version, applied.data.previous_version) == ("applied", 2, 1)
        assert applied.data.sha256 == published["sha256"] and applied.data.requester == "paula"
        # The open request is decided again under version 2: bob's approval is now enough.
        promoted = await watcher.wait(_about(waiting.id, "promoted"), 20)
        assert promoted is not None and promoted.data.policy_version == 2

    # Restart: the journal's version 2 is in force, not the file (which still says 2 approvals).
    await running.stop("registry-gate")
    await running.start("registry-gate")
    status = RegistryStatus.model_validate(await _cli(running, capsys, "registry", "status", "--model", "churn"))
    assert status.policy is not None
    assert (status.policy.version, status.policy.applied_by, status.policy.sha256) == (2, "paula", applied.data.sha256)
    assert status.policy.reason == "one reviewer is enough"
    ((_, current),) = [(c.stage, c) for c in status.current]
    assert (current.version, current.policy_version) == ("1", 2)
    async with client.watch() as watcher:
        again = await client.request_promotion(
            alice, model="churn", version="2", stage="production", root_digest=ROOTS["2"]
        )
        await client.approve(bob, request_id=again.id, model="churn", version="2", stage="production")
        done = await watcher.wait(_about(again.id, "promoted"), 20)
        assert done is not None and done.data.policy_version == 2
    await until(
        lambda: _audited(running, Subjects.POLICY_CHANGE, {published["request_id"]}), what="the change is audited"
    )
    await until(
        lambda: _audited(running, Subjects.VERDICT_POLICY, {published["request_id"]}), what="the verdict is audited"
    )


async def test_an_unsigned_forged_or_role_less_change_is_refused(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, mallory = (actor_key(running.settings, n) for n in ("alice", "mallory"))
    weaker = PolicyChangeRequested(document=_edited(running, approvals=1), requester="paula", reason="trust me")
    async with client.watch() as watcher:
        attempts = {
            "unsigned": await client.publish(Subjects.POLICY_CHANGE, weaker, about="policy:registry"),
            # mallory signs a change naming paula: the identity is the key, not the field.
            "forged": await client.publish(Subjects.POLICY_CHANGE, weaker, about="policy:registry", key=mallory),
            # alice signs as herself but holds no policy-admin role.
            "role": await client.change_registry_policy(alice, weaker.document, reason="mine"),
        }
        reasons: dict[str, list[str]] = {}
        for how, event in attempts.items():
            refused = await watcher.wait(_policy_verdict(event.id), 20)
            assert refused is not None and refused.signer == "registry-gate", how
            assert (refused.data.decision, refused.data.version) == ("rejected", 1), how
            reasons[how] = refused.data.problems
            alert = await watcher.wait(
                lambda e, i=event.id: e.type == ALERT and e.data.kind == "forged_identity" and i in e.data.message, 20
            )
            assert alert is not None, how
        assert any("not signed" in r for r in reasons["unsigned"])
        assert any("signed by 'mallory'" in r for r in reasons["forged"])
        assert any("policy-admin" in r for r in reasons["role"])
    await until(running.settled, what="registry-gate consumed every change")
    policy = (await _status(running)).policy
    assert policy is not None and (policy.version, policy.applied_by) == (1, "policy-file")
    ids = {e.id for e in attempts.values()}
    await until(lambda: _audited(running, Subjects.VERDICT_POLICY, ids), what="the three signed rejections audited")


async def test_a_malformed_stale_or_file_edited_change_is_refused_and_the_old_stays(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    client = running.client
    paula = actor_key(running.settings, "paula")
    data = yaml.safe_load(running.settings.registry_policy_path.read_text())
    data["stages"]["production"].update(approvals=0, request_ttl_s="soon")
    data["stages"]["qa"] = {"approver_roles": ["reviwer"]}
    async with client.watch() as watcher:
        bad = await client.change_registry_policy(paula, yaml.safe_dump(data), reason="oops")
        refused = await watcher.wait(_policy_verdict(bad.id), 20)
        assert refused is not None and refused.signer == "registry-gate"
        assert (refused.data.decision, refused.data.version, refused.data.requester) == ("rejected", 1, "paula")
        problems = " | ".join(refused.data.problems)
        for expected in ("stages.production.request_ttl_s", "undeclared role 'reviwer'", "two-person rule"):
            assert expected in problems, (expected, problems)
        alert = await watcher.wait(lambda e: e.type == ALERT and e.data.kind == "policy_rejected", 20)
        assert alert is not None and alert.data.evidence["problems"] == len(refused.data.problems)

        # A change made against a version that is no longer in force is refused too.
        stale = await client.change_registry_policy(
            paula, _edited(running, approvals=3), reason="late", expected_version=5
        )
        late = await watcher.wait(_policy_verdict(stale.id), 20)
        assert late is not None and late.data.decision == "rejected"
        assert any("version 1 is in force" in p for p in late.data.problems)
    await until(running.settled, what="registry-gate consumed both changes")
    await running.stop("registry-gate")
    # Whoever can write the file cannot change the policy with it: after the first start the
    # file is not a change (that takes a signed one); it is alerted and ignored.
    running.settings.registry_policy_path.write_text(_edited(running, approvals=1))
    async with client.watch() as watcher:
        await running.start("registry-gate")
        ignored = await watcher.wait(lambda e: e.type == ALERT and e.data.kind == "policy_file_ignored", 20)
        assert ignored is not None and ignored.data.evidence["version"] == 1
    policy = (await _status(running)).policy
    assert policy is not None and (policy.version, policy.applied_by) == (1, "policy-file")
    await until(lambda: _audited(running, Subjects.VERDICT_POLICY, {bad.id, stale.id}), what="both rejections audited")

    async def alert_audited() -> bool:
        page = await client.audit_query(AuditQuery(type=ALERT, service="registry-gate"))
        return any(e.event["data"]["kind"] == "policy_rejected" for e in page.entries)

    await until(alert_audited, what="the policy_rejected alert is audited")
