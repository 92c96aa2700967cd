"""verify_chain against tampering, on SQLite and PostgreSQL: each attack is performed in SQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import delete, insert, select, update

from services.audit_log.store import (
    GENESIS_HASH,
    AuditStore,
    ChainHead,
    IncomingEvent,
    chain_hash,
    leaf_input,
)
from services.audit_log.verify import verify_chain

EventFactory = Callable[..., bytes]
N = 9
# Small chunks so that every attack below also straddles a chunk boundary somewhere.
CHUNK = 4


@pytest.fixture
def filled(store: AuditStore, event_bytes: EventFactory, drop_guards: Callable[[AuditStore], None]) -> AuditStore:
    items = [
        IncomingEvent.from_bytes(
            event_bytes(event_id=f"e{i}", time=1_700_000_000.0 + i, data={"uploader": f"u{i}"}),
            recorded_at=1_700_000_100.0 + i,
        )
        for i in range(1, N + 1)
    ]
    store.append_batch(items[:5])
    store.append_batch(items[5:])
    # These attacks are on the chain alone: the attacker has dropped the triggers first.
    drop_guards(store)
    return store


def row(store: AuditStore, seq: int) -> dict[str, object]:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(store.table).where(store.table.c.seq == seq)).one()._mapping)


def set_seq(store: AuditStore, old: int, new: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(store.table).where(store.table.c.seq == old).values(seq=new))


def test_intact_chain_verifies(filled: AuditStore) -> None:
    report = verify_chain(filled, chunk=CHUNK)
    assert (report.ok, report.entries, report.first_bad_seq, report.reason) == (True, N, None, "")
    assert report.head == filled.head()


def test_empty_store_verifies(store: AuditStore) -> None:
    report = verify_chain(store)
    assert report.ok
    assert report.entries == 0
    assert report.head == ChainHead(0, GENESIS_HASH)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("body", '{"forged": true}'),
        ("actor", "mallory"),
        ("decision", "pass"),
        ("service", "data-guard"),
        ("subject", "model:other:1"),
        ("type", "mlw.verdict.dataset"),
        ("event_id", "forged-id"),
        ("time", 1_600_000_000.0),
        ("recorded_at", 1_700_000_100.000001),
        ("entry_hash", "f" * 64),
        ("prev_hash", "0" * 64),
    ],
)
def test_changed_field_is_detected(filled: AuditStore, column: str, value: object) -> None:
    with filled.engine.begin() as conn:
        conn.execute(update(filled.table).where(filled.table.c.seq == 6).values({column: value}))
    report = verify_chain(filled, chunk=CHUNK)
    assert not report.ok
    assert report.first_bad_seq == 6
    assert report.entries == 5
    assert report.head.seq == 5


def test_body_whitespace_change_is_detected(filled: AuditStore) -> None:
    # The same JSON value, reformatted: still a change to what was received and signed.
    body = str(row(filled, 3)["body"])
    with filled.engine.begin() as conn:
        conn.execute(update(filled.table).where(filled.table.c.seq == 3).values(body=body + " "))
    assert verify_chain(filled, chunk=CHUNK).first_bad_seq == 3


@pytest.mark.parametrize("seq", [1, 4, 5, 8])
def test_deleted_row_is_detected(filled: AuditStore, seq: int) -> None:
    with filled.engine.begin() as conn:
        conn.execute(delete(filled.table).where(filled.table.c.seq == seq))
    report = verify_chain(filled, chunk=CHUNK)
    assert not report.ok
    assert report.first_bad_seq == seq
    assert "missing" in report.reason


def test_swapped_rows_are_detected(filled: AuditStore) -> None:
    # Exchange positions 3 and 7 (via a free seq, to respect the primary key).
    set_seq(filled, 3, 1000)
    set_seq(filled, 7, 3)
    set_seq(filled, 1000, 7)
    report = verify_chain(filled, chunk=CHUNK)
    assert not report.ok
    assert report.first_bad_seq == 3


def test_swapped_rows_with_relinked_prev_hash_are_detected(filled: AuditStore) -> None:
    # A cleverer swap that also rewrites both rows' prev_hash: seq is inside the hash.
    set_seq(filled, 4, 1000)
    set_seq(filled, 5, 4)
    set_seq(filled, 1000, 5)
    h3 = str(row(filled, 3)["entry_hash"])
    with filled.engine.begin() as conn:
        conn.execute(update(filled.table).where(filled.table.c.seq == 4).values(prev_hash=h3))
    report = verify_chain(filled, chunk=CHUNK)
    assert report.first_bad_seq == 4
    assert "entry_hash" in report.reason


def _forged(seq: int, prev_hash: str, event_bytes: EventFactory, event_id: str = "forged") -> dict[str, object]:
    """A row built exactly as the writer would build it (the attacker knows the format)."""
    item = IncomingEvent.from_bytes(
        event_bytes(event_id=event_id, data={"uploader": "mallory"}), recorded_at=1_700_000_050.0
    )
    values = {f: getattr(item, f) for f in item.__dataclass_fields__}
    entry_hash = chain_hash(prev_hash, leaf_input(seq, item))
    return {**values, "seq": seq, "prev_hash": prev_hash, "entry_hash": entry_hash}


def test_inserted_row_in_the_middle_is_detected(filled: AuditStore, event_bytes: EventFactory) -> None:
    # Make room after seq 4 by shifting later rows up (top down, for the primary key), then
    # insert a correctly hashed row that links to seq 4.
    for seq in range(N, 4, -1):
        set_seq(filled, seq, seq + 1)
    prev = str(row(filled, 4)["entry_hash"])
    with filled.engine.begin() as conn:
        conn.execute(insert(filled.table).values(_forged(5, prev, event_bytes)))
    report = verify_chain(filled, chunk=CHUNK)
    assert not report.ok
    # The forged row itself is consistent; the next one no longer links.
    assert report.first_bad_seq == 6
    assert report.entries == 5


def test_appended_row_with_a_bogus_hash_is_detected(filled: AuditStore, event_bytes: EventFactory) -> None:
    forged = _forged(N + 1, filled.head().entry_hash, event_bytes)
    forged["entry_hash"] = "a" * 64
    with filled.engine.begin() as conn:
        conn.execute(insert(filled.table).values(forged))
    assert verify_chain(filled, chunk=CHUNK).first_bad_seq == N + 1


def test_rewritten_tail_is_caught_only_by_a_trusted_anchor(filled: AuditStore, event_bytes: EventFactory) -> None:
    anchor = verify_chain(filled).head
    # The attacker replaces entry 7 and recomputes 7, 8, 9 so the chain is self-consistent.
    with filled.engine.begin() as conn:
        conn.execute(delete(filled.table).where(filled.table.c.seq >= 7))
    prev = str(row(filled, 6)["entry_hash"])
    for seq in range(7, N + 1):
        forged = _forged(seq, prev, event_bytes, event_id=f"forged{seq}")
        with filled.engine.begin() as conn:
            conn.execute(insert(filled.table).values(forged))
        prev = str(forged["entry_hash"])
    # A plain chain cannot tell (why issue 3 adds signed checkpoints) ...
    assert verify_chain(filled, chunk=CHUNK).ok
    # ... a head recorded before the attack can.
    report = verify_chain(filled, chunk=CHUNK, anchor=anchor)
    assert not report.ok
    assert report.first_bad_seq == N


@pytest.mark.parametrize("removed", [1, 3])
def test_truncated_newest_rows_are_caught_by_a_trusted_anchor(filled: AuditStore, removed: int) -> None:
    anchor = filled.head()
    with filled.engine.begin() as conn:
        conn.execute(delete(filled.table).where(filled.table.c.seq > N - removed))
    assert verify_chain(filled, chunk=CHUNK).ok
    report = verify_chain(filled, chunk=CHUNK, anchor=anchor)
    assert not report.ok
    assert report.first_bad_seq == N - removed + 1
    assert "removed" in report.reason


def test_anchor_in_the_past_accepts_later_appends(filled: AuditStore, event_bytes: EventFactory) -> None:
    anchor = filled.head()
    filled.append_batch([IncomingEvent.from_bytes(event_bytes(event_id="later"), recorded_at=0.0)])
    report = verify_chain(filled, chunk=CHUNK, anchor=anchor)
    assert report.ok
    assert report.entries == N + 1
