"""The root-signed trust store, without a broker: what enters it, what is ignored, and what a
rotated or revoked key may still verify."""

from __future__ import annotations

import orjson
import pytest

from shared.errors import SignatureError
from shared.signing import SigningKey
from shared.trust import (
    TrustError,
    apply_update,
    build_store,
    new_entry,
    parse_entry,
    revoked_entry,
    sign_entry,
)

ROOT = SigningKey.generate("root")
ROOT_PUB = ROOT.private.public_key()
SIGNER = SigningKey.generate("artifact-signer")
MESSAGE = b"a verdict"


def _value(key: SigningKey = SIGNER, *, root: SigningKey = ROOT, kind: str = "service", t: float = 100.0) -> bytes:
    return sign_entry(root, new_entry(key.key_id, kind, key.public_b64(), now=t))  # type: ignore[arg-type]


def test_a_root_signed_entry_is_trusted_for_its_kind_only() -> None:
    store, rejected = build_store([("artifact-signer", _value(), 1)], ROOT_PUB)
    assert rejected == []
    store.verify("artifact-signer", MESSAGE, SIGNER.sign(MESSAGE), kind="service")
    with pytest.raises(SignatureError, match="not a actor"):
        store.verify("artifact-signer", MESSAGE, SIGNER.sign(MESSAGE), kind="actor")


def test_trust_on_first_use_is_gone_a_bare_key_or_another_roots_entry_is_ignored() -> None:
    # The dev-mode attack: a client writes its own key for artifact-signer before the service starts.
    attacker = SigningKey.generate("artifact-signer")
    bare = attacker.public_b64().encode()
    other_root = _value(attacker, root=SigningKey.generate("root"))
    store, rejected = build_store([("artifact-signer", bare, 1), ("artifact-signer", other_root, 2)], ROOT_PUB)
    assert "artifact-signer" not in store
    assert [r.revision for r in rejected] == [1, 2]
    assert all("root" in r.reason for r in rejected)
    with pytest.raises(SignatureError):
        store.verify("artifact-signer", MESSAGE, attacker.sign(MESSAGE))


def test_an_entry_stored_under_another_id_or_with_a_changed_field_is_ignored() -> None:
    with pytest.raises(TrustError, match="stored under"):
        parse_entry(_value(), key="data-guard", root=ROOT_PUB)
    doc = orjson.loads(_value(kind="actor"))
    doc["entry"]["roles"] = ["reviewer"]  # a role added after the root signed
    with pytest.raises(TrustError, match="root signature"):
        parse_entry(orjson.dumps(doc), key="artifact-signer", root=ROOT_PUB)


def test_rotation_keeps_history_verifiable_but_the_old_key_signs_nothing_new() -> None:
    first = new_entry("alice", "actor", SIGNER.public_b64(), roles=["ml-engineer"], now=100.0)
    newer = SigningKey.generate("alice")
    rotated = new_entry("alice", "actor", newer.public_b64(), roles=["ml-engineer"], previous=first, now=200.0)
    store, _ = build_store([("alice", sign_entry(ROOT, first), 1), ("alice", sign_entry(ROOT, rotated), 2)], ROOT_PUB)
    old_signature = SIGNER.sign(MESSAGE)
    store.verify_at("alice", MESSAGE, old_signature, at=150.0)  # what it signed before rotation
    with pytest.raises(SignatureError):
        store.verify("alice", MESSAGE, old_signature)  # nothing new
    with pytest.raises(SignatureError):
        store.verify_at("alice", MESSAGE, old_signature, at=250.0)
    store.verify("alice", MESSAGE, newer.sign(MESSAGE))
    assert store.roles_of("alice") == {"ml-engineer"}


def test_revocation_wins_over_a_replayed_older_entry() -> None:
    first = new_entry("bob", "actor", SIGNER.public_b64(), roles=["reviewer"], now=100.0)
    revoked = revoked_entry(first, "laptop stolen", now=300.0)
    values = [("bob", sign_entry(ROOT, first), 1), ("bob", sign_entry(ROOT, revoked), 2)]
    # the attacker writes the older, validly signed entry again after the revocation
    values.append(("bob", sign_entry(ROOT, first), 3))
    store, rejected = build_store(values, ROOT_PUB)
    assert rejected == []
    with pytest.raises(SignatureError, match="revoked"):
        store.verify("bob", MESSAGE, SIGNER.sign(MESSAGE))
    assert store.roles_of("bob") == frozenset()
    # live updates: the stale entry does not undo the revocation either
    assert apply_update(store, "bob", sign_entry(ROOT, first), ROOT_PUB) is None
    with pytest.raises(SignatureError, match="revoked"):
        store.verify("bob", MESSAGE, SIGNER.sign(MESSAGE))
    store.verify_at("bob", MESSAGE, SIGNER.sign(MESSAGE), at=200.0)  # history before revocation
