"""data-guard on a real bus: access requests decided and audited, read-volume alerts, datasets
encrypted at rest and tampered ciphertext refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer

from shared.crypto import load_or_create_master_key
from shared.events import AuditQuery, DataAccessRequested, Sensitivity
from shared.topology import DATASETS_BUCKET, Subjects
from tests._poll import until


def _csv(path: Path) -> Path:
    x, y = load_breast_cancer(return_X_y=True)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _answers(event_id: str, subject: str) -> Any:
    return lambda e: e.type == subject and e.data.in_reply_to == event_id


async def _upload(running: Any, tmp_path: Path, version: str, **kw: Any) -> Any:
    async with running.client.watch() as watcher:
        event = await running.client.upload_dataset(
            _csv(tmp_path / f"{version}.csv"), dataset="patients", version=version, label="label", **kw
        )
        verdict = await watcher.wait(_answers(event.id, Subjects.VERDICT_DATASET), 30)
    assert verdict is not None
    return verdict


async def _access(running: Any, **kw: Any) -> Any:
    async with running.client.watch() as watcher:
        event = await running.client.request_access(dataset="patients", purpose="train churn model", **kw)
        verdict = await watcher.wait(_answers(event.id, Subjects.VERDICT_ACCESS), 20)
    assert verdict is not None and verdict.signer == "data-guard"
    return verdict


async def _approve(running: Any, request_id: str, approver: str, kind: str = "approval") -> Any:
    """A signed approval (or MFA assertion); returns the access verdict it causes."""
    async with running.client.watch() as watcher:
        event = await running.client.approve_access(
            request_id=request_id, dataset="patients", version="1", kind=kind, approver=approver
        )
        verdict = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_ACCESS
                and e.data.in_reply_to == request_id
                and e.id != request_id
                and e.time >= event.time
            ),
            20,
        )
    assert verdict is not None and verdict.signer == "data-guard"
    return verdict


async def test_confidential_upload_is_stored_encrypted_and_judged_in_memory(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    key = load_or_create_master_key(running.settings.keys_dir)
    verdict = await _upload(
        running,
        tmp_path,
        "1",
        uploader="alice",
        sensitivity=Sensitivity.CONFIDENTIAL,
        readers=["bob"],
        master_key=key,
    )
    stored = await (await running.client.js.object_store(DATASETS_BUCKET)).get("patients/1")
    assert b"label" not in (stored.data or b"")  # ciphertext at rest
    assert verdict.data.decision != "fail", verdict.data.findings
    assert verdict.data.rows == 569
    assert any(f.check == "encryption.at_rest" and f.severity == "info" for f in verdict.data.findings)


async def test_tampered_ciphertext_fails_clearly(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    key = load_or_create_master_key(running.settings.keys_dir)
    store = await running.client.js.object_store(DATASETS_BUCKET)
    original_put = store.put

    async def tampering_put(name: str, data: bytes, **kw: Any) -> Any:
        blob = bytearray(data)
        blob[len(blob) // 2] ^= 0x40  # one bit flipped at rest
        return await original_put(name, bytes(blob), **kw)

    store.put = tampering_put  # type: ignore[method-assign]
    running.client.js.object_store = _returning(store)  # type: ignore[method-assign]
    verdict = await _upload(
        running, tmp_path, "2", uploader="alice", sensitivity=Sensitivity.RESTRICTED, readers=["bob"], master_key=key
    )
    assert verdict.data.decision == "fail"
    assert verdict.data.findings[0].check == "input.decrypt_failed"
    assert "tampered" in verdict.data.findings[0].message


async def test_plaintext_restricted_upload_fails(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    verdict = await _upload(
        running, tmp_path, "3", uploader="alice", sensitivity=Sensitivity.RESTRICTED, readers=["bob"]
    )
    assert verdict.data.decision == "fail"
    assert any(f.check == "encryption.at_rest" and f.severity == "fail" for f in verdict.data.findings)


async def test_access_is_granted_by_signed_approval_and_asserted_mfa_only(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    key = load_or_create_master_key(running.settings.keys_dir)
    await _upload(
        running, tmp_path, "1", uploader="pipeline", sensitivity=Sensitivity.RESTRICTED, readers=["bob"], master_key=key
    )
    first = await _access(running, principal="bob", version="1")
    assert not first.data.allowed
    assert any("approval" in r for r in first.data.reasons) and any("multi-factor" in r for r in first.data.reasons)
    request_id = first.data.in_reply_to
    # mallory (no role) approving and asserting MFA grants nothing; bob cannot approve for himself
    still = await _approve(running, request_id, "mallory")
    assert not still.data.allowed
    still = await _approve(running, request_id, "mallory", kind="mfa")
    assert not still.data.allowed and any("multi-factor" in r for r in still.data.reasons)
    approved = await _approve(running, request_id, "dana")  # the data steward
    assert not approved.data.allowed and not any("approval" in r for r in approved.data.reasons)
    granted = await _approve(running, request_id, "idp", kind="mfa")  # the identity provider
    assert granted.data.allowed, granted.data.reasons
    outsider = await _access(running, principal="carol", version="1")
    assert not outsider.data.allowed
    unknown = await _access(running, principal="bob", version="99")
    assert not unknown.data.allowed

    async def access_rows() -> list[Any] | None:
        page = await running.client.audit_query(AuditQuery(type=Subjects.VERDICT_ACCESS, limit=100))
        return page.entries if len(page.entries) >= 7 else None

    rows = await until(access_rows, what="seven access verdicts in the audit trail")
    assert len(rows) == 7


async def test_access_request_claiming_another_principal_is_refused(bus: Any, tmp_path: Path) -> None:
    """The attack: a producer sends `principal: "bob"` (once unsigned, once signed by mallory)."""
    running = await bus("audit-log", "data-guard")
    await _upload(running, tmp_path, "1", uploader="pipeline", sensitivity=Sensitivity.PUBLIC)
    client = running.client
    claim = DataAccessRequested(principal="bob", dataset="patients", version="1", purpose="exfiltrate")
    async with client.watch() as watcher:
        unsigned = await client.publish(Subjects.DATASET_ACCESS, claim)
        forged = await client.publish(Subjects.DATASET_ACCESS, claim, key=client.actor("mallory"))
        verdicts = [await watcher.wait(_answers(e.id, Subjects.VERDICT_ACCESS), 20) for e in (unsigned, forged)]
        alert = await watcher.wait(
            lambda e: (
                e.type == "mlw.alert.data-guard" and e.data.kind == "forged_identity" and "mallory" in e.data.message
            ),
            20,
        )
    for verdict in verdicts:
        assert verdict is not None and not verdict.data.allowed
        assert verdict.data.reasons[0].startswith("request refused")
    assert verdicts[0] is not None and "not signed" in verdicts[0].data.reasons[0]
    assert verdicts[1] is not None and "signed by 'mallory'" in verdicts[1].data.reasons[0]
    assert alert is not None


async def test_anomalous_read_volume_raises_an_alert(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    await _upload(running, tmp_path, "1", uploader="pipeline", sensitivity=Sensitivity.PUBLIC)
    rng = np.random.default_rng(0)
    for size in rng.integers(900_000, 1_100_000, 6):
        await _access(running, principal="carol", version="1", bytes_requested=int(size))
    async with running.client.watch() as watcher:
        await _access(running, principal="carol", version="1", bytes_requested=2_000_000_000)
        alert = await watcher.wait(lambda e: e.type == "mlw.alert.data-guard", 10)
    assert alert is not None
    assert alert.data.kind == "exfiltration.read_volume"
    assert alert.data.evidence["principal"] == "carol"


def _returning(store: Any) -> Any:
    async def object_store(_bucket: str) -> Any:
        return store

    return object_store
