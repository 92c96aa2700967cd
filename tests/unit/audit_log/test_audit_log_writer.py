"""The batch writers: parse and group-commit raw bodies, in a thread or in a writer process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.audit_log.store import AuditStore
from services.audit_log.verify import verify_chain
from services.audit_log.writer import InlineWriter, ProcessWriter, Received, WriterError, store_batch
from shared.topology import Subjects

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]


def on_uploaded(*bodies: bytes) -> list[Received]:
    """Messages as fetched from `mlw.dataset.uploaded` (the type `event_bytes` gives by default)."""
    return [Received(Subjects.DATASET_UPLOADED, body) for body in bodies]


def test_store_batch_commits_the_valid_bodies_and_names_the_refused_ones(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    bodies = [event_bytes(event_id="a"), b"not json", event_bytes(event_id="b"), b'{"id": "only"}']
    outcome = store_batch(store, on_uploaded(*bodies), recorded_at=1.0)
    assert (outcome.inserted, outcome.duplicates) == (2, 0)
    assert [position for position, _ in outcome.refused] == [1, 3]
    assert [e.event_id for e in store.iter_entries()] == ["a", "b"]


def test_an_event_claiming_another_type_than_its_subject_is_refused_naming_the_real_subject(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    forged = event_bytes(event_id="forged", type_=Subjects.VERDICT_PROMOTION, data={"decision": "approved"})
    honest = event_bytes(event_id="honest", type_=Subjects.PREDICTION_LOGGED)
    messages = [Received(Subjects.PREDICTION_LOGGED, forged), Received(Subjects.PREDICTION_LOGGED, honest)]
    outcome = store_batch(store, messages, recorded_at=1.0)
    assert [position for position, _ in outcome.refused] == [0]
    reason = outcome.refused[0][1]
    assert Subjects.VERDICT_PROMOTION in reason and Subjects.PREDICTION_LOGGED in reason
    assert [(e.event_id, e.type) for e in store.iter_entries()] == [("honest", Subjects.PREDICTION_LOGGED)]


async def test_inline_writer_commits_through_the_given_store(store: AuditStore, event_bytes: EventFactory) -> None:
    writer = InlineWriter(store)
    await writer.start()
    first = await writer.write(on_uploaded(event_bytes(event_id="a"), event_bytes(event_id="b")), 1.0)
    again = await writer.write(on_uploaded(event_bytes(event_id="b")), 2.0)
    await writer.stop()
    assert (first.inserted, again.inserted, again.duplicates) == (2, 0, 1)
    assert store.count() == 2


async def test_process_writer_commits_before_answering_and_the_service_store_sees_it(
    db_target: DbTarget, store: AuditStore, event_bytes: EventFactory
) -> None:
    writer = ProcessWriter(db_target.url, schema=db_target.schema)
    await writer.start()
    try:
        outcome = await writer.write(on_uploaded(*[event_bytes(event_id=f"e{i}") for i in range(50)], b"[1]"), 1.0)
        # Answered means committed: this process's own store reads every entry at once.
        assert (outcome.inserted, [p for p, _ in outcome.refused]) == (50, [50])
        assert store.count() == 50
        redelivered = await writer.write(on_uploaded(event_bytes(event_id="e3")), 2.0)
        assert (redelivered.inserted, redelivered.duplicates) == (0, 1)
    finally:
        await writer.stop()
    assert verify_chain(store).ok


async def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(
    tmp_path: Path, event_bytes: EventFactory
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(url)
    store.create()
    writer = ProcessWriter(url)
    await writer.start()
    try:
        await writer.write(on_uploaded(event_bytes(event_id="before")), 1.0)
        process = writer._process
        assert process is not None
        process.kill()
        process.join()
        # The next batch starts a new writer process (a batch in flight at the kill raises
        # WriterError, stays unacked and comes again: a duplicate if it was committed).
        outcome = await writer.write(on_uploaded(event_bytes(event_id="before"), event_bytes(event_id="after")), 2.0)
        assert (outcome.inserted, outcome.duplicates) == (1, 1)
    finally:
        await writer.stop()
    assert [e.event_id for e in store.iter_entries()] == ["before", "after"]
    assert verify_chain(store).ok
    store.close()


async def test_process_writer_refuses_to_start_on_an_unreachable_database(tmp_path: Path) -> None:
    writer = ProcessWriter(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'audit.db'}")
    with pytest.raises(WriterError, match="StoreUnavailableError"):
        await writer.start()
    await writer.stop()
