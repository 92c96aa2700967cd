"""Append-only at the database level: triggers reject UPDATE and DELETE (and TRUNCATE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError

from services.audit_log.store import AuditStore, IncomingEvent
from services.audit_log.verify import verify_chain

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]


@pytest.fixture
def filled(store: AuditStore, event_bytes: EventFactory) -> AuditStore:
    store.append_batch([IncomingEvent.from_bytes(event_bytes(event_id=f"g{i}"), recorded_at=1.0) for i in range(5)])
    return store


@pytest.mark.parametrize(
    "statement",
    [
        lambda s: update(s.table).where(s.table.c.seq == 3).values(actor="mallory"),
        lambda s: update(s.table).values(decision="pass"),
        lambda s: delete(s.table).where(s.table.c.seq == 5),
        lambda s: delete(s.table),
        lambda s: update(s.tree_table).where(s.tree_table.c.tree_size == 2).values(hash=b"\0" * 32),
        lambda s: delete(s.tree_table).where(s.tree_table.c.tree_size > 3),
    ],
    ids=["update-one", "update-all", "delete-newest", "delete-all", "update-node", "delete-nodes"],
)
def test_update_and_delete_are_refused(filled: AuditStore, statement: Callable[[AuditStore], object]) -> None:
    before = [e.entry_hash for e in filled.iter_entries()]
    with pytest.raises(DBAPIError, match="append-only"), filled.engine.begin() as conn:
        conn.execute(statement(filled))  # type: ignore[call-overload]
    assert [e.entry_hash for e in filled.iter_entries()] == before
    assert filled.tree_size() == 5
    assert verify_chain(filled).ok


def test_truncate_is_refused_on_postgresql(filled: AuditStore, db_target: DbTarget) -> None:
    if db_target.backend != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    for table in ("audit_entries", "audit_tree"):
        with pytest.raises(DBAPIError, match="append-only"), filled.engine.begin() as conn:
            conn.execute(text(f'TRUNCATE "{db_target.schema}".{table}'))
    assert filled.count() == 5


def test_appending_still_works(filled: AuditStore, event_bytes: EventFactory) -> None:
    result = filled.append_batch([IncomingEvent.from_bytes(event_bytes(event_id="more"), recorded_at=2.0)])
    assert result.inserted == 1
    assert filled.tree_size() == 6


def test_create_puts_dropped_triggers_back(
    filled: AuditStore, drop_guards: Callable[[AuditStore], None], make_store: Callable[[], AuditStore]
) -> None:
    drop_guards(filled)
    with filled.engine.begin() as conn:
        conn.execute(update(filled.table).where(filled.table.c.seq == 1).values(actor="x"))
    make_store()  # a restart of audit-log runs create()
    with pytest.raises(DBAPIError, match="append-only"), filled.engine.begin() as conn:
        conn.execute(update(filled.table).where(filled.table.c.seq == 2).values(actor="y"))
