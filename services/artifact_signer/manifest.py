"""The manifest of a model artifact, its Ed25519 signature, and verification against the files.

A manifest lists every file's path, SHA-256 and size, binds them in a root digest, and records
what the model was built from (lock file digest, training datasets, builder). The signature is
Ed25519 over `shared.canonical.canonical_json` of the manifest: a real signature, checked with
the signer's public key, never a bare hash that anyone could recompute. Issue 5 adds OMS
(Sigstore/DSSE) bundles beside this format; the file list and root digest carry over.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, Literal, Self

from pydantic import AwareDatetime, Field, ValidationError, model_validator

from shared.canonical import canonical_json
from shared.errors import InputError, SignatureError
from shared.events import DatasetRef, Frozen, Name, Sha256Hex
from shared.signing import SigningKey, TrustStore, load_public_key, verify_signature

from .changes import TreeChange, diff_by_content
from .hashing import FileDigest, UnsafePathError, hash_tree, root_digest

MANIFEST_TYPE: Final = "mlwarden.manifest/v1"
SIGNED_MANIFEST_TYPE: Final = "mlwarden.signed-manifest/v1"


class Manifest(Frozen):
    """What was built: every file with its digest, the root digest over them, and provenance."""

    # The type tag is inside the signed bytes, so a signature over a manifest can never be
    # replayed as a signature over another kind of document signed by the same key.
    type: Literal["mlwarden.manifest/v1"] = Field(default=MANIFEST_TYPE, description="format tag")
    model: Name = Field(description="model name")
    version: str = Field(min_length=1, max_length=64, description="model version")
    files: list[FileDigest] = Field(description="every file, sorted by path")
    root_digest: Sha256Hex = Field(description="`hashing.root_digest` of `files`")
    lockfile_sha256: Sha256Hex | None = Field(default=None, description="digest of the lock file")
    datasets: list[DatasetRef] = Field(default_factory=list, description="training datasets")
    builder: str = Field(min_length=1, max_length=128, description="who or what built it")
    source_commit: str | None = Field(default=None, max_length=64, description="VCS commit")
    created: AwareDatetime = Field(description="when the manifest was made")

    @model_validator(mode="after")
    def _files_match_root_digest(self) -> Self:
        paths = [item.path for item in self.files]
        if paths != sorted(set(paths)):
            raise ValueError("files must be sorted by path, without duplicates")
        if root_digest(self.files) != self.root_digest:
            raise ValueError("root_digest does not match the file list")
        return self

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(item.size for item in self.files)


class SignedManifest(Frozen):
    """A manifest with the signer's key id and an Ed25519 signature over its canonical JSON."""

    type: Literal["mlwarden.signed-manifest/v1"] = Field(default=SIGNED_MANIFEST_TYPE, description="format tag")
    manifest: Manifest = Field(description="the signed content")
    signer: str = Field(min_length=1, max_length=128, description="key id in the trust store")
    algorithm: Literal["ed25519"] = Field(default="ed25519", description="signature algorithm")
    signature: str = Field(min_length=1, max_length=256, description="base64 Ed25519 signature")


class VerifyResult(Frozen):
    """Outcome of `verify_path`: `ok` only if the signature verifies and every file is intact."""

    ok: bool
    model: str = Field(description="model named in the manifest")
    version: str = Field(description="version named in the manifest")
    root_digest: str = Field(description="root digest the manifest claims")
    signer: str = Field(description="key id the document names")
    files: int = Field(ge=0, description="files in the manifest")
    problems: list[str] = Field(default_factory=list, description="every reason it failed")


def manifest_bytes(manifest: Manifest) -> bytes:
    """The exact bytes a manifest signature covers."""
    return canonical_json(manifest.model_dump(mode="json"))


def build_manifest(
    root: str | os.PathLike[str],
    *,
    model: str,
    version: str,
    builder: str,
    datasets: Iterable[DatasetRef] = (),
    lockfile_sha256: str | None = None,
    source_commit: str | None = None,
    created: datetime | None = None,
    workers: int | None = None,
) -> Manifest:
    """Hash the artifact at `root` (see `hashing.hash_tree`) and describe it in a manifest.

    Raises `UnsafePathError` for paths the walk refuses and `InputError` for a missing path
    or fields the manifest refuses (a model name with spaces, say).
    """
    files = hash_tree(root, workers=workers)
    try:
        return Manifest(
            model=model,
            version=version,
            files=files,
            root_digest=root_digest(files),
            lockfile_sha256=lockfile_sha256,
            datasets=list(datasets),
            builder=builder,
            source_commit=source_commit,
            created=created or datetime.now(UTC),
        )
    except ValidationError as exc:  # a model name with spaces, an empty builder, ...
        fields = ", ".join(str(error["loc"][0]) for error in exc.errors() if error["loc"])
        raise InputError(f"cannot describe the artifact: invalid {fields or 'manifest'}") from exc


def sign_manifest(manifest: Manifest, key: SigningKey) -> SignedManifest:
    """Sign `manifest` with `key` (Ed25519 over `manifest_bytes`)."""
    return SignedManifest(manifest=manifest, signer=key.key_id, signature=key.sign(manifest_bytes(manifest)))


def verify_manifest(signed: SignedManifest, trust: TrustStore) -> None:
    """Raise `SignatureError` unless a signer trusted in `trust` signed exactly this manifest."""
    trust.verify(signed.signer, manifest_bytes(signed.manifest), signed.signature)


def diff_files(expected: Sequence[FileDigest], actual: Sequence[FileDigest]) -> list[TreeChange]:
    """Every change from `expected` to `actual`, sorted by path (see `changes.diff_by_content`)."""
    return diff_by_content(
        {item.path: (item.sha256, item.size) for item in expected},
        {item.path: (item.sha256, item.size) for item in actual},
    )


def verify_tree(root: str | os.PathLike[str], signed: SignedManifest) -> list[str]:
    """Re-hash `root` and name every changed, added, removed or renamed file (empty = intact).

    This compares files only; call `verify_manifest` first (or use `verify_artifact`) so the
    manifest itself is trusted. Raises `UnsafePathError` if the tree now holds a symlink, a
    special file or an unsafe name.
    """
    return [str(change) for change in diff_files(signed.manifest.files, hash_tree(root))]


def verify_artifact(root: str | os.PathLike[str], signed: SignedManifest, trust: TrustStore) -> list[str]:
    """`verify_manifest` (raises `SignatureError`), then `verify_tree`."""
    verify_manifest(signed, trust)
    return verify_tree(root, signed)


def dump_signed_manifest(signed: SignedManifest) -> bytes:
    """The JSON document stored in `mlw-artifacts` and written by `mlwarden sign`."""
    return signed.model_dump_json(indent=2).encode()


def load_signed_manifest(document: bytes) -> SignedManifest:
    """Parse a signed manifest document; raise `InputError` if it is not one."""
    try:
        return SignedManifest.model_validate_json(document)
    except ValidationError as exc:
        raise InputError(f"not a signed manifest document: {exc.error_count()} error(s)") from exc


def sign_path(
    path: str | os.PathLike[str],
    key: SigningKey,
    *,
    model: str = "artifact",
    version: str = "0",
    builder: str = "mlwarden-cli",
    lockfile_sha256: str | None = None,
    workers: int | None = None,
) -> bytes:
    """Offline `mlwarden sign`: hash, build the manifest, sign, return the JSON document."""
    manifest = build_manifest(
        path,
        model=model,
        version=version,
        builder=builder,
        lockfile_sha256=lockfile_sha256,
        workers=workers,
    )
    return dump_signed_manifest(sign_manifest(manifest, key))


def verify_path(path: str | os.PathLike[str], document: bytes, public_key_pem: bytes) -> VerifyResult:
    """Offline `mlwarden verify`: check the document's signature with the given public key,
    then re-hash `path` against it.

    Raises `InputError` for a key or document that cannot be parsed (exit code 2); every
    verification failure is reported in the result instead (exit code 1).
    """
    try:
        public = load_public_key(public_key_pem)
    except SignatureError as exc:
        raise InputError(f"public key: {exc.reason}") from exc
    signed = load_signed_manifest(document)
    manifest = signed.manifest
    problems: list[str] = []
    try:
        # (1) the signature, with the key the caller trusts (not one named by the document)
        verify_signature(public, manifest_bytes(manifest), signed.signature)
    except SignatureError as exc:
        problems.append(f"signature: {exc.reason}")
    if not problems:
        # (2) only a trusted manifest is worth comparing the files against
        try:
            problems.extend(verify_tree(path, signed))
        except UnsafePathError as exc:
            problems.append(f"unsafe path: {exc}")
    return VerifyResult(
        ok=not problems,
        model=manifest.model,
        version=manifest.version,
        root_digest=manifest.root_digest,
        signer=signed.signer,
        files=len(manifest.files),
        problems=problems,
    )
