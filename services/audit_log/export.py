"""Streaming exports and per-subject histories, straight from the store (constant memory).

Both walk the `(time, seq)` order in keyset pages, so memory stays flat whatever the range,
and every exported entry carries its `leaf_index` so that it can be proven later
(`mlwarden audit prove`, docs/audit-proofs.md).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO, Any, Final, Literal

import orjson
from sqlalchemy import ColumnElement, tuple_

from services.audit_log.query import subject_prefix
from services.audit_log.store import AuditStore, StoredEntry
from shared.errors import InputError

#: Columns of an export, in order (CSV header; JSON keys, plus `event`, the parsed body).
EXPORT_FIELDS: Final = (
    "leaf_index",
    "seq",
    "event_id",
    "time",
    "recorded_at",
    "type",
    "source",
    "subject",
    "service",
    "actor",
    "decision",
    "client",
    "entry_hash",
    "body",
)
ExportFormat = Literal["jsonl", "csv"]


def iter_entries_by_time(
    store: AuditStore,
    *where: ColumnElement[bool],
    since: float | None = None,
    until: float | None = None,
    chunk: int = 1000,
) -> Iterator[StoredEntry]:
    """Entries with since <= time < until matching `where`, oldest first, `chunk` rows a query."""
    if chunk < 1:
        raise InputError(f"chunk must be at least 1, got {chunk}")
    t = store.table.c
    bounds: list[ColumnElement[bool]] = list(where)
    if since is not None:
        bounds.append(t.time >= since)
    if until is not None:
        bounds.append(t.time < until)
    after: tuple[float, int] | None = None
    while True:
        page = [*bounds, tuple_(t.time, t.seq) > tuple_(*after)] if after is not None else bounds
        rows = store.select_entries(*page, limit=chunk, by_time=True)
        yield from rows
        if len(rows) < chunk:
            return
        after = (rows[-1].time, rows[-1].seq)


def subject_history(store: AuditStore, kind: str, name: str, *, chunk: int = 1000) -> Iterator[StoredEntry]:
    """Everything that happened to one subject, in event-time order.

    `kind` is `model` or `dataset`; `name` is `NAME:VERSION` for one version (`churn:3`) or
    `NAME` for every version (`churn` matches `model:churn` and `model:churn:*`).
    """
    if kind not in ("model", "dataset"):
        raise InputError(f"a trail is of a model or a dataset, not {kind!r}")
    if not name or name.endswith(":"):
        raise InputError(f"not a {kind} name: {name!r}")
    subject = store.table.c.subject
    base = f"{kind}:{name}"
    condition = subject == base if ":" in name else subject_prefix(subject, base)
    return iter_entries_by_time(store, condition, chunk=chunk)


def export_row(entry: StoredEntry) -> dict[str, Any]:
    """One exported entry: every stored column plus its Merkle leaf index."""
    return {name: (entry.leaf_index if name == "leaf_index" else getattr(entry, name)) for name in EXPORT_FIELDS}


def write_export(entries: Iterator[StoredEntry], out: IO[str], fmt: ExportFormat) -> int:
    """Write `entries` as JSON lines or CSV to a text stream; how many were written."""
    count = 0
    if fmt == "jsonl":
        for entry in entries:
            out.write(orjson.dumps(export_row(entry)).decode() + "\n")
            count += 1
        return count
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            writer.writerow(export_row(entry))
            count += 1
        return count
    raise InputError(f"unknown export format {fmt!r} (jsonl or csv)")
