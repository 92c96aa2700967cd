"""Inclusion proofs from the stored tree, checked offline; `audit prove` and `audit check-proof`."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from mlwarden.cli import main
from services.audit_log import merkle
from services.audit_log.checkpoint import CheckpointError, CheckpointMirror, sign_checkpoint
from services.audit_log.merkle import ProofError
from services.audit_log.proof import EntryNotFoundError, build_inclusion_proof, check_inclusion_proof
from services.audit_log.settings import mirror_path
from services.audit_log.store import AuditStore, IncomingEvent
from shared.canonical import canonical_json
from shared.events import AuditInclusionProof
from shared.signing import SigningKey, load_or_create_key

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]
N = 23


@pytest.fixture
def filled(store: AuditStore, event_bytes: EventFactory) -> AuditStore:
    items = [
        IncomingEvent.from_bytes(event_bytes(event_id=f"p{i}", time=1_700_000_000.0 + i), recorded_at=2.0)
        for i in range(N)
    ]
    for start in range(0, N, 6):
        store.append_batch(items[start : start + 6])
    return store


KEY = SigningKey.generate("audit-log")


def test_every_entry_proves_against_every_checkpoint_size(filled: AuditStore) -> None:
    public = KEY.private.public_key()
    leaves = [merkle.leaf_hash(e.leaf_input()) for e in filled.iter_entries()]
    for size in (1, 2, 7, 16, N):
        cp = sign_checkpoint(KEY, size, filled.root(size), timestamp_ms=1)
        assert cp.root_hash == merkle.root_of(leaves[:size]).hex()
        for index in range(size):
            proof = build_inclusion_proof(filled, cp, leaf_index=index)
            checked = check_inclusion_proof(proof, public)
            assert checked.event_id == f"p{index}" and checked.event["id"] == f"p{index}"


def test_proof_by_event_id_and_unknown_ids(filled: AuditStore) -> None:
    cp = sign_checkpoint(KEY, 10, filled.root(10), timestamp_ms=1)
    assert build_inclusion_proof(filled, cp, event_id="p4").leaf_index == 4
    with pytest.raises(EntryNotFoundError):
        build_inclusion_proof(filled, cp, event_id="nope")
    with pytest.raises(EntryNotFoundError, match="newer than the checkpoint"):
        build_inclusion_proof(filled, cp, event_id="p15")


def _proof(store: AuditStore) -> AuditInclusionProof:
    cp = sign_checkpoint(KEY, N, store.root(N), timestamp_ms=1)
    return build_inclusion_proof(store, cp, event_id="p9")


def test_a_changed_entry_does_not_prove(filled: AuditStore) -> None:
    proof = _proof(filled)
    entry = orjson.loads(base64.b64decode(proof.leaf_input))
    entry["body"] = entry["body"].replace("p9", "p9", 1).replace('"data":{}', '"data":{"x":1}')
    forged = base64.b64encode(canonical_json(entry)).decode()
    with pytest.raises(ProofError):
        check_inclusion_proof(proof.model_copy(update={"leaf_input": forged}), KEY.private.public_key())


@pytest.mark.parametrize(
    "change",
    [
        lambda p: {"leaf_index": p.leaf_index + 1},
        lambda p: {"event_id": "p8"},
        lambda p: {"inclusion_path": p.inclusion_path[:-1]},
        lambda p: {"inclusion_path": [*p.inclusion_path[:1], "00" * 32, *p.inclusion_path[2:]]},
        lambda p: {"tree_size": p.tree_size + 1},
        lambda p: {"leaf_input": "not base64!"},
    ],
    ids=["index", "event-id", "short-path", "wrong-node", "size", "garbage"],
)
def test_a_doctored_proof_is_refused(
    filled: AuditStore, change: Callable[[AuditInclusionProof], dict[str, object]]
) -> None:
    proof = _proof(filled)
    with pytest.raises(ProofError):
        check_inclusion_proof(proof.model_copy(update=change(proof)), KEY.private.public_key())


def test_a_checkpoint_with_another_root_or_key_is_refused(filled: AuditStore) -> None:
    proof = _proof(filled)
    moved = proof.checkpoint.model_copy(update={"root_hash": "ab" * 32})
    with pytest.raises(CheckpointError):
        check_inclusion_proof(proof.model_copy(update={"checkpoint": moved}), KEY.private.public_key())
    with pytest.raises(CheckpointError):
        check_inclusion_proof(proof, SigningKey.generate("audit-log").private.public_key())


def test_prove_and_check_proof_on_the_command_line(
    filled: AuditStore, db_target: DbTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    key = load_or_create_key(data / "keys" / "audit-log.pem", "audit-log")
    CheckpointMirror(mirror_path(data)).append(sign_checkpoint(key, N, filled.root(N), timestamp_ms=1))
    (data / "audit-log.pub").write_bytes(key.public_pem())
    out = tmp_path / "proof.json"
    common = ["--data-dir", str(data), "--db", db_target.cli_url, "--nats", "nats://127.0.0.1:1"]
    assert main(["audit", "prove", "p9", *common, "--out", str(out)]) == 0
    assert "proving from the local database" in capsys.readouterr().err
    # Offline, with the public key only (another folder: nothing else is available).
    assert (
        main(["audit", "check-proof", str(out), "--key", str(data / "audit-log.pub"), "--data-dir", "/nonexistent"])
        == 0
    )
    assert "valid" in capsys.readouterr().out
    doc = orjson.loads(out.read_bytes())
    doc["leaf_index"] = 8
    out.write_bytes(orjson.dumps(doc))
    assert main(["audit", "check-proof", str(out), "--key", str(data / "audit-log.pub")]) == 1
    out.write_text("{}")
    assert main(["audit", "check-proof", str(out), "--key", str(data / "audit-log.pub")]) == 2
    assert main(["audit", "prove", "unknown-event", *common]) == 2


def test_the_reference_verifier_in_the_docs_accepts_a_proof_and_refuses_a_forgery(filled: AuditStore) -> None:
    # docs/audit-proofs.md promises third parties a verifier with hashlib and cryptography only.
    doc = (Path(__file__).resolve().parents[3] / "docs" / "audit-proofs.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "audit-proofs.md", "exec"), namespace)  # our own documentation's code
    check = namespace["check"]
    proof = orjson.loads(_proof(filled).model_dump_json())
    raw_key = base64.b64decode(KEY.public_b64())
    assert check(proof, raw_key)["id"] == "p9"  # type: ignore[operator]
    proof["inclusion_path"][0] = "00" * 32
    with pytest.raises(AssertionError):
        check(proof, raw_key)  # type: ignore[operator]
