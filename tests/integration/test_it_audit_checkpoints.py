"""audit-log on a real bus: checkpoints in MLW_CHECKPOINTS, proofs over request/reply, and
`mlwarden audit verify` reading the stream, before and after an attack on the database."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, text

from mlwarden.cli import main
from services.audit_log import merkle
from services.audit_log.app import latest_published_checkpoint
from services.audit_log.checkpoint import CheckpointError, sign_checkpoint, verify_checkpoint
from services.audit_log.proof import check_inclusion_proof
from services.audit_log.settings import mirror_path
from services.audit_log.store import AuditStore, IncomingEvent
from shared.bus import load_trust
from shared.envelope import decode
from shared.events import AuditCheckpoint, AuditCheckpointReply, AuditInclusionProof, DatasetRef
from shared.service import reply_or_error
from shared.signing import SigningKey, load_public_key
from shared.topology import CHECKPOINTS, Subjects
from shared.trust import load_root_public
from tests._poll import until

N = 12


@pytest.fixture
async def audit(bus: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MLW_AUDIT_CHECKPOINT_EVERY", "5")
    monkeypatch.setenv("MLW_AUDIT_CHECKPOINT_INTERVAL_S", "0.5")
    running = await bus("audit-log")
    sent = [
        await running.client.publish(
            "mlw.dataset.uploaded", DatasetRef(dataset=f"d{i}", version="1", sha256="a" * 64), about=f"dataset:d{i}:1"
        )
        for i in range(N)
    ]
    store: AuditStore = running.apps["audit-log"].state["store"]

    async def covering() -> bool:
        cp = await latest_published_checkpoint(running.client.js)
        return cp is not None and cp.tree_size == N

    await until(covering, what="a published checkpoint covering every entry")
    assert store.count() == N
    return running, sent, store


async def test_checkpoints_are_published_signed_and_consistent(audit: Any) -> None:
    running, _, store = audit
    trust = await load_trust(running.client.js, load_root_public(None, running.settings.keys_dir))
    assert "audit-log" in trust
    # Every entry is covered; the stream and the mirror agree on the newest one.
    raw = await running.client.request(Subjects.AUDIT_CHECKPOINT, orjson.dumps({"from_size": 5}))
    reply = reply_or_error(raw, AuditCheckpointReply)
    assert isinstance(reply, AuditCheckpointReply)
    cp = reply.checkpoint
    assert cp.tree_size == N and cp.root_hash == store.root(N).hex()
    mirror = orjson.loads(mirror_path(running.settings.data_dir).read_text().splitlines()[-1])
    assert mirror["tree_size"] == N
    older = store.root(5)
    merkle.verify_consistency(
        5, N, older, bytes.fromhex(cp.root_hash), [bytes.fromhex(h) for h in reply.consistency_path]
    )


async def test_proof_over_the_bus_checks_offline(audit: Any) -> None:
    running, sent, _ = audit
    raw = await running.client.request(Subjects.AUDIT_PROOF, orjson.dumps({"event_id": sent[7].id}))
    proof = reply_or_error(raw, AuditInclusionProof)
    assert isinstance(proof, AuditInclusionProof)
    # The auditor's copy of the public key: the trust store entry.
    trust = await load_trust(running.client.js, load_root_public(None, running.settings.keys_dir), ["audit-log"])
    public_b64 = trust.public_b64("audit-log")
    assert public_b64 is not None
    public = load_public_key(public_b64)
    checked = check_inclusion_proof(proof, public)
    assert checked.event["id"] == sent[7].id
    raw = await running.client.request(Subjects.AUDIT_PROOF, orjson.dumps({"event_id": "missing"}))
    assert b'"error"' in raw


async def test_verify_reads_the_stream_and_catches_a_rewritten_history(
    audit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    running, _, store = audit
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["audit", "verify", "--data-dir", str(running.settings.data_dir), "--nats", running.settings.nats_url]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "NATS stream MLW_CHECKPOINTS" in captured.err
    await running.stop("audit-log")
    # The attacker controls the database and the data folder, not the stream: they drop the
    # triggers, remove the newest entries with chain and tree recomputed, and delete the mirror.
    items = [
        IncomingEvent(**{f.name: getattr(e, f.name) for f in dataclasses.fields(IncomingEvent)})
        for e in store.iter_entries()
    ][:-3]
    with store.engine.begin() as conn:
        for table in ("audit_entries", "audit_tree"):
            for op in ("update", "delete"):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{op}"))
        conn.execute(delete(store.table))
        conn.execute(delete(store.tree_table))
    store.append_batch(items)
    mirror_path(running.settings.data_dir).unlink()
    code = await asyncio.to_thread(
        main, ["audit", "verify", "--data-dir", str(running.settings.data_dir), "--nats", running.settings.nats_url]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "TAMPERED" in captured.out and "removed" in captured.out
    # Restarted on the truncated database, audit-log refuses to sign the shorter history.
    async with running.client.watch(("mlw.alert.>",)) as watcher:
        await running.start("audit-log")
        await running.client.publish(
            "mlw.dataset.uploaded", DatasetRef(dataset="late", version="1", sha256="b" * 64), about="dataset:late:1"
        )
        alert = await watcher.wait(lambda e: e.data.kind == "checkpoint_refused", 10)
    assert alert is not None
    newest = await latest_published_checkpoint(running.client.js)
    assert newest is not None and newest.tree_size == N


# --- issue 8: audit-log verifies what it records ----------------------------------------------


def _raw_envelope(event_id: str, type_: str, data: dict[str, Any], *, source: str = "tests/producer") -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": type_,
            "time": "2026-01-01T00:00:00Z",
            "subject": "model:churn:3",
            "datacontenttype": "application/json",
            "data": data,
        }
    )


async def _poll(check: Any, what: str, deadline_s: float = 15.0) -> Any:
    """Poll `check()` until it returns something truthy, or fail after `deadline_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _letters(store: AuditStore) -> list[dict[str, Any]]:
    return [orjson.loads(e.body)["data"] for e in store.iter_entries() if e.type == Subjects.deadletter("audit-log")]


async def test_an_event_claiming_another_type_than_its_subject_is_recorded_as_a_rejection(bus: Any) -> None:
    running = await bus("audit-log")
    store: AuditStore = running.apps["audit-log"].state["store"]
    # A producer may publish predictions; it claims its message is registry-gate's promotion verdict.
    forged = _raw_envelope(
        "forged-verdict",
        Subjects.VERDICT_PROMOTION,
        {"model": "churn", "version": "3", "stage": "production", "decision": "approved"},
        source="mlwarden/registry-gate",
    )
    await running.client.js.publish(Subjects.PREDICTION_LOGGED, forged, headers={"Nats-Msg-Id": "forged-verdict"})
    letters = await _poll(
        lambda: [d for d in _letters(store) if d["original_subject"] == Subjects.PREDICTION_LOGGED],
        "the rejection of the mislabelled event",
    )
    assert Subjects.VERDICT_PROMOTION in letters[0]["reason"]
    assert Subjects.PREDICTION_LOGGED in letters[0]["reason"]
    entries = list(store.iter_entries())
    assert not [e for e in entries if e.type == Subjects.VERDICT_PROMOTION]
    assert not [e for e in entries if e.event_id == "forged-verdict"]
    assert not [e for e in entries if e.decision == "approved" or e.service == "registry-gate"]


async def test_an_event_id_replayed_with_other_content_is_kept_as_evidence_and_alerted(bus: Any) -> None:
    running = await bus("audit-log")
    store: AuditStore = running.apps["audit-log"].state["store"]
    subject = Subjects.DATASET_UPLOADED
    first = _raw_envelope("e-1", subject, {"dataset": "iris", "version": "1", "sha256": "a" * 64})
    second = _raw_envelope("e-1", subject, {"dataset": "iris", "version": "1", "sha256": "b" * 64})
    await running.client.js.publish(subject, first, headers={"Nats-Msg-Id": "e-1"})
    await _poll(lambda: store.find("e-1"), "the first copy")
    async with running.client.watch(("mlw.alert.>",)) as watcher:
        # Another Nats-Msg-Id gets it past JetStream's duplicate window; the envelope id is the same.
        await running.client.js.publish(subject, second, headers={"Nats-Msg-Id": "e-1-again"})
        alert = await watcher.wait(lambda e: e.data.kind == "equivocation", 15)
    assert alert is not None
    assert alert.data.evidence["event_id"] == "e-1"
    records = await _poll(
        lambda: [e for e in store.iter_entries() if e.type == "mlw.audit.equivocation"], "the equivocation entry"
    )
    assert len(records) == 1
    data = orjson.loads(records[0].body)["data"]
    assert data["event_id"] == "e-1"
    assert data["second_body"] == second.decode()
    assert {data["first_sha256"], data["second_sha256"]} == {
        hashlib.sha256(first).hexdigest(),
        hashlib.sha256(second).hexdigest(),
    }
    assert alert.data.evidence["second_sha256"] == data["second_sha256"]
    # The original entry is untouched; an identical redelivery of either copy adds nothing.
    original = store.find("e-1")
    assert original is not None and original.body == first.decode()

    def recorded() -> list[str]:
        return [e.event_id for e in store.iter_entries() if e.type != Subjects.alert("audit-log")]

    before = recorded()
    await running.client.js.publish(subject, first, headers={"Nats-Msg-Id": "e-1-third"})
    await running.client.js.publish(subject, second, headers={"Nats-Msg-Id": "e-1-fourth"})
    marker = _raw_envelope("after", subject, {"dataset": "iris", "version": "2", "sha256": "c" * 64})
    await running.client.js.publish(subject, marker, headers={"Nats-Msg-Id": "after"})
    await _poll(lambda: store.find("after"), "the marker event")
    # Same stream, one durable: both copies were handled before the marker was stored.
    assert recorded() == [*before, "after"]


def _verify_argv(running: Any, *extra: str, nats_url: str | None = None) -> list[str]:
    data_dir = str(running.settings.data_dir)
    return ["audit", "verify", "--data-dir", data_dir, "--nats", nats_url or running.settings.nats_url, *extra]


async def test_verify_reports_checkpoints_removed_from_the_stream(
    audit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    running, _, _ = audit
    await running.stop("audit-log")
    js = running.client.js
    info = await js.stream_info(CHECKPOINTS.name)
    published = [(await js.get_msg(CHECKPOINTS.name, seq)).data for seq in range(1, info.state.last_seq + 1)]
    assert len(published) >= 2
    # An operator-level attacker cannot delete from the stream (deny_delete), so they delete the
    # stream itself, recreate it without the protection, put back all but the newest checkpoint
    # (the first one twice) and remove the first message.
    await js.delete_stream(CHECKPOINTS.name)
    await js.add_stream(dataclasses.replace(CHECKPOINTS.config(), deny_delete=False, deny_purge=False))
    for data in [published[0], *published[:-1]]:
        await js.publish(Subjects.AUDIT_CHECKPOINTS, data)
    await js.delete_msg(CHECKPOINTS.name, 1)
    capsys.readouterr()
    code = await asyncio.to_thread(main, _verify_argv(running, "--format", "json"))
    report = orjson.loads(capsys.readouterr().out)
    assert code == 1, report
    assert report["stream_gaps"] == ["1"]
    newest = decode(published[-1], AuditCheckpoint).data.tree_size
    assert newest in report["missing_from_stream"]
    assert "removed from the stream" in report["reason"]


async def test_a_kept_checkpoint_catches_truncation_when_stream_and_mirror_are_gone(
    audit: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    running, _, store = audit
    witness = tmp_path / "auditor" / "checkpoint.json"
    base = ["audit", "checkpoint", "--data-dir", str(running.settings.data_dir)]
    code = await asyncio.to_thread(main, [*base, "--nats", running.settings.nats_url, "--out", str(witness)])
    assert code == 0, capsys.readouterr()
    kept = AuditCheckpoint.model_validate_json(witness.read_bytes())
    assert kept.tree_size == N and kept.root_hash == store.root(N).hex()
    # The auditor's copy of audit-log's public key, from the trust store.
    trust = await load_trust(running.client.js, load_root_public(None, running.settings.keys_dir), ["audit-log"])
    public = trust.public_b64("audit-log")
    assert public is not None
    key = tmp_path / "auditor" / "audit-log.pub"
    key.write_text(public)
    # A later run with more entries extends the kept checkpoint (proven consistent).
    await running.client.publish(
        "mlw.dataset.uploaded", DatasetRef(dataset="more", version="1", sha256="c" * 64), about="dataset:more:1"
    )

    def grown() -> bool:
        # audit-log signs the new entry within its interval; until then the kept one is current.
        assert main([*base, "--nats", running.settings.nats_url, "--out", str(witness)]) == 0
        return AuditCheckpoint.model_validate_json(witness.read_bytes()).tree_size > N

    await _poll(grown, "a checkpoint covering the new entry")
    await running.stop("audit-log")
    # The attacker truncates the database (chain and tree recomputed) and removes the mirror; the
    # bus is out of reach of the verifier.
    items = [
        IncomingEvent(**{f.name: getattr(e, f.name) for f in dataclasses.fields(IncomingEvent)})
        for e in store.iter_entries()
    ][:N]
    with store.engine.begin() as conn:
        for table in ("audit_entries", "audit_tree"):
            for op in ("update", "delete"):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{op}"))
        conn.execute(delete(store.table))
        conn.execute(delete(store.tree_table))
    store.append_batch(items)
    mirror_path(running.settings.data_dir).unlink()
    no_bus = "nats://127.0.0.1:1"
    capsys.readouterr()
    code = await asyncio.to_thread(main, _verify_argv(running, "--format", "json", nats_url=no_bus))
    unanchored = orjson.loads(capsys.readouterr().out)
    assert (code, unanchored["anchored"]) == (1, False)
    trusted = ["--trusted-checkpoint", str(witness), "--key", str(key)]
    code = await asyncio.to_thread(main, _verify_argv(running, *trusted, "--format", "json", nats_url=no_bus))
    report = orjson.loads(capsys.readouterr().out)
    assert code == 1, report
    assert "removed" in report["reason"]


async def test_no_audit_command_prints_the_nats_password(
    audit: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    running, _, _ = audit
    # The auditor's env file puts user and password in the URL (`mlwarden nats-config`).
    url = running.settings.nats_url.replace("nats://", "nats://auditor:s3cret-pw@")
    capsys.readouterr()
    argv = ["audit", "verify", "--data-dir", str(running.settings.data_dir), "--nats", url]
    assert await asyncio.to_thread(main, argv) == 0
    argv = ["audit", "checkpoint", "--data-dir", str(running.settings.data_dir), "--nats", url]
    assert await asyncio.to_thread(main, [*argv, "--out", str(tmp_path / "cp.json")]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "s3cret-pw" not in printed
    assert "auditor:***@" in printed


async def test_checkpoints_signed_before_a_key_rotation_still_verify(
    audit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8: a rotated key verifies history but signs nothing new."""
    running, _, _ = audit
    old = await latest_published_checkpoint(running.client.js)
    assert old is not None
    data_dir = str(running.settings.data_dir)
    assert (
        await asyncio.to_thread(
            main, ["keys", "rotate", "audit-log", "--data-dir", data_dir, "--nats", running.settings.nats_url]
        )
        == 0
    )
    await running.stop("audit-log")
    await running.start("audit-log")  # now signing with the new key
    await running.client.publish(
        "mlw.dataset.uploaded", DatasetRef(dataset="after", version="1", sha256="b" * 64), about="dataset:after:1"
    )

    async def newer() -> AuditCheckpoint | None:
        cp = await latest_published_checkpoint(running.client.js)
        return cp if cp is not None and cp.tree_size > old.tree_size else None

    new = await until(newer, what="a checkpoint signed with the rotated key")
    trust = await load_trust(running.client.js, load_root_public(None, running.settings.keys_dir), ["audit-log"])
    history = trust.history("audit-log")
    assert history is not None and len(history.periods) == 2
    verify_checkpoint(old, history)  # signed by the first key while it was current
    verify_checkpoint(new, history)
    # the old key may not sign anything new: a checkpoint dated after the rotation does not verify
    old_key = next(p for p in (running.settings.keys_dir).glob("audit-log.pem.*.retired"))
    forged = sign_checkpoint(
        SigningKey.from_pem("audit-log", old_key.read_bytes()),
        new.tree_size,
        bytes.fromhex(new.root_hash),
        timestamp_ms=new.timestamp_ms,
    )
    with pytest.raises(CheckpointError):
        verify_checkpoint(forged, history)
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["audit", "verify", "--data-dir", data_dir, "--nats", running.settings.nats_url]
    )
    assert code == 0, capsys.readouterr()
