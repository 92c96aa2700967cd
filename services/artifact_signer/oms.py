"""OpenSSF Model Signing (OMS) v1.0 bundles, written and verified from the specification.

A bundle is a Sigstore bundle v0.3 (https://docs.sigstore.dev/about/bundle/) holding a DSSE
envelope (https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md) whose payload is
an in-toto Statement v1 (https://github.com/in-toto/attestation/tree/main/spec/v1):

- `predicateType` `https://model_signing/signature/v1.0`;
- `predicate.resources`: one `{name, algorithm, digest}` per file (`files` serialization; the
  name is the POSIX path relative to the model, or `.` when the model is a single file) or per
  shard (`shards` serialization; the name is `path:start:end`, the algorithm
  `sha256-sharded-<shard_size>`), sorted by path components then offsets;
- `predicate.serialization`: `method`, `hash_type`, `allow_symlinks`, `shard_size` (shards) and
  `ignore_paths`: the paths (relative to the model; a folder covers what is under it) left out
  of the signature. They are inside the signed payload, so nobody can widen them later;
- `subject`: one descriptor, the model's name and the *root digest*: SHA-256 over the raw
  resource digests concatenated in resource order.

Key-based signing (no Fulcio certificate, no Rekor entry): the bundle's
`verificationMaterial.publicKey.hint` is the hex SHA-256 of the signer's SubjectPublicKeyInfo
PEM, as in the reference `model_signing` package; ECDSA (P-256/384/521, DER signatures,
SHA-256/384/512 by curve size) and Ed25519 keys in PEM. Verification keeps no state: it takes
the bundle, the public key the caller trusts and the files, and names every changed, added,
removed or renamed file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.canonical import canonical_json
from shared.errors import InputError, MlwardenError

from .changes import TreeChange, diff_by_content
from .hashing import Piece, Progress, UnsafePathError, check_relative_path, hash_pieces, walk_tree

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://model_signing/signature/v1.0"
#: What the reference signer leaves out by default (model_signing.hashing.Config); recorded in
#: the payload like any other ignored path, because the reference verifier skips them anyway.
GIT_PATHS: Final = (".git", ".gitattributes", ".github", ".gitignore")
#: Default shard size when sharding is asked for without a size.
DEFAULT_SHARD_SIZE: Final = 64 * 1024 * 1024
#: Largest bundle `verify_model` reads (a resource list of a huge model stays far below).
MAX_BUNDLE_BYTES: Final = 64 * 1024 * 1024

PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | Ed25519PublicKey
_CURVE_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class BundleError(MlwardenError, ValueError):
    """A bundle that is malformed, not signed by the given key, or inconsistent with itself."""

    def __init__(self, reason: str, *, step: str = "") -> None:
        super().__init__(f"{step}: {reason}" if step else reason)
        self.reason = reason
        self.step = step


# --- keys -------------------------------------------------------------------------------------


def load_private_key(pem: bytes) -> PrivateKey:
    """An unencrypted PEM private key: ECDSA on P-256/384/521, or Ed25519. `InputError` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot read the private key: {exc}") from exc
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVE_HASHES:
        return key
    raise InputError(f"unsupported private key type {type(key).__name__}: use ECDSA P-256/384/521 or Ed25519")


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo): ECDSA on P-256/384/521, or Ed25519."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot read the public key: {exc}") from exc
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_HASHES:
        return key
    raise InputError(f"unsupported public key type {type(key).__name__}: use ECDSA P-256/384/521 or Ed25519")


def public_key_hint(public: PublicKey) -> str:
    """`verificationMaterial.publicKey.hint`: hex SHA-256 of the SubjectPublicKeyInfo PEM."""
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _sign(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(_CURVE_HASHES[key.curve.name]()))


def _verify(public: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public, Ed25519PublicKey):
            public.verify(signature, message)
        else:
            public.verify(signature, message, ec.ECDSA(_CURVE_HASHES[public.curve.name]()))
    except InvalidSignature:
        return False
    return True


# --- DSSE and the Sigstore bundle -------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers.

    `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII decimal byte
    counts (DSSE protocol.md): binding the type stops a payload being replayed as another type.
    """
    encoded_type = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(encoded_type), encoded_type, len(payload), payload)


def sign_statement(statement: Mapping[str, Any], key: PrivateKey) -> bytes:
    """Sign an in-toto statement: the JSON of a Sigstore bundle v0.3 with a DSSE envelope.

    The payload is the canonical JSON of `statement` (sorted keys, compact), so the same
    statement always gives the same bytes; verifiers use the payload bytes as they are.
    """
    payload = canonical_json(dict(statement))
    signature = _sign(key, pae(IN_TOTO_PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": public_key_hint(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what} is not a base64 string", step="envelope")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{what} is not valid base64", step="envelope") from exc


def _object(value: object, what: str, step: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{what} is not a JSON object", step=step)
    return value


def verify_statement(bundle: bytes, public: PublicKey) -> dict[str, Any]:
    """Check a bundle's DSSE signature with `public`; return the in-toto statement it signs.

    Raises `BundleError` naming the step that failed. Only the key passed in is trusted: the
    hint in the bundle is compared with it, never used to pick a key.
    """
    # (1) the bundle: a Sigstore bundle v0.3 JSON document
    try:
        document = json.loads(bundle)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError("not JSON", step="bundle") from exc
    document = _object(document, "the bundle", "bundle")
    if document.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise BundleError(f"media type {document.get('mediaType')!r}, expected {BUNDLE_MEDIA_TYPE}", step="bundle")
    # (2) key-based verification material: the hint, when present, must name this key
    material = _object(document.get("verificationMaterial"), "verificationMaterial", "bundle")
    hint = _object(material.get("publicKey", {}), "verificationMaterial.publicKey", "bundle").get("hint")
    if hint and hint != public_key_hint(public):
        raise BundleError("the bundle was signed with another key (public key hint differs)", step="key")
    # (3) the envelope and the payload type it declares
    envelope = _object(document.get("dsseEnvelope"), "dsseEnvelope", "envelope")
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise BundleError(f"payload type {payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE}", step="envelope")
    payload = _b64(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise BundleError("no signatures", step="envelope")
    # (4) a signature over PAE(type, payload) by the trusted key (DSSE: accept if one verifies)
    message = pae(IN_TOTO_PAYLOAD_TYPE, payload)
    if not any(
        _verify(public, _b64(_object(s, "signature", "envelope").get("sig"), "sig"), message) for s in signatures
    ):
        raise BundleError("signature does not verify with the given public key", step="signature")
    # (5) only now parse what was signed
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError("payload is not JSON", step="statement") from exc
    statement = _object(statement, "the payload", "statement")
    if statement.get("_type") != STATEMENT_TYPE:
        raise BundleError(f"statement type {statement.get('_type')!r}, expected {STATEMENT_TYPE}", step="statement")
    return statement


# --- the model manifest -----------------------------------------------------------------------


@dataclass(frozen=True)
class Serialization:
    """How a model was turned into resources: recorded in the signed payload."""

    method: Literal["files", "shards"] = "files"
    shard_size: int | None = None
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = GIT_PATHS

    def algorithm(self) -> str:
        """The resources' `algorithm` string (model_signing's naming)."""
        return "sha256" if self.method == "files" else f"sha256-sharded-{self.shard_size}"

    def to_json(self) -> dict[str, Any]:
        """The `predicate.serialization` object."""
        out: dict[str, Any] = {"method": self.method, "hash_type": "sha256", "allow_symlinks": self.allow_symlinks}
        if self.method == "shards":
            out["shard_size"] = self.shard_size
        if self.ignore_paths:
            out["ignore_paths"] = sorted(self.ignore_paths)
        return out

    @classmethod
    def from_json(cls, value: object) -> Serialization:
        """Parse `predicate.serialization`; `BundleError` for anything not understood."""
        args = _object(value, "predicate.serialization", "statement")
        method = args.get("method")
        if method not in ("files", "shards"):
            raise BundleError(f"unknown serialization method {method!r}", step="statement")
        if args.get("hash_type") != "sha256":
            raise BundleError(f"unsupported hash type {args.get('hash_type')!r} (only sha256)", step="statement")
        shard_size = None
        if method == "shards":
            raw = args.get("shard_size")
            # The reference writes protobuf Struct numbers, which are doubles: 1000.0.
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != int(raw) or raw <= 0:
                raise BundleError(f"bad shard size {raw!r}", step="statement")
            shard_size = int(raw)
        ignore = args.get("ignore_paths", [])
        if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
            raise BundleError("ignore_paths must be a list of strings", step="statement")
        try:
            ignore_paths = tuple(sorted({normalize_ignore(p) for p in ignore}))
        except UnsafePathError as exc:
            raise BundleError(f"unsafe ignore path: {exc}", step="statement") from exc
        allow = args.get("allow_symlinks", False)
        if not isinstance(allow, bool):
            raise BundleError("allow_symlinks must be a boolean", step="statement")
        return cls(method, shard_size, allow, ignore_paths)


def normalize_ignore(path: str) -> str:
    """An ignore entry as recorded: a safe relative POSIX path without a trailing slash."""
    return check_relative_path(path.strip().rstrip("/").removeprefix("./"))


@dataclass(frozen=True)
class Resource:
    """One signed resource: a file (or shard) name and its SHA-256."""

    name: str
    digest: str
    algorithm: str = "sha256"

    def path(self) -> str:
        """The file this resource belongs to (the shard suffix removed)."""
        return self.name.rsplit(":", 2)[0] if self.algorithm.startswith("sha256-sharded-") else self.name


def _sort_key(resource: Resource) -> tuple[tuple[str, ...], int, int]:
    # model_signing sorts its items by PurePosixPath (component by component), then offsets:
    # the same order gives the same root digest for the same model in both implementations.
    if resource.algorithm == "sha256":
        return tuple(resource.name.split("/")), 0, 0
    path, start, end = resource.name.rsplit(":", 2)
    return tuple(path.split("/")), int(start), int(end)


def sort_resources(resources: Iterable[Resource]) -> list[Resource]:
    """Resources in OMS order (path components, then shard offsets), as `hash_model` lists them."""
    return sorted(resources, key=_sort_key)


def compute_root_digest(resources: Sequence[Resource]) -> str:
    """SHA-256 over the raw resource digests, concatenated in the given order (OMS subject)."""
    hasher = hashlib.sha256()
    for resource in resources:
        hasher.update(bytes.fromhex(resource.digest))
    return hasher.hexdigest()


@dataclass(frozen=True)
class ModelManifest:
    """A model as OMS signs it: its name, how it was serialized, and its resources in order."""

    name: str
    serialization: Serialization
    resources: tuple[Resource, ...]
    sizes: Mapping[str, int] = field(default_factory=dict, compare=False)

    @property
    def root_digest(self) -> str:
        """The subject digest (see `compute_root_digest`)."""
        return compute_root_digest(self.resources)

    @property
    def total_bytes(self) -> int:
        """Bytes hashed (known only for a manifest made from files, 0 for one read from a bundle)."""
        return sum(self.sizes.values())

    def files(self) -> list[str]:
        """Every file named, in order, once."""
        return list(dict.fromkeys(resource.path() for resource in self.resources))

    def statement(self) -> dict[str, Any]:
        """The in-toto Statement v1 of OMS v1.0 for this manifest."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.name, "digest": {"sha256": self.root_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": self.serialization.to_json(),
                "resources": [{"name": r.name, "algorithm": r.algorithm, "digest": r.digest} for r in self.resources],
            },
        }


def model_name(path: str | os.PathLike[str]) -> str:
    """The subject name: the model path's last component (of the resolved path for `.`)."""
    p = Path(path)
    return p.name if p.name and p.name != ".." else Path(os.path.abspath(p)).name


def hash_model(
    path: str | os.PathLike[str],
    serialization: Serialization | None = None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ModelManifest:
    """Walk and hash a model file or folder into an OMS manifest.

    A single file is one resource named `.` (as the reference names it). Ignored paths are
    pruned before they are looked at. Raises `UnsafePathError` / `InputError` from the walk.
    """
    ser = serialization or Serialization()
    root = Path(path)
    entries = walk_tree(root, allow_symlinks=ser.allow_symlinks, ignore=ser.ignore_paths)
    single = not root.is_dir()
    pieces = hash_pieces(
        entries, shard_size=ser.shard_size if ser.method == "shards" else None, workers=workers, progress=progress
    )
    algorithm = ser.algorithm()

    def name(piece: Piece) -> str:
        file = "." if single else piece.path
        return file if ser.method == "files" else f"{file}:{piece.start}:{piece.end}"

    resources = sorted((Resource(name(p), p.sha256, algorithm) for p in pieces), key=_sort_key)
    sizes: dict[str, int] = {}
    for piece in pieces:
        key = "." if single else piece.path
        sizes[key] = sizes.get(key, 0) + piece.size
    return ModelManifest(model_name(root), ser, tuple(resources), sizes)


def manifest_from_statement(statement: Mapping[str, Any]) -> ModelManifest:
    """Read an OMS v1.0 statement back into a manifest, checking it against itself.

    `BundleError` when the predicate type is not OMS v1.0, there is not exactly one subject,
    a resource is malformed, duplicated or names an unsafe path, or the resources do not
    hash to the subject's root digest.
    """
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise BundleError(
            f"predicate type {statement.get('predicateType')!r}, expected {PREDICATE_TYPE}", step="statement"
        )
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise BundleError("expected exactly one subject", step="statement")
    subject = _object(subjects[0], "subject", "statement")
    expected_root = _object(subject.get("digest"), "subject digest", "statement").get("sha256")
    predicate = _object(statement.get("predicate"), "predicate", "statement")
    ser = Serialization.from_json(predicate.get("serialization"))
    raw_resources = predicate.get("resources")
    if not isinstance(raw_resources, list):
        raise BundleError("predicate.resources is not a list", step="statement")
    resources: list[Resource] = []
    for raw in raw_resources:
        item = _object(raw, "resource", "statement")
        name, algorithm, digest = item.get("name"), item.get("algorithm"), item.get("digest")
        if not (isinstance(name, str) and isinstance(digest, str) and isinstance(algorithm, str)):
            raise BundleError(f"malformed resource {item!r}", step="statement")
        if algorithm != ser.algorithm():
            raise BundleError(
                f"resource {name}: algorithm {algorithm!r}, expected {ser.algorithm()!r}", step="statement"
            )
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"resource {name}: digest is not lower-case SHA-256 hex", step="statement")
        resource = Resource(name, digest, algorithm)
        _check_resource_name(resource)
        resources.append(resource)
    if len({r.name for r in resources}) != len(resources):
        raise BundleError("duplicate resource names", step="statement")
    # The subject binds the list: recompute it in the order the payload gives (OMS spec).
    if compute_root_digest(resources) != expected_root:
        raise BundleError("resources do not hash to the subject's root digest", step="statement")
    name = subject.get("name")
    return ModelManifest(name if isinstance(name, str) else "", ser, tuple(resources))


def _check_resource_name(resource: Resource) -> None:
    path = resource.path()
    try:
        if path != ".":
            check_relative_path(path)
        if resource.name != path:
            _, start, end = resource.name.rsplit(":", 2)
            if not (start.isdigit() and end.isdigit() and int(start) <= int(end)):
                raise BundleError(f"bad shard range in {resource.name!r}", step="statement")
    except UnsafePathError as exc:
        raise BundleError(f"unsafe resource name: {exc}", step="statement") from exc


# --- signing and verifying models -------------------------------------------------------------


def sign_manifest(manifest: ModelManifest, key: PrivateKey) -> bytes:
    """The OMS bundle (JSON bytes) signing `manifest` with `key`."""
    return sign_statement(manifest.statement(), key)


def sign_model(
    path: str | os.PathLike[str],
    key: PrivateKey,
    *,
    ignore_paths: Iterable[str] = (),
    ignore_git_paths: bool = True,
    shard_size: int | None = None,
    allow_symlinks: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[ModelManifest, bytes]:
    """Hash the model at `path` and sign it; return the manifest and the OMS bundle bytes.

    `ignore_paths` are relative to the model (a folder covers its contents) and are recorded
    in the signed payload; `shard_size` switches to the `shards` serialization.
    """
    try:
        ignored = {normalize_ignore(p) for p in ignore_paths}
    except UnsafePathError as exc:
        raise InputError(f"ignore path: {exc}") from exc
    if ignore_git_paths:
        ignored.update(GIT_PATHS)
    ser = Serialization(
        method="files" if shard_size is None else "shards",
        shard_size=shard_size,
        allow_symlinks=allow_symlinks,
        ignore_paths=tuple(sorted(ignored)),
    )
    manifest = hash_model(path, ser, workers=workers, progress=progress)
    return manifest, sign_manifest(manifest, key)


#: One difference between the signed resources and the files on disk.
Change = TreeChange


def diff_manifests(expected: ModelManifest, actual: ModelManifest) -> list[Change]:
    """Every file-level change from `expected` to `actual`, sorted by path.

    Resources are grouped per file (shards together); a removed file whose exact content
    reappears under a new name is reported once as renamed.
    """

    def per_file(manifest: ModelManifest) -> dict[str, tuple[tuple[str, str], ...]]:
        files: dict[str, list[tuple[str, str]]] = {}
        for r in manifest.resources:
            suffix = r.name[len(r.path()) :]
            files.setdefault(r.path(), []).append((suffix, r.digest))
        return {path: tuple(sorted(items)) for path, items in files.items()}

    return diff_by_content(per_file(expected), per_file(actual))


@dataclass(frozen=True)
class ModelVerification:
    """Outcome of `verify_model`: `ok` only if the signature verifies and every file matches."""

    ok: bool
    name: str = ""
    root_digest: str = ""
    files: int = 0
    method: str = ""
    ignore_paths: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object `mlwarden verify --format json` prints."""
        return {
            "ok": self.ok,
            "name": self.name,
            "root_digest": self.root_digest,
            "files": self.files,
            "method": self.method,
            "ignore_paths": list(self.ignore_paths),
            "problems": list(self.problems),
        }


def verify_model(
    path: str | os.PathLike[str],
    bundle: bytes,
    public: PublicKey,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ModelVerification:
    """Verify an OMS bundle with `public`, then re-hash `path` with the signed serialization.

    Strict: only the ignore paths inside the signed payload are skipped; every changed,
    added, removed or renamed file is a problem naming it. A bad signature, a bundle that
    contradicts itself, or an unsafe path in the model folder are problems too (never raised).
    """
    try:
        statement = verify_statement(bundle, public)
        expected = manifest_from_statement(statement)
    except BundleError as exc:
        return ModelVerification(ok=False, problems=(str(exc),))
    try:
        actual = hash_model(path, expected.serialization, workers=workers, progress=progress)
    except UnsafePathError as exc:
        problems: tuple[str, ...] = (f"unsafe path: {exc}",)
    except InputError as exc:
        problems = (str(exc),)
    else:
        problems = tuple(str(change) for change in diff_manifests(expected, actual))
    return ModelVerification(
        ok=not problems,
        name=expected.name,
        root_digest=expected.root_digest,
        files=len(expected.files()),
        method=expected.serialization.method,
        ignore_paths=expected.serialization.ignore_paths,
        problems=problems,
    )


def is_bundle(document: bytes) -> bool:
    """True if `document` looks like a Sigstore bundle (to tell it from a legacy manifest)."""
    return b'"mediaType"' in document[:4096] and b"sigstore.bundle" in document[:4096]
