"""Auditor queries over the trail: ANDed filters, newest first, cursor pagination.

"Newest" is by event time, ties broken by seq: the order of the `(column, time, seq)` indexes
of `services.audit_log.store`, so a time range plus one filter is one backward index range
scan that stops after a page, however many entries match (<= 10 ms at 1,000,000 entries, see
benchmarks/audit_log.py). Ordering by seq instead would make the database collect and sort
every entry of the range first. The cursor is the seq of the last entry returned; the next
page continues strictly after that entry's (time, seq).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, or_, select, tuple_

from services.audit_log.errors import CorruptEntryError
from services.audit_log.store import AuditStore, StoredEntry
from shared.errors import InputError
from shared.events import AuditEntry, AuditPage, AuditQuery
from shared.tracing import trace_of


def run_query(store: AuditStore, query: AuditQuery) -> AuditPage:
    """Answer one `mlw.audit.query`: the newest `query.limit` matching entries.

    `since` is inclusive and `until` exclusive (event time, unix seconds). `cursor` returns
    entries older (smaller seq) than it; `next_cursor` is set only when more entries match.
    A subject ending in `:*` matches that subject and everything below it (`model:churn:*`
    matches `model:churn` and `model:churn:3`).
    """
    t = store.table
    where: list[ColumnElement[bool]] = []
    for name, bound in (("since", query.since), ("until", query.until)):
        # NaN compares false in SQLite and greater than everything in PostgreSQL: refuse it
        # rather than answer differently per backend.
        if bound is not None and not math.isfinite(bound):
            raise InputError(f"{name} must be a finite number of unix seconds, got {bound!r}")
    if query.since is not None:
        where.append(t.c.time >= query.since)
    if query.until is not None:
        where.append(t.c.time < query.until)
    equalities = {
        "service": query.service,
        "type": query.type,
        "subject": None if _is_prefix(query.subject) else query.subject,
        "actor": query.actor,
        "decision": query.decision,
        "client": query.client,
    }
    where.extend(t.c[name] == value for name, value in equalities.items() if value is not None)
    if query.subject is not None and _is_prefix(query.subject):
        where.append(subject_prefix(t.c.subject, query.subject[:-2]))
    if query.cursor is not None:
        where.append(_before(store, query.cursor))
    # One row more than asked tells whether another page exists without a COUNT.
    rows = store.select_entries(*where, newest_first=True, limit=query.limit + 1, by_time=True)
    page = rows[: query.limit]
    next_cursor = page[-1].seq if len(rows) > query.limit else None
    return AuditPage(entries=[to_audit_entry(row) for row in page], next_cursor=next_cursor)


def subject_prefix(column: Any, base: str) -> ColumnElement[bool]:
    """`base` itself or anything below it (`base:...`), as an index range rather than LIKE.

    ';' is the character after ':', so `base:` <= s < `base;` is exactly "starts with base:".
    """
    return or_(column == base, and_(column >= base + ":", column < base + ";"))


def _before(store: AuditStore, cursor: int) -> ColumnElement[bool]:
    """Entries after the cursor entry in newest-first order: (time, seq) < (its time, cursor)."""
    t = store.table
    with store.engine.connect() as conn:
        at = conn.execute(select(t.c.time).where(t.c.seq == cursor)).scalar_one_or_none()
    if at is None:
        # A cursor always names a stored entry; an unknown one falls back to seq order.
        return t.c.seq < cursor
    return tuple_(t.c.time, t.c.seq) < tuple_(at, cursor)


def _is_prefix(subject: str | None) -> bool:
    return subject is not None and subject.endswith(":*")


def to_audit_entry(entry: StoredEntry) -> AuditEntry:
    """The wire form of a stored entry, with the event parsed back from its body."""
    try:
        event: Any = orjson.loads(entry.body)
    except orjson.JSONDecodeError as exc:
        raise CorruptEntryError(f"body is not JSON: {exc}", seq=entry.seq) from exc
    if not isinstance(event, dict):
        raise CorruptEntryError("body is not a JSON object", seq=entry.seq)
    return AuditEntry(
        seq=entry.seq,
        event_id=entry.event_id,
        type=entry.type,
        source=entry.source,
        subject=entry.subject,
        service=entry.service,
        actor=entry.actor,
        decision=entry.decision,
        time=entry.time,
        recorded_at=entry.recorded_at,
        entry_hash=entry.entry_hash,
        trace_id=trace_of(entry.event_id, event).trace_id,
        event=event,
    )
