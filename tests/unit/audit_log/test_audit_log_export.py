"""Exports (JSON lines, CSV) with leaf indexes, per-subject trails, and the tree of an older trail."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
from sqlalchemy import delete

from mlwarden.cli import main
from services.audit_log import merkle
from services.audit_log.export import iter_entries_by_time, subject_history, write_export
from services.audit_log.store import AuditStore, IncomingEvent
from shared.errors import InputError

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]
T = 1_700_000_000.0
SUBJECTS = ["model:churn:3", "model:churn:4", "dataset:iris:1", "model:churn", "model:churnx:1", None]


@pytest.fixture
def filled(store: AuditStore, event_bytes: EventFactory) -> AuditStore:
    # Event times are not in arrival order: 30 events, time descending by 7s modulo 30.
    items = [
        IncomingEvent.from_bytes(
            event_bytes(event_id=f"x{i}", time=T + (i * 7) % 30, subject=SUBJECTS[i % len(SUBJECTS)]),
            recorded_at=T + 100 + i,
        )
        for i in range(30)
    ]
    store.append_batch(items[:13])
    store.append_batch(items[13:])
    return store


def test_range_export_is_in_time_order_with_leaf_indexes(filled: AuditStore) -> None:
    got = list(iter_entries_by_time(filled, since=T + 5, until=T + 20, chunk=4))
    assert [e.time for e in got] == sorted(e.time for e in got)
    assert len(got) == 15 and all(T + 5 <= e.time < T + 20 for e in got)
    out = io.StringIO()
    assert write_export(iter(got), out, "jsonl") == 15
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert all(r["leaf_index"] == r["seq"] - 1 for r in rows)
    assert [r["event_id"] for r in rows] == [e.event_id for e in got]
    # The exported body is the stored one: its leaf hash is provable.
    stored = filled.find(rows[0]["event_id"])
    assert stored is not None and rows[0]["body"] == stored.body


def test_csv_export_round_trips(filled: AuditStore) -> None:
    out = io.StringIO()
    assert write_export(iter_entries_by_time(filled, chunk=7), out, "csv") == 30
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 30
    by_id = {e.event_id: e for e in filled.iter_entries()}
    for row in rows:
        entry = by_id[row["event_id"]]
        assert int(row["leaf_index"]) == entry.leaf_index
        assert row["body"] == entry.body and row["entry_hash"] == entry.entry_hash


def test_trail_of_one_version_and_of_every_version(filled: AuditStore) -> None:
    one = list(subject_history(filled, "model", "churn:3", chunk=2))
    assert {e.subject for e in one} == {"model:churn:3"} and len(one) == 5
    every = list(subject_history(filled, "model", "churn", chunk=2))
    # model:churn, model:churn:3, model:churn:4; never model:churnx:1.
    assert {e.subject for e in every} == {"model:churn", "model:churn:3", "model:churn:4"}
    assert [e.time for e in every] == sorted(e.time for e in every)
    with pytest.raises(InputError):
        list(subject_history(filled, "user", "bob"))


def test_export_and_trail_commands(
    filled: AuditStore, db_target: DbTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trail.csv"
    args = ["--db", db_target.cli_url, "--data-dir", str(tmp_path)]
    assert main(["audit", "export", "--format", "csv", "--out", str(out), *args, "--since", str(T + 10)]) == 0
    with out.open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 20
    capsys.readouterr()
    assert main(["audit", "export", "--format", "jsonl", *args, "--until", str(T + 1)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["audit", "trail", "model", "churn:3", "--format", "json", *args]) == 0
    trail = orjson.loads(capsys.readouterr().out)
    assert len(trail) == 5 and all(r["subject"] == "model:churn:3" for r in trail)


def test_the_tree_of_a_trail_written_before_it_existed_is_built(
    filled: AuditStore, drop_guards: Callable[[AuditStore], None], make_store: Callable[[], AuditStore]
) -> None:
    root = filled.root(30)
    drop_guards(filled)
    with filled.engine.begin() as conn:
        conn.execute(delete(filled.tree_table))
    assert filled.tree_size() == 0
    make_store()  # create() at start-up builds what is missing
    assert filled.tree_size() == 30
    assert filled.root(30) == root == merkle.root_of([merkle.leaf_hash(e.leaf_input()) for e in filled.iter_entries()])
