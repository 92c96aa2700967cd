"""One root of trust: every trust-store entry is signed by the operator's root key.

The operator makes the root key once (`mlwarden keys init`) and keeps it offline; services and
clients hold only its public half (`keys/root.pub` or `MLW_TRUST_ROOT`). Each identity (a service
or an actor: a person, a pipeline, a model server) is one entry in the `mlw-trust` bucket,
keyed by its id, holding its roles, its key history and whether it is revoked, with the root's
Ed25519 signature over the canonical JSON of the entry. A reader verifies that signature before
it trusts anything in the entry: an entry without a valid root signature is ignored and reported,
in every mode (no trust on first use).

Rotation appends a key and closes the previous one's period: the old key still verifies what it
signed before (audit history) but signs nothing new. Revocation stops everything the identity
signs from the moment it is revoked. Each change increases the entry's `serial`; a reader keeps
the highest serial it has seen for an id, so an older signed entry replayed into the bucket (a
key from before its revocation) changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, ValidationError

from shared.canonical import canonical_json
from shared.errors import MlwardenError, SignatureError
from shared.events import Frozen, Name
from shared.signing import (
    Identity,
    KeyPeriod,
    SigningKey,
    TrustStore,
    load_public_key,
    public_key_b64,
    verify_signature,
)

log = logging.getLogger("mlwarden.trust")

ROOT_ID = "root"
ROOT_KEY_FILE = "root.pem"
ROOT_PUBLIC_FILE = "root.pub"
ENTRY_FORMAT = "mlwarden-trust-entry/v1"
# Domain separation: a root signature over a trust entry can never be replayed as the signature
# of an event or a checkpoint (those sign other byte strings).
_SIGNING_PREFIX = (ENTRY_FORMAT + "\n").encode()

Kind = Literal["service", "actor"]


class TrustError(MlwardenError, ValueError):
    """A trust-store entry or root key that cannot be used; `key` names the bucket key."""

    def __init__(self, reason: str, *, key: str = "") -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.reason = reason
        self.key = key


class TrustKey(Frozen):
    """One public key of an identity and the period in which it may sign."""

    public_key: str = Field(min_length=40, max_length=64, description="raw 32-byte Ed25519 public key, base64")
    valid_from: float = Field(ge=0, description="unix seconds from which it signs")
    valid_until: float | None = Field(default=None, description="unix seconds it stopped signing (rotated)")


class TrustEntry(Frozen):
    """One identity in the trust store, as the root signs it."""

    format: Literal["mlwarden-trust-entry/v1"] = "mlwarden-trust-entry/v1"
    id: Name = Field(description="signer id: a service name or an actor name")
    kind: Kind = Field(description="'service' signs verdicts; 'actor' signs producer events")
    roles: tuple[Name, ...] = Field(default=(), description="roles the identity holds (actors)")
    keys: tuple[TrustKey, ...] = Field(min_length=1, max_length=64, description="key history, oldest first")
    revoked_at: float | None = Field(default=None, description="unix seconds; nothing verifies from then on")
    reason: str = Field(default="", max_length=500, description="why it was revoked or rotated")
    serial: int = Field(ge=1, description="grows with every change; readers refuse to go back")
    issued_at: float = Field(ge=0, description="when the root signed this version")

    @property
    def current(self) -> TrustKey:
        """The key that signs now (the newest)."""
        return self.keys[-1]


class SignedTrustEntry(Frozen):
    """A trust entry with the root's signature, as stored in the bucket."""

    entry: TrustEntry
    root: str = Field(description="fingerprint of the root public key that signed it")
    signature: str = Field(max_length=256, description="Ed25519 over the prefix and canonical JSON of `entry`")


def fingerprint(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: sha256 of the raw bytes, 16 hex digits."""
    return hashlib.sha256(public_key_b64(public).encode()).hexdigest()[:16]


def _signing_bytes(entry: TrustEntry) -> bytes:
    return _SIGNING_PREFIX + canonical_json(entry.model_dump(mode="json"))


def sign_entry(root: SigningKey, entry: TrustEntry) -> bytes:
    """The bucket value for `entry`, signed by `root`."""
    signed = SignedTrustEntry(
        entry=entry, root=fingerprint(root.private.public_key()), signature=root.sign(_signing_bytes(entry))
    )
    return orjson.dumps(signed.model_dump(mode="json"))


def parse_entry(value: bytes, *, key: str, root: Ed25519PublicKey) -> TrustEntry:
    """Verify one bucket value against the root key; raise TrustError when it must be ignored."""
    # (1) the shape: a signed entry, nothing else (a bare public key is what TOFU stored)
    try:
        signed = SignedTrustEntry.model_validate(orjson.loads(value))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise TrustError("not a root-signed trust entry", key=key) from exc
    # (2) the root signature over exactly this entry
    try:
        verify_signature(root, _signing_bytes(signed.entry), signed.signature)
    except SignatureError as exc:
        raise TrustError(f"root signature does not verify ({exc.reason})", key=key) from exc
    entry = signed.entry
    # (3) the entry names the key it is stored under (no entry for bob stored as alice)
    if entry.id != key:
        raise TrustError(f"entry for {entry.id!r} stored under {key!r}", key=key)
    for period in entry.keys:
        try:
            load_public_key(period.public_key)
        except SignatureError as exc:
            raise TrustError(exc.reason, key=key) from exc
    return entry


def to_identity(entry: TrustEntry) -> Identity:
    """The verified entry as the trust store holds it."""
    return Identity(
        id=entry.id,
        kind=entry.kind,
        roles=frozenset(entry.roles),
        keys=tuple(
            KeyPeriod(load_public_key(k.public_key), k.valid_from, k.valid_until, k.public_key) for k in entry.keys
        ),
        revoked_at=entry.revoked_at,
        serial=entry.serial,
    )


@dataclass(frozen=True)
class Rejected:
    """A bucket value that was ignored, and why (readers alert on these)."""

    key: str
    reason: str
    revision: int = 0


def build_store(values: Iterable[tuple[str, bytes, int]], root: Ed25519PublicKey) -> tuple[TrustStore, list[Rejected]]:
    """A trust store from `(key, value, revision)` bucket values, all revisions of a key included.

    The highest valid serial of each key wins, so an older signed entry written again after a
    revocation does not bring the key back while the newer one is still in the bucket history.
    """
    best: dict[str, TrustEntry] = {}
    rejected: list[Rejected] = []
    for key, value, revision in values:
        if not value:
            continue  # a delete marker: absence is not revocation, and never grants anything
        try:
            entry = parse_entry(value, key=key, root=root)
        except TrustError as exc:
            rejected.append(Rejected(key, exc.reason, revision))
            continue
        known = best.get(key)
        if known is None or entry.serial > known.serial:
            best[key] = entry
    store = TrustStore()
    for entry in best.values():
        store.put(to_identity(entry))
    return store, rejected


def apply_update(store: TrustStore, key: str, value: bytes, root: Ed25519PublicKey) -> Identity | None:
    """Apply one live bucket update; return the identity it installed (None when stale).

    Raise TrustError when the value is not a valid root-signed entry.
    """
    entry = parse_entry(value, key=key, root=root)
    known = store.identity(key)
    if known is not None and known.serial >= entry.serial:
        return None
    identity = to_identity(entry)
    store.put(identity)
    return identity


# --- the root key ---------------------------------------------------------------------------


def root_public_path(keys_dir: Path) -> Path:
    """Where the root public key is kept beside the service keys."""
    return keys_dir / ROOT_PUBLIC_FILE


def load_root_public(value: str | None, keys_dir: Path) -> Ed25519PublicKey:
    """The root public key from `value` (base64, PEM or a file path) or `keys_dir/root.pub`.

    Fail closed: without a root key nothing can be trusted, so this raises instead of guessing.
    """
    if value:
        candidate = Path(value)
        raw: str | bytes = candidate.read_bytes() if candidate.is_file() else value
    else:
        path = root_public_path(keys_dir)
        if not path.is_file():
            raise TrustError(
                f"no trust root: {path} is missing and MLW_TRUST_ROOT is not set "
                "(the operator creates it with `mlwarden keys init`)"
            )
        raw = path.read_bytes()
    if isinstance(raw, bytes) and not raw.lstrip().startswith(b"-----BEGIN"):
        raw = raw.decode().strip()
    try:
        return load_public_key(raw)
    except SignatureError as exc:
        raise TrustError(f"trust root is not an Ed25519 public key: {exc.reason}") from exc


def new_entry(
    identity: str,
    kind: Kind,
    public_b64: str,
    *,
    roles: Iterable[str] = (),
    previous: TrustEntry | None = None,
    now: float | None = None,
) -> TrustEntry:
    """A first entry for `identity`, or `previous` with `public_b64` as its new current key.

    Registering the key an identity already has changes nothing but roles.
    """
    at = time.time() if now is None else now
    roles_t = tuple(sorted(set(roles)))
    if previous is None:
        return TrustEntry(
            id=identity,
            kind=kind,
            roles=roles_t,
            keys=(TrustKey(public_key=public_b64, valid_from=at),),
            serial=1,
            issued_at=at,
        )
    keys = previous.keys
    if keys[-1].public_key != public_b64:
        closed = keys[-1].model_copy(update={"valid_until": at})
        keys = (*keys[:-1], closed, TrustKey(public_key=public_b64, valid_from=at))
    return previous.model_copy(
        update={"kind": kind, "roles": roles_t, "keys": keys, "serial": previous.serial + 1, "issued_at": at}
    )


def revoked_entry(previous: TrustEntry, reason: str, *, now: float | None = None) -> TrustEntry:
    """`previous`, revoked from now on."""
    at = time.time() if now is None else now
    return previous.model_copy(
        update={"revoked_at": at, "reason": reason[:500], "serial": previous.serial + 1, "issued_at": at}
    )
