"""AuditStore on SQLite and PostgreSQL: group commit, idempotency, the hash chain, streaming."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
from sqlalchemy import insert, inspect, text

from services.audit_log.errors import ConcurrentAppendError, StoreUnavailableError
from services.audit_log.store import GENESIS_HASH, AuditStore, ChainHead, IncomingEvent
from services.audit_log.verify import verify_chain
from shared.errors import InputError, TransientError

EventFactory = Callable[..., bytes]

if TYPE_CHECKING:
    from conftest import DbTarget


def incoming(event_bytes: EventFactory, n: int, *, prefix: str = "e", **kw: object) -> list[IncomingEvent]:
    return [IncomingEvent.from_bytes(event_bytes(event_id=f"{prefix}{i}", **kw), recorded_at=2e9 + i) for i in range(n)]


def test_create_is_idempotent_and_starts_empty(store: AuditStore) -> None:
    store.create()
    assert store.count() == 0
    assert store.head() == ChainHead(0, GENESIS_HASH)
    assert list(store.iter_entries()) == []


def test_batch_is_inserted_in_order_with_dense_seq(store: AuditStore, event_bytes: EventFactory) -> None:
    result = store.append_batch(incoming(event_bytes, 5))
    assert (result.inserted, result.duplicates, result.first_seq, result.last_seq) == (5, 0, 1, 5)
    entries = list(store.iter_entries())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in entries] == [f"e{i}" for i in range(5)]
    assert [e.leaf_index for e in entries] == [0, 1, 2, 3, 4]


def test_duplicates_within_a_batch_give_one_row(store: AuditStore, event_bytes: EventFactory) -> None:
    one = IncomingEvent.from_bytes(event_bytes(event_id="dup"), recorded_at=1.0)
    other = IncomingEvent.from_bytes(event_bytes(event_id="other"), recorded_at=1.0)
    result = store.append_batch([one, other, one, one])
    assert (result.inserted, result.duplicates) == (2, 2)
    assert store.count() == 2


def test_duplicates_across_batches_are_skipped_and_chain_untouched(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    first = incoming(event_bytes, 3)
    store.append_batch(first)
    head = store.head()
    # A full redelivery changes nothing, not even the head.
    redelivered = store.append_batch(first)
    assert (redelivered.inserted, redelivered.duplicates, redelivered.first_seq) == (0, 3, None)
    assert store.head() == head
    # A batch mixing old and new ids stores only the new ones, right after the head.
    mixed = store.append_batch([first[1], *incoming(event_bytes, 2, prefix="n")])
    assert (mixed.inserted, mixed.duplicates, mixed.first_seq, mixed.last_seq) == (2, 1, 4, 5)
    assert store.count() == 5
    assert verify_chain(store).ok


def test_duplicates_are_detected_on_a_reopened_store(
    store: AuditStore, make_store: Callable[[], AuditStore], event_bytes: EventFactory
) -> None:
    batch = incoming(event_bytes, 3)
    store.append_batch(batch)
    store.close()
    reopened = make_store()
    assert reopened.append_batch(batch).duplicates == 3
    assert reopened.count() == 3


def test_empty_batch_is_a_no_op(store: AuditStore) -> None:
    result = store.append_batch([])
    assert (result.inserted, result.duplicates) == (0, 0)


def test_each_row_links_to_the_previous_one_as_documented(store: AuditStore, event_bytes: EventFactory) -> None:
    store.append_batch(incoming(event_bytes, 2, subject="model:churn:3", data={"uploader": "al"}))
    store.append_batch(incoming(event_bytes, 2, prefix="b"))
    entries = list(store.iter_entries())
    prev = GENESIS_HASH
    for entry in entries:
        assert entry.prev_hash == prev
        # Recomputed here from the module docstring's definition, independently of the store.
        leaf = orjson.dumps(
            {
                "v": 1,
                "seq": entry.seq,
                "event_id": entry.event_id,
                "type": entry.type,
                "source": entry.source,
                "subject": entry.subject,
                "service": entry.service,
                "actor": entry.actor,
                "decision": entry.decision,
                "client": entry.client,
                "time": entry.time,
                "recorded_at": entry.recorded_at,
                "body": entry.body,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        assert entry.entry_hash == hashlib.sha256(bytes.fromhex(prev) + leaf).hexdigest()
        prev = entry.entry_hash
    assert store.head() == ChainHead(4, prev)


def test_stored_row_round_trips_every_column(store: AuditStore, event_bytes: EventFactory) -> None:
    body = event_bytes(
        event_id="v1",
        type_="mlw.verdict.dataset",
        source="mlwarden/data-guard",
        subject="dataset:iris:1",
        time=1_714_564_800.123456,
        data={"uploader": "alice", "decision": "warn", "client": "c7"},
    )
    item = IncomingEvent.from_bytes(body, recorded_at=1_714_564_801.5)
    store.append_batch([item])
    entry = store.find("v1")
    assert entry is not None
    for name in ("event_id", "type", "source", "subject", "service", "actor", "decision", "client"):
        assert getattr(entry, name) == getattr(item, name)
    # Floats come back bit-identical, or the recomputed hash would not match.
    assert entry.time == item.time == 1_714_564_800.123456
    assert entry.recorded_at == 1_714_564_801.5
    assert entry.body.encode() == body
    assert store.find("missing") is None


def test_iter_entries_streams_in_chunks(store: AuditStore, event_bytes: EventFactory) -> None:
    store.append_batch(incoming(event_bytes, 7))
    assert [e.seq for e in store.iter_entries(2)] == list(range(1, 8))
    assert [e.seq for e in store.iter_entries(3, after_seq=5)] == [6, 7]


def test_failed_batch_is_rolled_back_whole(
    store: AuditStore, event_bytes: EventFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_batch(incoming(event_bytes, 2))
    # A writer that bypassed the lock: it read the head (seq 2) before someone else wrote
    # seq 4, so its batch (seq 3, 4, 5) collides on its second row.
    stale = store.head()
    monkeypatch.setattr(store, "_head", lambda _conn: stale)
    with store.engine.begin() as conn:
        conn.execute(
            insert(store.table).values(
                seq=4,
                event_id="intruder",
                type="t",
                source="s",
                time=0.0,
                recorded_at=0.0,
                body="{}",
                prev_hash=GENESIS_HASH,
                entry_hash=GENESIS_HASH,
            )
        )
    with pytest.raises(ConcurrentAppendError) as info:
        store.append_batch(incoming(event_bytes, 3, prefix="late"))
    assert info.value.first_seq == 3
    # Group commit: the first row (seq 3), which did not collide, was not kept either.
    assert store.count() == 3
    assert store.find("late0") is None


def test_two_writers_serialise_instead_of_forking_the_chain(
    store: AuditStore, make_store: Callable[[], AuditStore], event_bytes: EventFactory
) -> None:
    writers = [store, make_store()]

    def write(w: int) -> None:
        for b in range(10):
            writers[w].append_batch(incoming(event_bytes, 5, prefix=f"w{w}b{b}-"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(write, w) for w in range(2)]
    for future in futures:
        future.result()  # re-raises a writer's error (a lock timeout, a forked chain)
    assert store.count() == 100
    report = verify_chain(store)
    assert report.ok, report.reason
    assert report.entries == 100


def test_sqlite_file_uses_wal_and_normal_sync(tmp_path: Path) -> None:
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        store.create()
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 1  # NORMAL


def test_in_memory_sqlite_keeps_one_database(event_bytes: EventFactory) -> None:
    with AuditStore("sqlite://") as store:
        store.create()
        store.append_batch(incoming(event_bytes, 3))
        assert store.count() == 3
        assert verify_chain(store).ok


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/test",
        "sqlite:////nonexistent-dir/audit.db",
    ],
)
def test_unreachable_database_raises_a_transient_error(url: str) -> None:
    with AuditStore(url) as store, pytest.raises(StoreUnavailableError) as info:
        store.create()
    assert isinstance(info.value, TransientError)


def test_schema_is_refused_on_sqlite(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        AuditStore(f"sqlite:///{tmp_path / 'a.db'}", schema="x")


def test_query_indexes_exist(store: AuditStore, db_target: DbTarget) -> None:
    names = {index.name for index in store.table.indexes}
    assert {
        "ix_audit_entries_time",
        "ix_audit_entries_service_time",
        "ix_audit_entries_type_time",
        "ix_audit_entries_subject_time",
        "ix_audit_entries_actor_time",
        "ix_audit_entries_decision_time",
        "ix_audit_entries_client_time",
    } <= names
    with store.engine.connect() as conn:
        found = inspect(conn).get_indexes("audit_entries", schema=db_target.schema)
    in_db = {ix["name"] for ix in found}
    assert names <= in_db


def test_create_adds_an_index_missing_from_an_older_trail(store: AuditStore, db_target: DbTarget) -> None:
    name = "ix_audit_entries_service_decision_time"
    prefix = f'"{db_target.schema}".' if db_target.schema else ""
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {prefix}{name}"))
    store.create()
    with store.engine.connect() as conn:
        found = {ix["name"] for ix in inspect(conn).get_indexes("audit_entries", schema=db_target.schema)}
    assert name in found


def test_password_is_hidden_in_the_store_url() -> None:
    store = AuditStore("postgresql+psycopg://u:secret@127.0.0.1:1/db")
    assert "secret" not in store.url
    store.close()
