"""Ed25519 keys, detached signatures over canonical JSON, and the trust store that maps signers
to public keys.

Verdicts, alerts and people's requests carry `signer` and `signature` CloudEvents extension
attributes; the signature covers the canonical JSON of the whole envelope without `signature`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import SignatureError


@dataclass(frozen=True)
class SigningKey:
    """A named Ed25519 private key (a service's or an actor's)."""

    key_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        """Make a fresh key."""
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 PEM Ed25519 private key."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("not an Ed25519 private key", signer=key_id)
        return cls(key_id, key)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted (protect the file by its permissions)."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_b64(self) -> str:
        """The raw 32-byte public key, base64."""
        return public_key_b64(self.private.public_key())

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> str:
        """Detached Ed25519 signature, base64."""
        return base64.b64encode(self.private.sign(message)).decode()


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(value: str | bytes) -> Ed25519PublicKey:
    """Load a public key given as raw base64 or as PEM."""
    try:
        if isinstance(value, bytes) and value.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(value)
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("not an Ed25519 public key")
            return key
        raw = base64.b64decode(value, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"malformed public key: {exc}") from exc


def verify_signature(public: Ed25519PublicKey, message: bytes, signature_b64: str) -> None:
    """Raise SignatureError unless `signature_b64` is a valid signature of `message`."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError as exc:
        raise SignatureError("signature is not base64") from exc
    try:
        public.verify(signature, message)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc


IdentityKind = Literal["service", "actor", "any"]


@dataclass(frozen=True)
class KeyPeriod:
    """One public key of an identity and when it may sign (`until` None: it signs now)."""

    public: Ed25519PublicKey
    since: float = 0.0
    until: float | None = None
    public_b64: str = ""


@dataclass(frozen=True)
class Identity:
    """A signer the trust store knows: its kind, roles, key history and revocation."""

    id: str
    kind: IdentityKind
    roles: frozenset[str] = frozenset()
    keys: tuple[KeyPeriod, ...] = ()
    revoked_at: float | None = None
    serial: int = 0

    @property
    def current(self) -> KeyPeriod | None:
        """The key that may sign now, or None when revoked or every key was rotated away."""
        if self.revoked_at is not None or not self.keys or self.keys[-1].until is not None:
            return None
        return self.keys[-1]


class TrustStore:
    """Maps signer ids (service names, actor ids) to their identities and public keys.

    Built from root-signed entries by `shared.trust`; a plain `{id: public_key}` mapping makes an
    in-memory store for offline tools and tests (identities of kind `any`).
    """

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._ids: dict[str, Identity] = {}
        #: Grows with every change, so a copy elsewhere (audit-log's writer) knows it is stale.
        self.version = 0
        for key_id, value in (keys or {}).items():
            self.add(key_id, value)

    def snapshot(self) -> list[tuple[str, str, list[str], list[tuple[str, float, float | None]], float | None, int]]:
        """Plain data to rebuild this store in another process (`from_snapshot`)."""
        return [
            (
                i.id,
                i.kind,
                sorted(i.roles),
                [(k.public_b64, k.since, k.until) for k in i.keys],
                i.revoked_at,
                i.serial,
            )
            for i in self._ids.values()
        ]

    @classmethod
    def from_snapshot(
        cls, snapshot: list[tuple[str, str, list[str], list[tuple[str, float, float | None]], float | None, int]]
    ) -> TrustStore:
        """The store a `snapshot` describes."""
        store = cls()
        for key_id, kind, roles, keys, revoked_at, serial in snapshot:
            periods = tuple(KeyPeriod(load_public_key(b64), since, until, b64) for b64, since, until in keys)
            store.put(Identity(key_id, kind, frozenset(roles), periods, revoked_at, serial))  # type: ignore[arg-type]
        return store

    def add(
        self, key_id: str, public_b64: str, *, kind: IdentityKind = "any", roles: frozenset[str] = frozenset()
    ) -> None:
        """Trust `public_b64` for `key_id` from now on (replacing any earlier identity)."""
        period = KeyPeriod(load_public_key(public_b64), 0.0, None, public_b64)
        self._ids[key_id] = Identity(key_id, kind, roles, (period,))
        self.version += 1

    def put(self, identity: Identity) -> None:
        """Install (or replace) one identity."""
        self._ids[identity.id] = identity
        self.version += 1

    def identity(self, key_id: str) -> Identity | None:
        """The identity of `key_id`, revoked ones included (None when unknown)."""
        return self._ids.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ids

    def ids(self) -> list[str]:
        """Every known signer id (revoked ones included)."""
        return sorted(self._ids)

    def roles_of(self, key_id: str) -> frozenset[str]:
        """The roles of an active identity (none when unknown or revoked)."""
        found = self._ids.get(key_id)
        return found.roles if found is not None and found.current is not None else frozenset()

    def public_b64(self, key_id: str) -> str | None:
        """The current public key of `key_id`, base64 (None when unknown or revoked)."""
        found = self._ids.get(key_id)
        current = found.current if found is not None else None
        return public_key_b64(current.public) if current is not None else None

    def verify(self, key_id: str, message: bytes, signature_b64: str, *, kind: IdentityKind | None = None) -> None:
        """Raise SignatureError unless `key_id` is trusted now, of `kind`, and signed `message`
        with its current key (a rotated-away or revoked key signs nothing new)."""
        found = self._ids.get(key_id)
        if found is None:
            raise SignatureError(f"unknown signer {key_id!r}", signer=key_id)
        if kind is not None and found.kind not in (kind, "any"):
            raise SignatureError(f"{key_id!r} is a {found.kind}, not a {kind}", signer=key_id)
        if found.revoked_at is not None:
            raise SignatureError(f"{key_id!r} was revoked", signer=key_id)
        current = found.current
        if current is None:
            raise SignatureError(f"{key_id!r} has no current key", signer=key_id)
        try:
            verify_signature(current.public, message, signature_b64)
        except SignatureError as exc:
            raise SignatureError(exc.reason, signer=key_id) from exc

    def verify_at(self, key_id: str, message: bytes, signature_b64: str, at: float) -> None:
        """Raise SignatureError unless one of `key_id`'s keys valid at `at` signed `message`.

        For history (audit entries, old checkpoints): a rotated key still verifies what it signed
        while it was current; a revoked identity verifies nothing signed from its revocation on.
        """
        found = self._ids.get(key_id)
        if found is None:
            raise SignatureError(f"unknown signer {key_id!r}", signer=key_id)
        KeyHistory.of(found).verify_at(message, signature_b64, at)

    def history(self, key_id: str) -> KeyHistory | None:
        """Every key `key_id` ever signed with, and when (None when unknown)."""
        found = self._ids.get(key_id)
        return KeyHistory.of(found) if found is not None else None


@dataclass(frozen=True)
class KeyHistory:
    """One identity's keys over time: each verifies what it signed while it was current, and
    nothing verifies from the identity's revocation on (rotation keeps history verifiable)."""

    id: str
    periods: tuple[KeyPeriod, ...]
    revoked_at: float | None = None

    @classmethod
    def of(cls, identity: Identity) -> KeyHistory:
        """The history of a trust-store identity."""
        return cls(identity.id, identity.keys, identity.revoked_at)

    def verify_at(self, message: bytes, signature_b64: str, at: float) -> None:
        """Raise SignatureError unless a key current at `at` (unix seconds) signed `message`."""
        if self.revoked_at is not None and at >= self.revoked_at:
            raise SignatureError(f"{self.id!r} was revoked before {at}", signer=self.id)
        for period in self.periods:
            if period.since <= at and (period.until is None or at < period.until):
                try:
                    verify_signature(period.public, message, signature_b64)
                    return
                except SignatureError:
                    continue
        raise SignatureError(f"no key of {self.id!r} valid at {at} verifies the signature", signer=self.id)


def load_or_create_key(path: Path, key_id: str) -> SigningKey:
    """Load the PEM key at `path`, creating it (mode 0600) if it does not exist yet."""
    if path.exists():
        return SigningKey.from_pem(key_id, path.read_bytes())
    key = SigningKey.generate(key_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.to_pem())
    return key
