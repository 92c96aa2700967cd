"""Where serving-monitor's API key records, pepper and feature schemas live on the bus.

Records (never plaintext keys) are in the `mlw-apikeys` bucket, feature schemas under
`schema.<model>`, reference profiles under `profile.<model>` and flagged clients under
`serving-monitor.flagged.` in `mlw-state`; the pepper that keys the record MACs stays in the
service's key folder, beside its private key.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError

from services.serving_monitor.auth import MIN_PEPPER_BYTES, ApiKeyRecord, ApiKeyStore
from services.serving_monitor.errors import KeyStoreError
from services.serving_monitor.flags import Flag, flag_key
from services.serving_monitor.ood import ReferenceProfile
from services.serving_monitor.validation import FeatureSchema
from shared.settings import Settings
from shared.topology import API_KEYS_BUCKET, STATE_BUCKET

SCHEMA_PREFIX = "schema."
PROFILE_PREFIX = "profile."


def pepper_path(settings: Settings) -> Path:
    """The pepper file of serving-monitor."""
    return settings.keys_dir / "serving-monitor.pepper"


def load_pepper(settings: Settings) -> bytes:
    """Load the pepper, creating it (mode 0600) on first use."""
    path = pepper_path(settings)
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pepper = secrets.token_bytes(MIN_PEPPER_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pepper)
    return pepper


async def issue_key_on_bus(js: JetStreamContext, settings: Settings, client: str, models: list[str]) -> str:
    """Issue an API key and store its record; returns the plaintext key, shown once."""
    store = ApiKeyStore(load_pepper(settings))
    plaintext, record = store.issue(client, models)
    kv = await js.key_value(API_KEYS_BUCKET)
    await kv.put(record.key_id, orjson.dumps(record.to_dict()))
    return plaintext


async def revoke_key_on_bus(js: JetStreamContext, settings: Settings, key_id: str) -> None:
    """Revoke a key: its record is rewritten with `revoked` set (watchers pick it up)."""
    kv = await js.key_value(API_KEYS_BUCKET)
    entry = await kv.get(key_id)
    store = ApiKeyStore.from_dict(load_pepper(settings), {key_id: orjson.loads(entry.value or b"{}")})
    revoked = store.revoke(key_id)
    await kv.put(key_id, orjson.dumps(revoked.to_dict()))


_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")


async def list_keys_on_bus(js: JetStreamContext) -> tuple[list[ApiKeyRecord], list[str]]:
    """The stored API key records (deleted ones are gone), and the ids of entries that are not
    records. Hashes only; MACs are serving-monitor's to check (it holds the pepper)."""
    kv = await js.key_value(API_KEYS_BUCKET)
    try:
        key_ids = sorted(await kv.keys())
    except NoKeysError:
        return [], []
    records: list[ApiKeyRecord] = []
    unreadable: list[str] = []
    for key_id in key_ids:
        try:
            entry = await kv.get(key_id)
            record = ApiKeyRecord.from_dict(orjson.loads(entry.value or b""))
        except KeyNotFoundError:
            continue  # deleted since the listing
        except (KeyStoreError, ValueError):
            unreadable.append(key_id)
            continue
        if record.key_id == key_id:
            records.append(record)
        else:
            unreadable.append(key_id)
    return records, unreadable


async def delete_key_on_bus(js: JetStreamContext, key_id: str, *, purge: bool = False) -> None:
    """Revoke a key by deleting its record: a running serving-monitor drops it at once (the
    delete marker reaches its watcher) and never takes it back. `purge` also drops the
    record's history from the bucket; by default the history keeps the revoked record."""
    if _KEY_ID_RE.fullmatch(key_id) is None:
        raise KeyStoreError("not a key id (16 lower-case hex characters)", key_id=key_id[:64])
    kv = await js.key_value(API_KEYS_BUCKET)
    try:
        await kv.get(key_id)
    except KeyNotFoundError:
        raise KeyStoreError("no API key record", key_id=key_id) from None
    if purge:
        await kv.purge(key_id)
    else:
        await kv.delete(key_id)


async def register_schema_on_bus(js: JetStreamContext, schema: FeatureSchema) -> None:
    """Register (or replace) a model's input feature schema."""
    kv = await js.key_value(STATE_BUCKET)
    await kv.put(SCHEMA_PREFIX + schema.model, orjson.dumps(schema.model_dump(mode="json")))


async def register_profile_on_bus(js: JetStreamContext, profile: ReferenceProfile) -> None:
    """Register (or replace) a model's offline OOD/extraction reference profile."""
    kv = await js.key_value(STATE_BUCKET)
    await kv.put(PROFILE_PREFIX + profile.model, orjson.dumps(profile.to_dict()))


async def put_flag_on_bus(js: JetStreamContext, flag: Flag) -> None:
    """Store a flag: every serving-monitor instance follows it, also after a restart."""
    kv = await js.key_value(STATE_BUCKET)
    await kv.put(flag_key(flag.client), flag.model_dump_json().encode())


async def clear_flag_on_bus(js: JetStreamContext, client: str) -> Flag | None:
    """Clear `client`'s flag (`OWNER.*` for an owner's); returns the flag that was cleared, None
    when there was none. A delete marker, so the bucket's history keeps what was cleared."""
    key = flag_key(client)
    kv = await js.key_value(STATE_BUCKET)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    await kv.delete(key)
    try:
        return Flag.model_validate_json(entry.value or b"")
    except ValueError:
        raise KeyStoreError("cleared an unreadable flag record", key_id=key) from None
