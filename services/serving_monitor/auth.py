"""API keys for model-serving clients: issue, store only a keyed hash, authenticate, revoke.

Key format: ``mlw_<key_id>_<secret>``, where ``key_id`` is 16 lower-case hex characters (a lookup
handle, not a secret) and ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits).

Why HMAC-SHA256 with a server-side pepper rather than plain SHA-256 (and not a slow KDF):

* The secret has 256 bits of entropy, so nobody can brute-force it from its hash; a slow password
  hash (argon2, scrypt) would buy nothing and cost latency on every admission.
* The records live in a NATS key-value bucket that more than this service may be able to write.
  With a plain SHA-256 anyone with write access could insert a record for a key they made up, or
  widen the scopes of their own key. The pepper (held by serving-monitor only, never in the
  bucket) keys both the secret hash and a MAC over the whole record, so a record forged or edited
  without the pepper is refused when it is loaded.
* The hash binds the key id, so swapping hashes between records does not move a secret to
  another client.

Revoking is deleting (or purging) the record, or rewriting it with `revoked` set. Either is one
way in a running store: a record for a key it has seen revoked or deleted is refused, so putting
the old, genuinely MAC'd record back does not un-revoke it (issue 8).

What the pepper does not stop: that rollback across a restart of serving-monitor, which reads the
bucket afresh. Only the operator may write the bucket; its history and the audit trail are the
defence there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.serving_monitor.errors import KeyStoreError
from shared.canonical import canonical_json

KEY_PREFIX = "mlw"
WILDCARD_SCOPE = "*"
MIN_PEPPER_BYTES = 32
# A well-formed key is 4 + 16 + 1 + 43 = 64 characters; anything much longer is refused before
# the regular expression runs, so hostile input costs nothing.
_MAX_KEY_CHARS = 128
_KEY_RE = re.compile(r"mlw_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Domain separation: the same pepper keys two different MACs.
_SECRET_CONTEXT = b"mlwarden/api-key-secret/v1\x00"
_RECORD_CONTEXT = b"mlwarden/api-key-record/v1\x00"


class AuthReason(StrEnum):
    """Why an API key was accepted or refused."""

    OK = "ok"
    MISSING_KEY = "missing_key"
    MALFORMED_KEY = "malformed_key"
    UNKNOWN_KEY = "unknown_key"
    BAD_SECRET = "bad_secret"
    REVOKED = "revoked"
    SCOPE = "scope"


@dataclass(frozen=True)
class AuthResult:
    """Outcome of one authentication: who the client is, or why it was refused."""

    ok: bool
    reason: AuthReason
    client: str | None = None
    key_id: str | None = None


class ApiKeyRecord(BaseModel):
    """What is stored for one API key: never the key itself, only a keyed hash of its secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="public lookup handle in the key")
    client: str = Field(pattern=_NAME_RE.pattern, description="client the key belongs to")
    scopes: tuple[str, ...] = Field(min_length=1, description="model names the key may call, or '*'")
    created: float = Field(description="unix seconds when it was issued")
    revoked: bool = Field(default=False, description="a revoked key never authenticates again")
    secret_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256(pepper, id+secret)")
    record_mac: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256(pepper, record)")

    def allows(self, model: str) -> bool:
        """True when this key's scopes cover `model`."""
        return WILDCARD_SCOPE in self.scopes or model in self.scopes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for a key-value bucket."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiKeyRecord:
        """Parse a stored record (its MAC is checked when a store takes it, see `ApiKeyStore.add`)."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise KeyStoreError(f"malformed record: {exc.error_count()} errors") from exc


def parse_api_key(api_key: str) -> tuple[str, str] | None:
    """Split a well-formed key into (key_id, secret); None when it is not one."""
    if len(api_key) > _MAX_KEY_CHARS:
        return None
    match = _KEY_RE.fullmatch(api_key)
    if match is None:
        return None
    return match.group(1), match.group(2)


class ApiKeyStore:
    """Issued API keys by key id, each verified against the server-side pepper."""

    def __init__(self, pepper: bytes, records: Iterable[ApiKeyRecord] = ()) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise KeyStoreError(f"pepper must be at least {MIN_PEPPER_BYTES} bytes")
        self._pepper = pepper
        self._records: dict[str, ApiKeyRecord] = {}
        # Key ids revoked or deleted while this store ran: never taken back (bounded by the
        # operator's revocations, not by traffic).
        self._revoked: set[str] = set()
        for record in records:
            self.add(record)

    @staticmethod
    def generate_pepper() -> bytes:
        """A fresh random pepper; keep it with the service's private key, not in the bucket."""
        return secrets.token_bytes(MIN_PEPPER_BYTES)

    # --- hashing ----------------------------------------------------------------------------

    def _secret_hash(self, key_id: str, secret: str) -> str:
        message = _SECRET_CONTEXT + key_id.encode() + b"\x00" + secret.encode()
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    def _record_mac(self, fields: Mapping[str, Any]) -> str:
        body = {k: v for k, v in fields.items() if k != "record_mac"}
        message = _RECORD_CONTEXT + canonical_json(body)
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    def _seal(self, **fields: Any) -> ApiKeyRecord:
        # The MAC covers the record's JSON form (after pydantic has normalised the types), so it
        # verifies identically after a round trip through the bucket.
        unsealed = ApiKeyRecord(**fields, record_mac="0" * 64)
        return unsealed.model_copy(update={"record_mac": self._record_mac(unsealed.to_dict())})

    # --- records ----------------------------------------------------------------------------

    def issue(self, client: str, scopes: Iterable[str], *, now: float | None = None) -> tuple[str, ApiKeyRecord]:
        """Make a new key for `client`; return the plaintext key (shown once) and its record."""
        scope_list = sorted(set(scopes))
        if not scope_list:
            raise KeyStoreError("a key needs at least one scope")
        for scope in scope_list:
            if scope != WILDCARD_SCOPE and _NAME_RE.fullmatch(scope) is None:
                raise KeyStoreError(f"invalid scope {scope[:64]!r}")
        if _NAME_RE.fullmatch(client) is None:
            raise KeyStoreError(f"invalid client name {client[:64]!r}")
        key_id = secrets.token_hex(8)
        while key_id in self._records:  # 64-bit ids: a collision is astronomically unlikely
            key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = self._seal(
            key_id=key_id,
            client=client,
            scopes=tuple(scope_list),
            created=time.time() if now is None else now,
            revoked=False,
            secret_hash=self._secret_hash(key_id, secret),
        )
        self._records[key_id] = record
        return f"{KEY_PREFIX}_{key_id}_{secret}", record

    def add(self, record: ApiKeyRecord) -> None:
        """Take a record loaded from storage, refusing it when its MAC does not verify or when it
        would bring back a key this store has seen revoked or deleted."""
        expected = self._record_mac(record.to_dict())
        if not hmac.compare_digest(expected, record.record_mac):
            raise KeyStoreError("record MAC does not verify (forged or edited)", key_id=record.key_id)
        if record.key_id in self._revoked and not record.revoked:
            raise KeyStoreError("key was revoked; an unrevoked record for it is refused", key_id=record.key_id)
        if record.revoked:
            self._revoked.add(record.key_id)
        self._records[record.key_id] = record

    def remove(self, key_id: str) -> None:
        """Drop a key whose record was deleted or purged from storage: from now on it is refused
        as revoked, and a record for it is not taken back."""
        self._records.pop(key_id, None)
        self._revoked.add(key_id)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked; return the new record for the wiring to store."""
        record = self.get(key_id)
        fields = record.model_dump(exclude={"record_mac"})
        fields["revoked"] = True
        revoked = self._seal(**fields)
        self._records[key_id] = revoked
        self._revoked.add(key_id)
        return revoked

    def get(self, key_id: str) -> ApiKeyRecord:
        """The record of `key_id`; raise `KeyStoreError` when there is none."""
        try:
            return self._records[key_id]
        except KeyError:
            raise KeyStoreError("unknown key id", key_id=key_id) from None

    def __len__(self) -> int:
        return len(self._records)

    # --- authentication ---------------------------------------------------------------------

    def authenticate(self, api_key: str | None, model: str) -> AuthResult:
        """Check a presented key for a call to `model`; never raises on hostile input."""
        # (1) presence and shape, before any lookup or hashing.
        if api_key is None or not api_key.strip():
            return AuthResult(ok=False, reason=AuthReason.MISSING_KEY)
        parsed = parse_api_key(api_key)
        if parsed is None:
            return AuthResult(ok=False, reason=AuthReason.MALFORMED_KEY)
        key_id, secret = parsed
        # (2) lookup by the public key id. Saying "unknown" leaks only whether an id exists, which
        # is worthless without the 256-bit secret.
        record = self._records.get(key_id)
        if record is None:
            # A deleted record leaves no hash to check the secret against: say so by its id.
            reason = AuthReason.REVOKED if key_id in self._revoked else AuthReason.UNKNOWN_KEY
            return AuthResult(ok=False, reason=reason, key_id=key_id)
        # (3) the secret, in constant time, before anything else about the record is revealed.
        if not hmac.compare_digest(self._secret_hash(key_id, secret), record.secret_hash):
            return AuthResult(ok=False, reason=AuthReason.BAD_SECRET, key_id=key_id)
        # (4) revocation, then (5) the scope of this call.
        if record.revoked:
            return AuthResult(ok=False, reason=AuthReason.REVOKED, client=record.client, key_id=key_id)
        if not record.allows(model):
            return AuthResult(ok=False, reason=AuthReason.SCOPE, client=record.client, key_id=key_id)
        return AuthResult(ok=True, reason=AuthReason.OK, client=record.client, key_id=key_id)

    # --- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every record by key id, JSON-ready (hashes only, never a plaintext key)."""
        return {key_id: record.to_dict() for key_id, record in self._records.items()}

    @classmethod
    def from_dict(cls, pepper: bytes, data: Mapping[str, Mapping[str, Any]]) -> ApiKeyStore:
        """Rebuild a store from `to_dict` output, verifying every record's MAC."""
        store = cls(pepper)
        for key_id, fields in data.items():
            record = ApiKeyRecord.from_dict(fields)
            if record.key_id != key_id:
                raise KeyStoreError("record stored under another key id", key_id=key_id)
            store.add(record)
        return store
