"""Manifests: real Ed25519 signatures, and every tampering of the files named on verification."""

from __future__ import annotations

import base64
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.artifact_signer.hashing import UnsafePathError, hash_tree, root_digest
from services.artifact_signer.manifest import (
    Manifest,
    SignedManifest,
    build_manifest,
    load_signed_manifest,
    manifest_bytes,
    sign_manifest,
    sign_path,
    verify_artifact,
    verify_manifest,
    verify_path,
    verify_tree,
)
from shared.errors import InputError, SignatureError
from shared.events import DatasetRef
from shared.signing import SigningKey, TrustStore

KEY = SigningKey.generate("artifact-signer")
TRUST = TrustStore({"artifact-signer": KEY.public_b64()})


def make_model(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 3}')
    (root / "weights" / "a.bin").write_bytes(os.urandom(4096))
    (root / "weights" / "b.bin").write_bytes(os.urandom(100))
    return root


def signed_model(tmp_path: Path) -> tuple[Path, SignedManifest]:
    root = make_model(tmp_path / "model")
    manifest = build_manifest(
        root,
        model="churn",
        version="3",
        builder="ci@example",
        datasets=[DatasetRef(dataset="customers", version="7", sha256="a" * 64)],
        lockfile_sha256="b" * 64,
    )
    return root, sign_manifest(manifest, KEY)


def test_signed_manifest_verifies_and_intact_tree_has_no_changes(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    verify_manifest(signed, TRUST)
    assert verify_tree(root, signed) == []
    assert verify_artifact(root, signed, TRUST) == []
    assert signed.manifest.root_digest == root_digest(hash_tree(root))
    assert signed.manifest.total_bytes == 4096 + 100 + len('{"layers": 3}')


def test_signature_is_ed25519_not_a_hash_of_the_manifest(tmp_path: Path) -> None:
    _, signed = signed_model(tmp_path)
    raw = base64.b64decode(signed.signature)
    assert len(raw) == 64
    KEY.private.public_key().verify(raw, manifest_bytes(signed.manifest))  # raises if not


def test_changed_byte_is_named(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    data = bytearray((root / "weights" / "a.bin").read_bytes())
    data[100] ^= 0x01
    (root / "weights" / "a.bin").write_bytes(bytes(data))
    assert verify_tree(root, signed) == ["changed: weights/a.bin"]


def test_added_file_is_named(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    (root / "weights" / "backdoor.pkl").write_bytes(b"x")
    assert verify_tree(root, signed) == ["added: weights/backdoor.pkl"]


def test_removed_file_is_named(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    (root / "config.json").unlink()
    assert verify_tree(root, signed) == ["removed: config.json"]


def test_renamed_file_is_named_with_both_paths(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    (root / "weights" / "b.bin").rename(root / "weights" / "c.bin")
    assert verify_tree(root, signed) == ["renamed: weights/b.bin -> weights/c.bin"]


def test_swapped_files_are_both_named(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    a, b = root / "weights" / "a.bin", root / "weights" / "b.bin"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert verify_tree(root, signed) == ["changed: weights/a.bin", "changed: weights/b.bin"]


def test_symlink_planted_after_signing_is_refused(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    (root / "weights" / "b.bin").unlink()
    (root / "weights" / "b.bin").symlink_to("/etc/hostname")
    with pytest.raises(UnsafePathError):
        verify_tree(root, signed)


def test_forged_signature_from_another_key_fails(tmp_path: Path) -> None:
    _, signed = signed_model(tmp_path)
    forger = SigningKey.generate("artifact-signer")  # same name, different key
    forged = sign_manifest(signed.manifest, forger)
    with pytest.raises(SignatureError):
        verify_manifest(forged, TRUST)


def test_manifest_edited_after_signing_fails(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    # The attacker swaps a weight file and rewrites the manifest to match it.
    (root / "weights" / "a.bin").write_bytes(b"evil weights")
    tampered = build_manifest(root, model="churn", version="3", builder="ci@example", created=signed.manifest.created)
    forged = signed.model_copy(update={"manifest": tampered})
    with pytest.raises(SignatureError):
        verify_manifest(forged, TRUST)
    with pytest.raises(SignatureError):
        verify_artifact(root, forged, TRUST)


def test_provenance_fields_are_covered_by_the_signature(tmp_path: Path) -> None:
    _, signed = signed_model(tmp_path)
    updates: list[dict[str, object]] = [
        {"builder": "attacker"},
        {"datasets": []},
        {"lockfile_sha256": None},
        {"version": "4"},
    ]
    for update in updates:
        forged = signed.model_copy(update={"manifest": signed.manifest.model_copy(update=update)})
        with pytest.raises(SignatureError):
            verify_manifest(forged, TRUST)


def test_unknown_signer_fails(tmp_path: Path) -> None:
    _, signed = signed_model(tmp_path)
    with pytest.raises(SignatureError, match="unknown signer"):
        verify_manifest(signed.model_copy(update={"signer": "someone-else"}), TRUST)


def test_manifest_whose_root_digest_does_not_match_its_files_is_rejected(tmp_path: Path) -> None:
    _, signed = signed_model(tmp_path)
    data = signed.manifest.model_dump(mode="json")
    data["files"] = data["files"][1:]
    with pytest.raises(ValueError, match="root_digest"):
        Manifest.model_validate(data)


def test_manifest_refuses_traversal_paths() -> None:
    files = [{"path": "../../../etc/cron.d/x", "sha256": "0" * 64, "size": 1}]
    with pytest.raises(ValueError, match=r"'\.\.'"):
        Manifest.model_validate(
            {
                "model": "m",
                "version": "1",
                "files": files,
                "root_digest": "0" * 64,
                "builder": "b",
                "created": datetime.now(UTC),
            }
        )


def test_signed_manifest_document_round_trips(tmp_path: Path) -> None:
    root, signed = signed_model(tmp_path)
    document = signed.model_dump_json().encode()
    loaded = load_signed_manifest(document)
    verify_manifest(loaded, TRUST)
    assert verify_tree(root, loaded) == []


# --- offline sign / verify (the CLI) ------------------------------------------------------------


def test_sign_path_then_verify_path_passes(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    document = sign_path(root, KEY, model="churn", version="3")
    result = verify_path(root, document, KEY.public_pem())
    assert result.ok, result.problems
    assert (result.model, result.version, result.files, result.signer) == ("churn", "3", 3, "artifact-signer")
    assert json.loads(document)["signature"]


def test_verify_path_names_each_tampered_file(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    document = sign_path(root, KEY)
    (root / "config.json").write_text('{"layers": 4}')
    (root / "weights" / "b.bin").rename(root / "weights" / "moved.bin")
    (root / "extra.py").write_text("import os")
    result = verify_path(root, document, KEY.public_pem())
    assert not result.ok
    assert result.problems == ["changed: config.json", "added: extra.py", "renamed: weights/b.bin -> weights/moved.bin"]


def test_verify_path_with_the_wrong_public_key_fails(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    document = sign_path(root, KEY)
    result = verify_path(root, document, SigningKey.generate("x").public_pem())
    assert not result.ok
    assert result.problems == ["signature: signature does not verify"]


def test_verify_path_rejects_a_resigned_copy_of_another_model(tmp_path: Path) -> None:
    # The attacker signs their own model with their own key and ships it with that document.
    root = make_model(tmp_path / "model")
    evil = make_model(tmp_path / "evil")
    evil_doc = sign_path(evil, SigningKey.generate("artifact-signer"))
    shutil.rmtree(root)
    shutil.copytree(evil, root)
    assert not verify_path(root, evil_doc, KEY.public_pem()).ok


def test_verify_path_reports_a_single_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights")
    document = sign_path(path, KEY)
    assert verify_path(path, document, KEY.public_pem()).ok
    path.write_bytes(b"weightz")
    assert verify_path(path, document, KEY.public_pem()).problems == ["changed: model.bin"]


def test_verify_path_turns_garbage_inputs_into_input_errors(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    document = sign_path(root, KEY)
    with pytest.raises(InputError):
        verify_path(root, b"not json", KEY.public_pem())
    with pytest.raises(InputError):
        verify_path(root, document, b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")


def test_invalid_manifest_fields_are_input_errors(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    with pytest.raises(InputError, match="model"):
        sign_path(root, KEY, model="my model v1")
