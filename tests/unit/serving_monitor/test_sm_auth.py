"""API keys: every way of presenting a wrong key is refused, and stored records cannot be forged."""

from __future__ import annotations

import json

import pytest

from services.serving_monitor.auth import (
    ApiKeyRecord,
    ApiKeyStore,
    AuthReason,
    parse_api_key,
)
from services.serving_monitor.errors import KeyStoreError

PEPPER = b"p" * 32


@pytest.fixture
def store() -> ApiKeyStore:
    return ApiKeyStore(PEPPER)


def test_issued_key_has_documented_format_and_authenticates(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"], now=100.0)
    assert key.startswith(f"mlw_{record.key_id}_")
    assert parse_api_key(key) == (record.key_id, key.split("_", 2)[2])
    result = store.authenticate(key, "churn")
    assert result.ok
    assert result.reason is AuthReason.OK
    assert (result.client, result.key_id) == ("acme", record.key_id)


@pytest.mark.parametrize("presented", [None, "", "   "])
def test_call_without_key_is_denied(store: ApiKeyStore, presented: str | None) -> None:
    store.issue("acme", ["churn"])
    result = store.authenticate(presented, "churn")
    assert not result.ok
    assert result.reason is AuthReason.MISSING_KEY


@pytest.mark.parametrize(
    "garbage",
    [
        "letmein",
        "mlw_",
        "mlw_0123456789abcdef_short",
        "mlw_0123456789ABCDEF_" + "a" * 43,  # upper-case id
        "xyz_0123456789abcdef_" + "a" * 43,
        "mlw_0123456789abcdef_" + "a" * 43 + "\n",
        "mlw_0123456789abcdef_" + "a" * 10_000,
        "' OR 1=1 --",
    ],
)
def test_garbage_key_is_denied_as_malformed(store: ApiKeyStore, garbage: str) -> None:
    store.issue("acme", ["*"])
    result = store.authenticate(garbage, "churn")
    assert not result.ok
    assert result.reason is AuthReason.MALFORMED_KEY
    assert result.client is None


def test_well_formed_key_with_unknown_id_is_denied(store: ApiKeyStore) -> None:
    store.issue("acme", ["*"])
    result = store.authenticate("mlw_0123456789abcdef_" + "a" * 43, "churn")
    assert not result.ok
    assert result.reason is AuthReason.UNKNOWN_KEY
    assert result.client is None


def test_right_id_with_wrong_secret_is_denied(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["*"])
    secret = key.split("_", 2)[2]
    flipped = ("b" if secret[0] == "a" else "a") + secret[1:]
    result = store.authenticate(f"mlw_{record.key_id}_{flipped}", "churn")
    assert not result.ok
    assert result.reason is AuthReason.BAD_SECRET
    # The client behind the id is not revealed to someone without the secret.
    assert result.client is None


def test_secret_of_one_key_does_not_open_another(store: ApiKeyStore) -> None:
    key_a, _ = store.issue("alice", ["*"])
    _, record_b = store.issue("bob", ["*"])
    secret_a = key_a.split("_", 2)[2]
    result = store.authenticate(f"mlw_{record_b.key_id}_{secret_a}", "churn")
    assert result.reason is AuthReason.BAD_SECRET


def test_revoked_key_is_denied(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"])
    revoked = store.revoke(record.key_id)
    assert revoked.revoked
    result = store.authenticate(key, "churn")
    assert not result.ok
    assert result.reason is AuthReason.REVOKED


def test_removed_key_is_denied_as_revoked_and_never_taken_back(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"])
    store.remove(record.key_id)  # its record was deleted or purged from the bucket
    result = store.authenticate(key, "churn")
    assert not result.ok and result.reason is AuthReason.REVOKED and result.client is None
    with pytest.raises(KeyStoreError, match="revoked"):
        store.add(record)  # the old, genuinely MAC'd record put back
    assert store.authenticate(key, "churn").reason is AuthReason.REVOKED


def test_revoked_key_cannot_be_rolled_back_to_its_unrevoked_record(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"])
    store.add(store.revoke(record.key_id))
    with pytest.raises(KeyStoreError, match="revoked"):
        store.add(record)
    assert store.authenticate(key, "churn").reason is AuthReason.REVOKED


def test_key_scoped_to_one_model_cannot_call_another(store: ApiKeyStore) -> None:
    key, _ = store.issue("acme", ["churn", "fraud"])
    assert store.authenticate(key, "fraud").ok
    result = store.authenticate(key, "pricing")
    assert not result.ok
    assert result.reason is AuthReason.SCOPE


def test_wildcard_scope_allows_any_model(store: ApiKeyStore) -> None:
    key, _ = store.issue("ops", ["*"])
    assert store.authenticate(key, "anything-at-all").ok


def test_stored_form_never_contains_the_plaintext_secret(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"])
    dumped = json.dumps(store.to_dict())
    assert key.split("_", 2)[2] not in dumped
    assert set(store.to_dict()[record.key_id]) == {
        "key_id",
        "client",
        "scopes",
        "created",
        "revoked",
        "secret_hash",
        "record_mac",
    }


def test_round_trip_through_dict_keeps_keys_working(store: ApiKeyStore) -> None:
    key, record = store.issue("acme", ["churn"], now=5)
    _, other = store.issue("bob", ["*"])
    store.revoke(other.key_id)
    reloaded = ApiKeyStore.from_dict(PEPPER, json.loads(json.dumps(store.to_dict())))
    assert reloaded.authenticate(key, "churn").ok
    assert reloaded.get(other.key_id).revoked
    assert reloaded.get(record.key_id) == record


def test_record_with_widened_scope_is_refused_on_load(store: ApiKeyStore) -> None:
    # An attacker with write access to the bucket widens their own key to every model.
    _, record = store.issue("acme", ["churn"])
    data = store.to_dict()
    data[record.key_id]["scopes"] = ["*"]
    with pytest.raises(KeyStoreError, match="MAC"):
        ApiKeyStore.from_dict(PEPPER, data)


def test_record_un_revoked_by_editing_is_refused_on_load(store: ApiKeyStore) -> None:
    _, record = store.issue("acme", ["churn"])
    store.revoke(record.key_id)
    data = store.to_dict()
    data[record.key_id]["revoked"] = False
    with pytest.raises(KeyStoreError):
        ApiKeyStore.from_dict(PEPPER, data)


def test_record_forged_without_the_pepper_is_refused() -> None:
    # The attacker runs the same code with their own pepper to mint a record for a key they know.
    attacker = ApiKeyStore(b"x" * 32)
    key, forged = attacker.issue("mallory", ["*"])
    victim = ApiKeyStore(PEPPER)
    with pytest.raises(KeyStoreError) as caught:
        victim.add(ApiKeyRecord.from_dict(forged.to_dict()))
    assert caught.value.key_id == forged.key_id
    assert victim.authenticate(key, "churn").reason is AuthReason.UNKNOWN_KEY


def test_record_stored_under_another_id_is_refused(store: ApiKeyStore) -> None:
    _, record = store.issue("acme", ["churn"])
    data = {"ffffffffffffffff": store.to_dict()[record.key_id]}
    with pytest.raises(KeyStoreError):
        ApiKeyStore.from_dict(PEPPER, data)


def test_malformed_record_is_a_key_store_error() -> None:
    with pytest.raises(KeyStoreError):
        ApiKeyRecord.from_dict({"key_id": "nope"})


def test_short_pepper_is_refused() -> None:
    with pytest.raises(KeyStoreError):
        ApiKeyStore(b"short")
    assert len(ApiKeyStore.generate_pepper()) >= 32


@pytest.mark.parametrize(("client", "scopes"), [("acme", []), ("bad name", ["x"]), ("a", ["x y"])])
def test_issue_refuses_bad_client_or_scopes(store: ApiKeyStore, client: str, scopes: list[str]) -> None:
    with pytest.raises(KeyStoreError):
        store.issue(client, scopes)


def test_unknown_id_lookup_raises(store: ApiKeyStore) -> None:
    with pytest.raises(KeyStoreError):
        store.revoke("0123456789abcdef")
