"""OMS v1.0 bundles: format, signatures, strict verification, and interop with `model_signing`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mlwarden.cli import main
from services.artifact_signer.oms import (
    BUNDLE_MEDIA_TYPE,
    PREDICATE_TYPE,
    BundleError,
    PrivateKey,
    Serialization,
    hash_model,
    load_public_key,
    pae,
    sign_model,
    sign_statement,
    verify_model,
    verify_statement,
)
from shared.errors import InputError


def make_model(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 3}')
    (root / "weights" / "a.bin").write_bytes(os.urandom(5000))
    (root / "weights" / "b.bin").write_bytes(os.urandom(100))
    (root / "a.txt").write_text("sorts after the folder a/ in model_signing's order")
    return root


def write_keys(tmp_path: Path, key: PrivateKey, name: str) -> tuple[Path, Path]:
    private = tmp_path / f"{name}.pem"
    public = tmp_path / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture(params=["p256", "ed25519"])
def key(request: pytest.FixtureRequest) -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if request.param == "p256" else Ed25519PrivateKey.generate()


def payload_of(bundle: bytes) -> dict[str, Any]:
    envelope = json.loads(bundle)["dsseEnvelope"]
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return statement


def resign(bundle: bytes, key: PrivateKey, edit: Any) -> bytes:
    """An attacker with their own key rewrites the statement and signs it validly."""
    statement = payload_of(bundle)
    edit(statement)
    return sign_statement(statement, key)


# --- format -------------------------------------------------------------------------------------


def test_pae_matches_the_dsse_specification_example() -> None:
    # DSSE protocol.md test vector.
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_bundle_is_a_sigstore_v03_bundle_with_an_oms_statement(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    manifest, bundle = sign_model(root, key, ignore_paths=["config.json"])
    document = json.loads(bundle)
    assert document["mediaType"] == BUNDLE_MEDIA_TYPE
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert document["verificationMaterial"]["publicKey"]["hint"] == hashlib.sha256(pem).hexdigest()
    assert document["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    statement = payload_of(bundle)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    resources = statement["predicate"]["resources"]
    assert [r["name"] for r in resources] == ["a.txt", "weights/a.bin", "weights/b.bin"]
    assert all(r["algorithm"] == "sha256" for r in resources)
    assert resources[1]["digest"] == hashlib.sha256((root / "weights" / "a.bin").read_bytes()).hexdigest()
    root_digest = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert statement["subject"] == [{"name": "model", "digest": {"sha256": root_digest}}]
    assert manifest.root_digest == root_digest
    serialization_args = statement["predicate"]["serialization"]
    assert serialization_args["method"] == "files" and serialization_args["hash_type"] == "sha256"
    assert "config.json" in serialization_args["ignore_paths"] and ".git" in serialization_args["ignore_paths"]


def test_resources_sort_by_path_components_like_the_reference(tmp_path: Path, key: PrivateKey) -> None:
    root = tmp_path / "m"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_text("1")
    (root / "a.txt").write_text("2")
    # '.' < '/' in code points, but model_signing compares path components: ('a','b') < ('a.txt',)
    names = [r["name"] for r in payload_of(sign_model(root, key)[1])["predicate"]["resources"]]
    assert names == ["a/b", "a.txt"]


def test_single_file_model_is_one_resource_named_dot(tmp_path: Path, key: PrivateKey) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"weights")
    manifest, bundle = sign_model(file, key)
    assert [r.name for r in manifest.resources] == ["."]
    assert payload_of(bundle)["subject"][0]["name"] == "model.safetensors"
    assert verify_model(file, bundle, key.public_key()).ok


# --- strict verification -----------------------------------------------------------------------


def test_intact_model_verifies_and_verification_keeps_no_state(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    manifest, bundle = sign_model(root, key)
    first = verify_model(root, bundle, key.public_key())
    assert first.ok and first.problems == () and first.root_digest == manifest.root_digest and first.files == 4
    original = (root / "config.json").read_bytes()
    (root / "config.json").write_text("{}")
    assert not verify_model(root, bundle, key.public_key()).ok
    (root / "config.json").write_bytes(original)
    assert verify_model(root, bundle, key.public_key()).ok  # nothing cached from the failure


def test_changed_byte_fails_naming_the_file(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    data = bytearray((root / "weights" / "a.bin").read_bytes())
    data[4321] ^= 0x01
    (root / "weights" / "a.bin").write_bytes(bytes(data))
    result = verify_model(root, bundle, key.public_key())
    assert not result.ok and result.problems == ("changed: weights/a.bin",)


def test_added_removed_and_renamed_files_fail_naming_them(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    (root / "extra.py").write_text("import os")
    assert verify_model(root, bundle, key.public_key()).problems == ("added: extra.py",)
    (root / "extra.py").unlink()
    (root / "weights" / "b.bin").rename(tmp_path / "b.bin")
    assert verify_model(root, bundle, key.public_key()).problems == ("removed: weights/b.bin",)
    shutil.copy(tmp_path / "b.bin", root / "weights" / "b.bin")
    (root / "weights" / "a.bin").rename(root / "weights" / "c.bin")
    result = verify_model(root, bundle, key.public_key())
    assert result.problems == ("renamed: weights/a.bin -> weights/c.bin",)


def test_added_empty_file_fails_in_both_serializations(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    for shard_size in (None, 1024):
        _, bundle = sign_model(root, key, shard_size=shard_size)
        (root / "empty").write_bytes(b"")
        assert verify_model(root, bundle, key.public_key()).problems == ("added: empty",)
        (root / "empty").unlink()


def test_ignored_paths_are_skipped_and_recorded_in_the_signed_payload(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    (root / "logs").mkdir()
    (root / "logs" / "train.log").write_text("epoch 1")
    _, bundle = sign_model(root, key, ignore_paths=["logs/"])
    (root / "logs" / "train.log").write_text("rewritten")
    (root / "logs" / "new.log").write_text("added under an ignored folder")
    result = verify_model(root, bundle, key.public_key())
    assert result.ok and "logs" in result.ignore_paths
    (root / "logs.txt").write_text("only the folder 'logs' is ignored, not a prefix of a name")
    assert verify_model(root, bundle, key.public_key()).problems == ("added: logs.txt",)


def test_widening_the_ignore_list_inside_the_bundle_breaks_the_signature(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    document = json.loads(bundle)
    statement = payload_of(bundle)
    statement["predicate"]["serialization"]["ignore_paths"].append("weights")
    document["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (root / "weights" / "a.bin").write_bytes(b"trojan")
    result = verify_model(root, json.dumps(document).encode(), key.public_key())
    assert not result.ok and "signature does not verify" in result.problems[0]


def test_git_paths_are_ignored_by_default_and_signed_on_request(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    manifest, _ = sign_model(root, key)
    assert ".git/HEAD" not in manifest.files()
    manifest, bundle = sign_model(root, key, ignore_git_paths=False)
    assert ".git/HEAD" in manifest.files()
    (root / ".git" / "HEAD").write_text("changed")
    assert verify_model(root, bundle, key.public_key()).problems == ("changed: .git/HEAD",)


def test_unsafe_ignore_paths_are_refused(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    for bad in ("../outside", "/etc", "a/../../b"):
        with pytest.raises(InputError):
            sign_model(root, key, ignore_paths=[bad])


# --- signatures and bundle integrity -----------------------------------------------------------


def test_bundle_verifies_only_with_the_signers_key(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    other = ec.generate_private_key(ec.SECP256R1())
    result = verify_model(root, bundle, other.public_key())
    assert not result.ok and "another key" in result.problems[0]
    # Dropping the hint does not help: the signature itself must verify with the given key.
    document = json.loads(bundle)
    document["verificationMaterial"]["publicKey"] = {}
    result = verify_model(root, json.dumps(document).encode(), other.public_key())
    assert not result.ok and "signature does not verify" in result.problems[0]


def test_forged_signature_bytes_fail(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    document = json.loads(bundle)
    raw = bytearray(base64.b64decode(document["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    document["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(BundleError, match="signature"):
        verify_statement(json.dumps(document).encode(), key.public_key())


def test_signature_is_not_valid_for_another_payload_type(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)
    document = json.loads(bundle)
    document["dsseEnvelope"]["payloadType"] = "application/json"
    with pytest.raises(BundleError, match="payload type"):
        verify_statement(json.dumps(document).encode(), key.public_key())


def test_resources_that_do_not_hash_to_the_subject_are_refused(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)

    def drop_one(statement: dict[str, Any]) -> None:
        statement["predicate"]["resources"].pop()

    result = verify_model(root, resign(bundle, key, drop_one), key.public_key())
    assert not result.ok and "root digest" in result.problems[0]


def test_resource_names_that_escape_the_model_are_refused(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    _, bundle = sign_model(root, key)

    def traverse(statement: dict[str, Any]) -> None:
        resources = statement["predicate"]["resources"]
        resources[0]["name"] = "../../etc/passwd"
        digest = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
        statement["subject"][0]["digest"]["sha256"] = digest

    result = verify_model(root, resign(bundle, key, traverse), key.public_key())
    assert not result.ok and "unsafe resource name" in result.problems[0]


@pytest.mark.parametrize(
    "bundle", [b"", b"[]", b"{}", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}']
)
def test_malformed_bundles_fail_without_crashing(tmp_path: Path, bundle: bytes) -> None:
    root = make_model(tmp_path / "model")
    result = verify_model(root, bundle, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert not result.ok and result.problems


# --- shards ------------------------------------------------------------------------------------


def test_shard_serialization_names_ranges_and_detects_the_changed_file(tmp_path: Path, key: PrivateKey) -> None:
    root = make_model(tmp_path / "model")
    manifest, bundle = sign_model(root, key, shard_size=2000)
    names = [r.name for r in manifest.resources]
    assert names[:4] == ["a.txt:0:50", "config.json:0:13", "weights/a.bin:0:2000", "weights/a.bin:2000:4000"]
    assert all(r.algorithm == "sha256-sharded-2000" for r in manifest.resources)
    assert verify_model(root, bundle, key.public_key()).ok
    data = bytearray((root / "weights" / "a.bin").read_bytes())
    data[4500] ^= 0xFF
    (root / "weights" / "a.bin").write_bytes(bytes(data))
    assert verify_model(root, bundle, key.public_key()).problems == ("changed: weights/a.bin",)


def test_shard_digests_match_hashlib_over_each_range(tmp_path: Path) -> None:
    file = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    file.write_bytes(data)
    manifest = hash_model(file, Serialization(method="shards", shard_size=1024 * 1024), workers=2)
    expected = [hashlib.sha256(data[i : i + 1024 * 1024]).hexdigest() for i in range(0, len(data), 1024 * 1024)]
    assert [r.digest for r in manifest.resources] == expected
    assert manifest.total_bytes == len(data)


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_sign_then_verify_and_tamper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_model(tmp_path / "model")
    private, public = write_keys(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec")
    # The signature is written inside the model: it is ignored (and the ignore is signed).
    signature = root / "model.sig"
    assert main(["sign", str(root), "--key", str(private), "--signature", str(signature), "--ignore", "a.txt"]) == 0
    assert "model.sig" in payload_of(signature.read_bytes())["predicate"]["serialization"]["ignore_paths"]
    assert main(["verify", str(root), "--signature", str(signature), "--key", str(public)]) == 0
    (root / "weights" / "b.bin").write_bytes(b"tampered")
    capsys.readouterr()
    assert main(["verify", str(root), "--signature", str(signature), "--key", str(public), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"] == ["changed: weights/b.bin"]


def test_cli_refuses_unsupported_keys_with_exit_code_2(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    from cryptography.hazmat.primitives.asymmetric import rsa

    private, _ = write_keys(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa")  # type: ignore[arg-type]
    assert main(["sign", str(root), "--key", str(private), "--signature", str(tmp_path / "s.json")]) == 2
    with pytest.raises(InputError):
        load_public_key(b"not a key")


# --- interoperability with the reference implementation (model-signing 1.1.1) ------------------
# Its Ed25519 support and its shard-mode verification are broken: ECDSA P-256, files mode.


def reference() -> Any:
    return pytest.importorskip("model_signing")


def test_reference_verifier_accepts_our_bundle(tmp_path: Path) -> None:
    ms = reference()
    root = make_model(tmp_path / "model")
    (root / "notes.md").write_text("left out of the signature")
    private, public = write_keys(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec")
    signature = tmp_path / "model.sig"
    assert main(["sign", str(root), "--key", str(private), "--signature", str(signature), "--ignore", "notes.md"]) == 0
    ms.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(root, signature)
    # ... and refuses it once a byte changed (so the acceptance above means something).
    (root / "config.json").write_text('{"layers": 4}')
    with pytest.raises(ValueError, match=r"config\.json"):
        ms.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(root, signature)


def test_we_verify_the_reference_signers_bundle_with_the_same_root_digest(tmp_path: Path) -> None:
    ms = reference()
    root = make_model(tmp_path / "model")
    (root / "README.md").write_text("ignored by the reference signer's config")
    private, public = write_keys(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec")
    signature = tmp_path / "reference.sig"
    hashing = ms.hashing.Config().set_ignored_paths(paths=["README.md"])
    ms.signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(hashing).sign(root, signature)
    result = verify_model(root, signature.read_bytes(), load_public_key(public.read_bytes()))
    assert result.ok, result.problems
    assert "README.md" in result.ignore_paths
    assert result.root_digest == hash_model(root, Serialization(ignore_paths=result.ignore_paths)).root_digest
    assert main(["verify", str(root), "--signature", str(signature), "--key", str(public)]) == 0
    (root / "weights" / "a.bin").rename(root / "weights" / "z.bin")
    assert verify_model(root, signature.read_bytes(), load_public_key(public.read_bytes())).problems == (
        "renamed: weights/a.bin -> weights/z.bin",
    )


def test_reference_single_file_bundle_interoperates_both_ways(tmp_path: Path) -> None:
    ms = reference()
    file = tmp_path / "model.bin"
    file.write_bytes(os.urandom(1000))
    private, public = write_keys(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec")
    theirs, ours = tmp_path / "theirs.sig", tmp_path / "ours.sig"
    ms.signing.Config().use_elliptic_key_signer(private_key=private).sign(file, theirs)
    assert verify_model(file, theirs.read_bytes(), load_public_key(public.read_bytes())).ok
    assert main(["sign", str(file), "--key", str(private), "--signature", str(ours)]) == 0
    ms.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(file, ours)


def test_shard_resources_match_the_reference_hashing(tmp_path: Path) -> None:
    # Its shard-mode *verification* is broken; its shard hashing is the format to match.
    ms = reference()
    root = make_model(tmp_path / "model")
    theirs = ms.hashing.Config().use_shard_serialization(shard_size=2000).hash(root)
    ours = hash_model(root, Serialization(method="shards", shard_size=2000))
    assert [(d.identifier, d.digest.digest_hex, d.digest.algorithm) for d in theirs.resource_descriptors()] == [
        (r.name, r.digest, r.algorithm) for r in ours.resources
    ]
