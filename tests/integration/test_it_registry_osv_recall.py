"""Recall on a newly known vulnerability (issue 11) on a real bus: artifact-signer notices that its
OSV database was replaced, re-checks the signed builds' locked dependencies, publishes a signed
`fail` verdict for the build that locks a now-vulnerable version, and registry-gate (restarted in
the middle) pulls it from production. A forged `fail` verdict pulls nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mlwarden.bootstrap import actor_key
from mlwarden.registry_cli import registry_bom
from shared.events import ArtifactVerdict, Decision
from shared.signing import SigningKey
from shared.topology import Subjects
from tests._poll import until
from tests.integration.test_it_registry_bom import TRAIN, _build_on_passed_data, _model_dir
from tests.integration.test_it_registry_lifecycle import _current, _status
from tests.unit.artifact_signer.test_as_recheck import advisory


async def test_osv_update_recalls_the_build_that_locks_a_now_vulnerable_version(
    bus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    osv = tmp_path / "osv"
    osv.mkdir()
    (osv / "GHSA-old.json").write_bytes(orjson.dumps(advisory("GHSA-old", "requests", "2.1.0")))
    monkeypatch.setenv("MLW_ARTIFACT_OSV_DB", str(osv))
    monkeypatch.setenv("MLW_ARTIFACT_OSV_RELOAD_S", "0.2")
    running = await bus("audit-log", "artifact-signer", "registry-gate")
    client, settings = running.client, running.settings
    guard = SigningKey.from_pem("data-guard", (settings.keys_dir / "data-guard.pem").read_bytes())
    alice, bob, carol = (actor_key(settings, n) for n in ("alice", "bob", "carol"))
    folder = _model_dir(settings.files_dir / "artifacts" / "churn-1")
    async with client.watch() as watcher:
        built = await _build_on_passed_data(client, watcher, guard, folder)
        assert built is not None and built.data.decision == "pass", built and built.data.findings
        root = built.data.root_digest
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=root
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model="churn", version="1", stage="production")
        promoted = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_PROMOTION
                and e.data.request_id == request.id
                and e.data.decision == "promoted"
            ),
            20,
        )
        assert promoted is not None
        await running.stop("registry-gate")
        await running.start("registry-gate")  # the promotion replays from the journal

        # The attack first: a `fail` verdict not signed by artifact-signer pulls nothing.
        forged = built.data.model_copy(update={"decision": Decision.FAIL, "in_reply_to": "forged"})
        await client.publish(Subjects.VERDICT_ARTIFACT, forged, about="model:churn:1", key=alice)
        assert await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_verdict", 20)
        await until(running.settled, what="registry-gate consumed the forged verdict")
        assert await _current(running) == {"production": "1"}

        # The OSV mirror is refreshed with an advisory for the locked numpy 2.4.6.
        (osv / "GHSA-new.json").write_bytes(orjson.dumps(advisory("GHSA-new", "numpy", "2.4.7")))
        failed = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_ARTIFACT and e.data.decision == "fail" and e.signer == "artifact-signer"
            ),
            30,
        )
        assert failed is not None
        verdict: ArtifactVerdict = failed.data
        assert verdict.root_digest == root and verdict.datasets == [TRAIN] and verdict.builder == "ci-bot"
        assert any("numpy==2.4.6: GHSA-new" in f.message for f in verdict.findings)
        pulled = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.action == "recall" and e.data.version == "1", 20
        )
        assert pulled is not None and pulled.data.decision == "demoted"
        alert = await watcher.wait(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "recall", 20)
        assert alert is not None and alert.data.evidence["artifact_verdict"] == failed.id
    (current,) = (await _status(running)).current
    assert (current.version, current.action) == (None, "recall")
    assert "GHSA-new" in current.reason

    # The BOM of the version tells the whole story from the signed record: promoted, then recalled,
    # and the advisory that did it, on the locked numpy component.
    async def bom_with_recall() -> dict[str, Any] | None:
        bom: dict[str, Any] = orjson.loads(await registry_bom(settings, "churn", "1"))
        props = [p["name"] for p in bom["metadata"]["component"]["properties"]]
        return bom if "mlwarden:stage-change" in props and bom.get("vulnerabilities") else None

    bom = await until(bom_with_recall, what="the audit trail holds the recall and the fail verdict")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(orjson.dumps(bom).decode()) is None
    (vuln,) = bom["vulnerabilities"]
    assert vuln["id"] == "GHSA-new" and vuln["affects"] == [{"ref": "pkg:pypi/numpy@2.4.6"}]


async def test_osv_database_replaced_while_artifact_signer_was_down_recalls_at_its_start(
    bus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    osv = tmp_path / "osv"
    osv.mkdir()
    monkeypatch.setenv("MLW_ARTIFACT_OSV_DB", str(osv))
    monkeypatch.setenv("MLW_ARTIFACT_OSV_RELOAD_S", "0")  # no polling: only the start-up re-check
    running = await bus("audit-log", "artifact-signer", "registry-gate")
    client, settings = running.client, running.settings
    guard = SigningKey.from_pem("data-guard", (settings.keys_dir / "data-guard.pem").read_bytes())
    alice, bob, carol = (actor_key(settings, n) for n in ("alice", "bob", "carol"))
    folder = _model_dir(settings.files_dir / "artifacts" / "churn-1")
    async with client.watch() as watcher:
        built = await _build_on_passed_data(client, watcher, guard, folder)
        assert built is not None and built.data.decision == "pass"
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=built.data.root_digest
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model="churn", version="1", stage="production")
        assert await watcher.wait(lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.decision == "promoted", 20)
        await running.stop("artifact-signer")
        (osv / "GHSA-new.json").write_bytes(orjson.dumps(advisory("GHSA-new", "numpy", "2.4.7")))
        await running.start("artifact-signer")
        pulled = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.action == "recall" and e.data.version == "1", 30
        )
        assert pulled is not None and any("GHSA-new" in r for r in pulled.data.reasons)
